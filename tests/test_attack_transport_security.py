"""SSL stripping: a network attacker (a store's Wi-Fi) answers a user's first
`http://` visit to the gateway's host with a page of its own. Its Origin names the
gateway's host, which the policy's cross-site write rule takes for the gateway's
own pages when a browser sends no Sec-Fetch-Site (the scheme is not compared, as
in Go's CrossOriginProtection, which asks for HSTS). Without
Strict-Transport-Security a browser that has used the gateway over HTTPS still
goes to `http://` when told to; with it, the browser never does for a year."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.config import ConfigError, Listener, Route, TlsConfig, parse_config
from gateway.transport_security import HEADER, TransportSecurity
from tests.gateway_stack import ServerFactory, Stack, free_port, runner_served, start_stack
from tests.test_gateway_transport import make_cert

pytestmark = pytest.mark.timeout(60)
WAREHOUSE = {"groups": ["warehouse"], "amr": ["pwd", "otp"]}
ONE_YEAR = "max-age=31536000"


@contextlib.asynccontextmanager
async def https_stack(
    aiohttp_server: ServerFactory, tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[Stack, str, ssl.SSLContext]]:
    """The gateway on a TLS listener (a server certificate, no client_ca)."""
    ca = make_cert(tmp_path, "ca", None, ca=True)
    make_cert(tmp_path, "server", ca)
    port = free_port()
    tls = TlsConfig(tmp_path / "server.pem", tmp_path / "server.key")
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    async with start_stack(
        aiohttp_server, tmp_path, gateway_port=port,
        listeners=(Listener("127.0.0.1", port, tls=tls),), **overrides,
    ) as stack:  # fmt: skip
        yield stack, f"https://localhost:{port}", context


async def answer_headers(
    stack: Stack, url: str, context: ssl.SSLContext | None, **headers: str
) -> tuple[int, Any]:
    async with stack.session.get(url, ssl=context, headers=headers) as response:
        await response.read()
        return response.status, response.headers


async def test_every_answer_over_https_tells_browsers_to_use_https_only(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """An app's answer, a policy deny, a 401, a refusal before the policy and the
    gateway's own page: each carries Strict-Transport-Security, once."""
    async with https_stack(aiohttp_server, tmp_path) as (stack, base, context):
        token = {"Authorization": f"Bearer {stack.token('alice', **WAREHOUSE)}"}
        for path, headers, status in [
            ("/wms/stock", token, 200),
            ("/pos/sales", token, 403),
            ("/wms/stock", {}, 401),
            ("/nowhere", token, 404),
            ("/healthz", {}, 200),
        ]:
            got, answer = await answer_headers(stack, base + path, context, **headers)
            assert got == status, path
            assert answer.getall(HEADER) == [ONE_YEAR], path


async def test_an_app_cannot_switch_the_gateways_hsts_off(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """An app answering `max-age=0` would make browsers forget HTTPS-only for the
    gateway's host, every other app's included: the gateway's header replaces it."""

    async def forget_https(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={HEADER: "max-age=0"})

    backend = web.Application()
    backend.router.add_get("/wms/stock", forget_https)
    upstream = f"http://127.0.0.1:{(await aiohttp_server(backend)).port}"
    routes = (Route("wms", upstream, "/wms/", read_timeout=5.0),)
    async with https_stack(aiohttp_server, tmp_path, routes=routes) as (stack, base, context):
        token = {"Authorization": f"Bearer {stack.token('alice', **WAREHOUSE)}"}
        status, answer = await answer_headers(stack, base + "/wms/stock", context, **token)
        assert status == 200
        assert answer.getall(HEADER) == [ONE_YEAR]


async def test_refusals_before_a_request_is_parsed_carry_hsts_over_https(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The answers of the connection itself, served by GatewayRunner: the parser's
    400 (a header line over 16 KiB: a browser with a big cookie gets it) and the
    431 of headers that never end. A browser gets these over HTTPS too."""
    async with (
        runner_served(aiohttp_server) as serve,
        https_stack(serve, tmp_path) as (_, base, context),
    ):
        port = int(base.rsplit(":", 1)[1])
        cookie = b"Cookie: " + b"a" * 17000 + b"\r\n"
        for head, status in [
            (b"GET /wms/stock HTTP/1.1\r\nHost: localhost\r\n" + cookie + b"\r\n", 400),
            # unfinished headers past max_request_header_bytes + 16 KiB
            (b"GET /wms/stock HTTP/1.1\r\n" + (b"X-A: " + b"b" * 6000 + b"\r\n") * 9, 431),
        ]:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="localhost"
            )
            writer.write(head)
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            lines = answer.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
            assert lines[0].split()[1] == str(status), lines
            assert f"{HEADER}: {ONE_YEAR}" in lines[1:], lines


async def test_no_hsts_over_plain_http_or_when_turned_off(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """Browsers ignore the header over plain HTTP (RFC 6797 8.1), and
    `hsts_max_age: null` turns it off over HTTPS."""
    async with start_stack(aiohttp_server, tmp_path / "http") as stack:
        _, answer = await answer_headers(stack, stack.url + "/healthz", None)
        assert HEADER not in answer
    (tmp_path / "off").mkdir()
    async with https_stack(aiohttp_server, tmp_path / "off", hsts_max_age=None) as (
        stack, base, context,
    ):  # fmt: skip
        _, answer = await answer_headers(stack, base + "/healthz", context)
        assert HEADER not in answer


async def test_behind_a_proxy_that_ends_tls_the_browsers_scheme_decides() -> None:
    """The connection is plain http from the Ingress, but the browser's is https
    (sign_in.external_url): the header goes out, and the browser keeps it."""
    for browser_scheme, sent in [("https", True), ("http", False), (None, False)]:
        response = web.Response()
        security = TransportSecurity(600, browser_scheme)
        await security.on_response_prepare(make_mocked_request("GET", "/wms/"), response)
        assert (response.headers.get(HEADER) == "max-age=600") is sent, browser_scheme


@pytest.mark.parametrize(
    ("value", "problem"),
    [(-1, "must be 0 or more"), ("1y", "expected int"), (True, "expected int")],
)
def test_a_bad_hsts_max_age_is_a_config_error(value: Any, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"hsts_max_age: .*{problem}"):
        parse_config({"auth": False, "hsts_max_age": value})


def test_hsts_max_age_is_a_year_unless_given() -> None:
    assert parse_config({"auth": False}).hsts_max_age == 31536000
    assert parse_config({"auth": False, "hsts_max_age": 0}).hsts_max_age == 0
    assert parse_config({"auth": False, "hsts_max_age": None}).hsts_max_age is None
