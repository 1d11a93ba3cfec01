"""A whole gateway on loopback for tests: the dev issuer, the three demo backends
and the gateway, each a real HTTP server on its own port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import (
    AssertionConfig,
    DecisionLogConfig,
    GatewayConfig,
    Issuer,
    Listener,
    PolicyConfig,
    Route,
)
from gateway.demo import AUDIENCE, REQUESTS, DevIssuer, demo_backend
from gateway.runner import GatewayRunner, ssl_context
from gateway.server import GATEWAY_KEY, Gateway, build_app
from tests.conftest import POLICIES, complete_lines

ServerFactory = Callable[..., Awaitable[TestServer]]
APPS = {"wms": "/wms/", "pos": "/pos/", "analytics": "/analytics/"}


# Ports Chromium refuses to load a page from (net/base/port_util.cc's restricted
# list; 10080 is its only one from 10000 up): a browser test whose gateway drew
# it failed with ERR_UNSAFE_PORT.
BROWSER_REFUSED_PORTS = frozenset({10080})


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range. One from that
    range (what binding port 0 gives) can be handed to an outgoing connection
    before the server binds it: a gateway failed to start with EADDRINUSE in CI."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = 10_000 + secrets.randbelow(max(low - 10_000, 1_000))
        if port in BROWSER_REFUSED_PORTS:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


@dataclass
class Stack:
    url: str
    issuer: DevIssuer
    issuer_server: TestServer
    backends: dict[str, web.Application]
    gateway: Gateway
    config: GatewayConfig
    session: aiohttp.ClientSession
    log_path: Path

    def forwarded(self, app: str) -> list[web.Request]:
        return self.backends[app][REQUESTS]

    def total_forwarded(self) -> int:
        return sum(len(self.forwarded(app)) for app in self.backends)

    async def events(self, *, at_least: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The decision events in the log, once at least ``at_least`` are written
        (the writer thread flushes every few ms)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            text = self.log_path.read_text() if self.log_path.exists() else ""
            events = [json.loads(line) for line in complete_lines(text) if '"decision_id"' in line]
            if len(events) >= at_least or asyncio.get_running_loop().time() > deadline:
                return events
            await asyncio.sleep(0.02)

    def token(self, subject: str = "alice", **claims: Any) -> str:
        return self.issuer.token(subject, **claims)

    async def get(
        self, path: str, token: str | None = None, **kwargs: Any
    ) -> aiohttp.ClientResponse:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.session.request(
            kwargs.pop("method", "GET"), self.url + path, headers=headers, **kwargs
        )


@contextlib.asynccontextmanager
async def runner_served(aiohttp_server: ServerFactory) -> AsyncIterator[ServerFactory]:
    """A server factory for start_stack that serves the gateway by GatewayRunner, as
    `portcullis gateway` does (the connection's own limits and refusals live there),
    and every other app by aiohttp's test server."""
    runners: list[GatewayRunner] = []

    async def serve(app: web.Application, *, port: int | None = None, **kwargs: Any) -> Any:
        if GATEWAY_KEY not in app:
            return await aiohttp_server(app, port=port, **kwargs)
        runner = GatewayRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=kwargs.get("ssl")).start()
        return None

    try:
        yield serve
    finally:
        for runner in runners:
            await runner.cleanup()


@contextlib.asynccontextmanager
async def start_stack(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    *,
    policy: Path = POLICIES,
    gateway_port: int | None = None,
    issuer_options: dict[str, Any] | None = None,
    policy_options: dict[str, Any] | None = None,
    more_issuers: tuple[Issuer, ...] = (),
    **overrides: Any,
) -> AsyncIterator[Stack]:
    issuer = DevIssuer(tmp_path / "issuer", "")
    issuer_server = await aiohttp_server(issuer.app())
    issuer.issuer = f"http://127.0.0.1:{issuer_server.port}"
    # A fixed port when a provider registered the gateway's callback URL beforehand.
    gateway_port = gateway_port or free_port()
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    backends = {}
    routes = []
    for name, prefix in APPS.items():
        app = demo_backend(name, gateway_url)
        server = await aiohttp_server(app)
        backends[name] = app
        routes.append(Route(name, f"http://127.0.0.1:{server.port}", prefix, read_timeout=5.0))
    log_path = tmp_path / "decisions.log"
    config = GatewayConfig(
        listeners=(Listener("127.0.0.1", gateway_port),),
        routes=tuple(routes),
        issuers=(
            Issuer(
                issuer.issuer,
                (AUDIENCE,),
                jwks_url=f"{issuer.issuer}/jwks.json",
                **(issuer_options or {}),
            ),
            *more_issuers,
        ),
        policy=PolicyConfig(source=str(policy), poll_interval=0.05, **(policy_options or {})),
        assertion=AssertionConfig(key_file=tmp_path / "assertion.pem"),
        decision_log=DecisionLogConfig(path=log_path, sign_interval=0.5),
    )
    config = replace(config, **overrides)
    app = build_app(config)
    # A listener with tls (on the gateway's port) is served with its context, as
    # gateway.runner serves it: client certificates are asked for and verified.
    tls = [item for item in config.listeners if item.port == gateway_port and item.tls]
    server = await aiohttp_server(app, port=gateway_port, ssl=ssl_context(tls[0]) if tls else None)
    others = [item for item in config.listeners if item.port != gateway_port]
    if others:  # on the same app (a factory that serves the gateway itself has none)
        assert server is not None and server.runner is not None
        for listener in others:
            site = web.TCPSite(
                server.runner, listener.address, listener.port, ssl_context=ssl_context(listener)
            )
            await site.start()
    async with aiohttp.ClientSession() as session:
        yield Stack(
            gateway_url,
            issuer,
            issuer_server,
            backends,
            app[GATEWAY_KEY],
            config,
            session,
            log_path,
        )


async def logged(stack: Stack, *decision_ids: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The decision events with these ids, once all are written (or the timeout)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        events = [e for e in await stack.events() if e["decision_id"] in decision_ids]
        if {e["decision_id"] for e in events} >= set(decision_ids):
            return events
        if asyncio.get_running_loop().time() > deadline:
            return events
        await asyncio.sleep(0.02)


async def raw_request(url: str, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send exactly these request-line and header bytes (aiohttp's client only sends
    str, and a test may need bytes no client would send); the connection closes."""
    where = urlsplit(url)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    writer.write(head.replace(b"{host}", where.netloc.encode()) + b"Connection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    response_head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = response_head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(": ")
        headers[name] = headers[name] + "\n" + value if name in headers else value
    return int(status_line.split()[1]), headers, body
