"""Browser sign-in under test: the real dev OpenID provider (npm oidc-provider, run
with node), a gateway configured to sign browsers in through it, and an HTTP
client that behaves like a browser (cookie jar, redirects, the login form)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import aiohttp.abc
import pytest
from aiohttp import web
from yarl import URL

from gateway.config import SessionConfig, SignInConfig
from gateway.demo import demo_backend
from gateway.signin.session import write_key_file
from tests.conftest import ROOT
from tests.gateway_stack import ServerFactory, Stack, free_port, start_stack

COOKIE = "__Host-portcullis_session"  # the session cookie's default name (Secure: __Host-)

PROVIDER_DIR = ROOT / "devtools" / "oidc-provider"
CLIENT_ID = "portcullis"
CLIENT_SECRET = "dev-client-secret-for-tests"
PUBLIC_CLIENT_ID = "portcullis-public"
LAX_CLIENT_ID = "legacy-no-pkce"  # PKCE optional at the provider: code-injection tests
SCOPES = ("openid", "email", "profile", "groups")
ACCOUNTS = {
    "alice": {"groups": ["warehouse", "sales-eu"], "methods": ["otp"]},
    "bob": {"groups": ["store"], "methods": ["otp", "hwk"]},
    "dave": {"groups": ["store"], "methods": ["otp"]},
    "carol": {"groups": ["warehouse", "wms-admin"], "methods": ["otp", "fido"]},
    "mallory": {"groups": [], "methods": ["otp"]},
    "erin": {"groups": ["warehouse", "store"], "methods": ["otp", "hwk"]},
    # Signed up with alice's address, which the provider never verified (self-service
    # sign-up without a confirmation mail; Entra ID's editable `email`: "nOAuth").
    "eve": {
        "groups": ["warehouse"],
        "methods": ["otp"],
        "email": "alice@example.com",
        "email_verified": False,
    },
}


@dataclass
class DevProvider:
    url: str
    gateway_port: int
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    # What the provider names itself in discovery and in its tokens: `url`, or
    # `url` + "/" (Auth0's and others' issuers end in a slash; a gateway's
    # sign_in.issuer is read without it).
    issuer: str = ""

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_provider(
    workdir: Path, gateway_port: int, *, issuer_slash: bool = False, gateway_host: str = "127.0.0.1"
) -> DevProvider:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the dev OpenID provider needs it")
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("devtools/oidc-provider/node_modules is missing: run `make test`")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gateway = f"http://{gateway_host}:{gateway_port}"
    client = {
        "redirect_uris": [f"{gateway}/.portcullis/callback"],
        "post_logout_redirect_uris": [f"{gateway}/.portcullis/signed_out"],
        # Served by gateways with shared_state (tests/test_shared_sessions.py).
        "backchannel_logout_uri": f"{gateway}/.portcullis/backchannel_logout",
        "backchannel_logout_session_required": True,
    }
    issuer = url + "/" if issuer_slash else url
    config = {
        "issuer": issuer,
        "clients": [
            {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **client},
            {"client_id": PUBLIC_CLIENT_ID, **client},
            {"client_id": LAX_CLIENT_ID, "client_secret": CLIENT_SECRET, **client},
        ],
        "accounts": ACCOUNTS,
        "pkce_optional_clients": [LAX_CLIENT_ID],
    }
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "provider.json"
    config_file.write_text(json.dumps(config))
    process = subprocess.Popen(
        [node, "server.js", "--config", str(config_file)],
        cwd=PROVIDER_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    provider = DevProvider(url, gateway_port, process, issuer=issuer)
    assert process.stdout is not None
    deadline = time.monotonic() + 20
    for line in process.stdout:
        provider.output.append(line)
        if line.startswith("listening "):
            break
        if time.monotonic() > deadline:
            break
    else:
        pytest.fail("the dev OpenID provider exited:\n" + "".join(provider.output))
    # Keep draining its output, so a chatty provider never blocks on a full pipe.
    threading.Thread(
        target=lambda: provider.output.extend(process.stdout or ()), daemon=True
    ).start()
    return provider


@pytest.fixture(scope="session")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProvider]:
    """One provider for the whole run; every test's gateway listens on its port."""
    running = start_provider(tmp_path_factory.mktemp("provider"), free_port())
    yield running
    running.stop()


def sign_in_config(provider: DevProvider, **changes: Any) -> SignInConfig:
    values: dict[str, Any] = {
        "issuer": provider.url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scopes": SCOPES,
    }
    values.update(changes)
    return SignInConfig(**values)


def session_key(tmp_path: Path, name: str = "session.key") -> Path:
    path = tmp_path / name
    if not path.exists():
        write_key_file(path)
    return path


@contextlib.asynccontextmanager
async def start_sign_in_stack(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    provider: DevProvider,
    *,
    sign_in: SignInConfig | None = None,
    session: SessionConfig | None = None,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    async with start_stack(
        aiohttp_server,
        tmp_path,
        gateway_port=provider.gateway_port,
        sign_in=sign_in or sign_in_config(provider),
        session=session or SessionConfig(key_files=(session_key(tmp_path),)),
        **overrides,
    ) as stack:
        yield stack


@dataclass
class Page:
    url: str
    status: int
    text: str
    headers: dict[str, str]
    hops: list[str]

    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.url).query)

    def form_action(self) -> str:
        match = re.search(r'<form method="post" action="([^"]+)"', self.text)
        assert match, f"no login form on {self.url}:\n{self.text[:2000]}"
        return urljoin(self.url, match[1])


class Browser:
    """An HTTP client that acts like a browser: it keeps cookies (Secure ones too,
    on loopback, as Chromium does), follows redirects and asks for HTML."""

    def __init__(
        self, origins: Sequence[str], resolver: aiohttp.abc.AbstractResolver | None = None
    ) -> None:
        self.jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=list(origins))
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=resolver) if resolver else None,
            cookie_jar=self.jar,
            headers={"Accept": "text/html,application/xhtml+xml"},
        )

    async def close(self) -> None:
        await self.http.close()

    async def request(self, method: str, url: str, **kwargs: Any) -> Page:
        async with self.http.request(method, url, allow_redirects=False, **kwargs) as response:
            text = await response.text()
            return Page(str(response.url), response.status, text, dict(response.headers), [])

    async def go(self, url: str, *, max_hops: int = 12, **kwargs: Any) -> Page:
        """GET, following redirects like a browser, until a page comes back."""
        hops: list[str] = []
        method = kwargs.pop("method", "GET")
        for _ in range(max_hops):
            page = await self.request(method, url, **kwargs)
            if page.status not in (301, 302, 303, 307, 308):
                page.hops = hops
                return page
            hops.append(url)
            url = urljoin(url, page.headers["Location"])
            method, kwargs = "GET", {}
        raise AssertionError(f"redirect loop: {hops}")

    async def sign_in_at_provider(
        self, login_page: Page, user: str, methods: Sequence[str] = (), action: str = "sign_in"
    ) -> Page:
        assert "/interaction/" in login_page.url, f"not the provider's login page: {login_page.url}"
        form = [("login", user), ("action", action)] + [("methods", m) for m in methods]
        return await self.go(login_page.form_action(), method="POST", data=form)

    async def sign_in(self, url: str, user: str, methods: Sequence[str] = ()) -> Page:
        """Open a gateway URL, sign in at the provider, and land where it leads."""
        login = await self.go(url)
        return await self.sign_in_at_provider(login, user, methods)

    def cookie(self, name: str, url: str) -> str | None:
        found = self.jar.filter_cookies(URL(url)).get(name)
        return None if found is None else found.value

    def cookie_names(self) -> set[str]:
        return {cookie.key for cookie in self.jar}


class Loopback(aiohttp.abc.AbstractResolver):
    """Every host name is 127.0.0.1 (a gateway and its sibling subdomains under test)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        return [
            {"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET,
             "proto": 0, "flags": socket.AI_NUMERICHOST}
        ]  # fmt: skip

    async def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def browser(
    *origins: str, resolver: aiohttp.abc.AbstractResolver | None = None
) -> AsyncIterator[Browser]:
    client = Browser(origins, resolver)
    try:
        yield client
    finally:
        await client.close()


def planting_wms(gateway_url: str, planted: dict[str, list[str]]) -> web.Application:
    """The demo's wms backend, turned hostile: its answer to /wms/plant carries the
    Set-Cookie headers in ``planted["headers"]`` (filled in once the test has them)."""
    app = demo_backend("wms", gateway_url)

    async def plant(request: web.Request, response: web.StreamResponse) -> None:
        if request.path == "/wms/plant":
            for header in planted["headers"]:
                response.headers.add("Set-Cookie", header)

    app.on_response_prepare.append(plant)
    return app


@dataclass
class PlantingStack:
    """A sign-in stack whose wms app is hostile (:func:`planting_wms`), and the
    session cookie mallory got by signing in herself."""

    stack: Stack
    planted: dict[str, list[str]]
    mallorys: str


@contextlib.asynccontextmanager
async def planting_stack(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider
) -> AsyncIterator[PlantingStack]:
    from gateway.config import Route

    planted: dict[str, list[str]] = {"headers": []}
    gateway_url = f"http://127.0.0.1:{provider.gateway_port}"
    hostile = await aiohttp_server(planting_wms(gateway_url, planted))
    wms = Route("wms", f"http://127.0.0.1:{hostile.port}", "/wms/", read_timeout=5.0)
    async with (
        start_sign_in_stack(aiohttp_server, tmp_path, provider, routes=(wms,)) as stack,
        browser(stack.url) as mallory,
    ):
        await mallory.sign_in(stack.url + "/wms/", "mallory", ["otp"])
        theirs = mallory.cookie(COOKIE, stack.url)
        assert theirs is not None
        yield PlantingStack(stack, planted, theirs)
