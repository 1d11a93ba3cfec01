"""An HTTP-savvy client against the request head: whatever it sends, the upstream
gets only what the policy decided on, and every request is decided and logged
before anything reaches the upstream (or the client is told to send its body).

Held up, and kept here so it stays so: `Upgrade: h2c` (no tunnel: the upgrade is
dropped and the answer is HTTP/1.1), absolute-form targets (a logged 400),
`CONNECT` and `OPTIONS *` (a logged 404), `Connection: Authorization` (the
upstream gets less than the gateway verified, never other)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from gateway.audit.chain import DECISION_PATH, REFUSAL_PATH
from tests.gateway_stack import ServerFactory, Stack, raw_request
from tests.test_gateway_own_pages import SIGN_OUT, sign_in_stack

WAREHOUSE = {"groups": ["warehouse"], "amr": ["pwd", "otp"]}
KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" + KEY


def passing_authorization(stack: Stack, app: str) -> None:
    """The app's route passes `Authorization` on (`pass_authorization: true`): its
    backend reads the token itself."""
    routes = stack.gateway.route_table.routes
    for index, route in enumerate(routes):
        if route.app == app:
            routes[index] = dataclasses.replace(route, pass_authorization=True)


async def open_raw(stack: Stack, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(stack.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data.replace(b"{host}", f"127.0.0.1:{port}".encode()))
    await writer.drain()
    return reader, writer


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


# --- Authorization given twice ---------------------------------------------------------


@pytest.mark.parametrize("valid_first", [True, False], ids=["valid-first", "valid-second"])
async def test_two_authorization_headers_are_refused_not_decided_on_one_and_forwarded_both(
    stack: Stack, valid_first: bool
) -> None:
    """The review: the gateway verified the first `Authorization` and a
    `pass_authorization` route forwarded both, so the backend, reading its own
    (PHP and CGI keep the last one, gunicorn joins them), authorized a token the
    policy never saw: a warehouse clerk's valid token in front of a stolen,
    revoked or foreign-audience admin token."""
    passing_authorization(stack, "wms")
    valid = b"Authorization: Bearer " + stack.token("alice", **WAREHOUSE).encode() + b"\r\n"
    other = b"Authorization: Bearer " + stack.token("root", groups=["wms-admin"]).encode() + b"\r\n"
    fields = valid + other if valid_first else other + valid
    status, headers, body = await raw_request(
        stack.url, b"GET /wms/stock HTTP/1.1\r\nHost: {host}\r\n" + fields
    )
    assert status == 401, body
    assert "invalid_token" in headers["WWW-Authenticate"]
    assert stack.total_forwarded() == 0
    (event,) = await stack.events()
    assert event["path"] == REFUSAL_PATH
    assert event["result"]["reasons"] == [
        "gateway.invalid_token: Authorization given more than once"
    ]


async def test_one_authorization_header_still_reaches_a_route_that_passes_it(stack: Stack) -> None:
    passing_authorization(stack, "wms")
    token = stack.token("alice", **WAREHOUSE)
    response = await stack.get("/wms/stock", token)
    assert response.status == 200
    assert (await response.json())["headers"]["Authorization"] == f"Bearer {token}"


# --- a WebSocket handshake with a body -------------------------------------------------


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\n\r\nabcde",
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_a_websocket_handshake_with_a_body_is_refused_before_the_upstream(
    stack: Stack, framing: bytes
) -> None:
    """The review: a handshake carrying `Content-Length: 5` and five bytes was
    bridged; the upstream's handshake said `Content-Length: 5` with no body after
    it, so the upstream took the first five bytes of the WebSocket stream as the
    handshake's body and read every frame after out of step; the client's bytes
    went nowhere. RFC 6455's handshake is a GET without content."""
    token = stack.token("alice", **WAREHOUSE).encode()
    reader, writer = await open_raw(
        stack,
        b"GET /wms/ws HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer "
        + token
        + b"\r\n"
        + UPGRADE
        + framing,
    )
    head = await read_head(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert stack.total_forwarded() == 0
    (event,) = await stack.events()
    assert event["path"] == REFUSAL_PATH
    assert event["result"]["reasons"] == [
        "gateway.websocket_handshake: a WebSocket handshake has no body"
    ]


@pytest.mark.parametrize(
    "connection",
    ["Upgrade\u00a0", "\u00a0Upgrade", "Upgrade\u2003"],
    ids=["nbsp-after", "nbsp-before", "em-space"],
)
async def test_a_connection_header_the_parser_reads_as_no_upgrade_opens_no_upstream_websocket(
    stack: Stack, connection: str
) -> None:
    """`Connection: Upgrade` followed by a no-break space (valid UTF-8, so no bad
    header): RFC 9110 separates list elements with spaces and tabs only, and
    aiohttp's parsers (C and Python) read no upgrade, but the gateway stripped
    the token with str.strip (any Unicode space) and took it for a WebSocket. It
    logged an allow, opened the upstream's WebSocket, and then aiohttp's
    WebSocketResponse answered its own unlogged 400 ("No CONNECTION upgrade
    hdr"): the log said allow for a 400, and the upstream saw a handshake nobody
    made. Read as the parser reads it, it is a plain GET, decided and forwarded."""
    token = stack.token("alice", **WAREHOUSE).encode()
    status, _, body = await raw_request(
        stack.url,
        b"GET /wms/ws HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer " + token + b"\r\n"
        b"Upgrade: websocket\r\nConnection: " + connection.encode() + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + KEY,
    )
    assert status == 200, body
    assert json.loads(body)["path"] == "/wms/ws"
    (received,) = stack.forwarded("wms")
    assert "Upgrade" not in received.headers  # hop-by-hop, and no upgrade
    (event,) = await stack.events()
    assert event["result"]["allow"] is True


# --- Expect ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [b"GET /wms/stock", b"GET /healthz", b"OPTIONS *", b"CONNECT wms.internal:443"],
    ids=["proxied", "own-page", "asterisk-form", "authority-form"],
)
async def test_an_unknown_expectation_is_a_logged_refusal(stack: Stack, line: bytes) -> None:
    """The review: aiohttp answered `Expect: foo` with its own 417 before any
    handler ran: a request answered with no decision event. A target no route
    can match (`OPTIONS *`, `CONNECT host:port`) went to aiohttp's own expect
    handler still, and its unlogged 417."""
    status, _, body = await raw_request(
        stack.url, line + b" HTTP/1.1\r\nHost: {host}\r\nExpect: foo\r\n"
    )
    assert status == 417, body
    assert json.loads(body)["error"] == "expectation_failed"
    assert stack.total_forwarded() == 0
    (event,) = await stack.events()
    assert event["path"] == REFUSAL_PATH
    assert event["result"]["reasons"] == [
        "gateway.expectation_failed: Expect: 'foo' (only 100-continue is understood)"
    ]


async def test_100_continue_is_not_sent_before_the_decision_refuses(stack: Stack) -> None:
    """The review: aiohttp sent `100 Continue` before the gateway had looked at the
    request, so a client the policy then refused had been told to send its body
    (up to the upstream's limits, per request) first. A refusal is the answer."""
    reader, writer = await open_raw(
        stack,
        b"POST /wms/stock HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\n"
        b"Content-Length: 5\r\n\r\n",
    )
    head = await read_head(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 401 "), head
    assert stack.total_forwarded() == 0


@pytest.mark.parametrize("line", [b"OPTIONS *", b"CONNECT wms.internal:443"])
async def test_100_continue_is_not_sent_for_a_target_no_route_matches(
    stack: Stack, line: bytes
) -> None:
    """aiohttp's own expect handler told the client to send its body before the
    gateway refused the request target: the refusal is the answer."""
    reader, writer = await open_raw(
        stack,
        line + b" HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    head = await read_head(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 404 "), head
    (event,) = await stack.events()
    assert event["result"]["reasons"] == [
        "gateway.no_route: request target is not a path (asterisk or authority form)"
    ]


async def test_100_continue_is_sent_once_the_policy_allows_and_the_body_reaches_the_upstream(
    stack: Stack,
) -> None:
    token = stack.token("alice", **WAREHOUSE).encode()
    reader, writer = await open_raw(
        stack,
        b"POST /wms/stock HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer " + token + b"\r\n"
        b"Expect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
    )
    assert await read_head(reader) == b"HTTP/1.1 100 Continue\r\n\r\n"
    (event,) = await stack.events()
    assert (event["path"], event["result"]["allow"]) == (DECISION_PATH, True)
    writer.write(b"abcde")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["body_bytes"] == 5


async def test_100_continue_on_a_sign_out_comes_after_the_body_cap_and_before_the_form(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The gateway's own pages: a body over their cap is refused without `100
    Continue` first; one within it is asked for, and the page reads it."""
    async with sign_in_stack(aiohttp_server, tmp_path) as stack:
        reader, writer = await open_raw(
            stack, SIGN_OUT + b"Expect: 100-continue\r\nContent-Length: 100000\r\n\r\n"
        )
        head = await read_head(reader)
        writer.close()
        assert head.startswith(b"HTTP/1.1 413 "), head
        form = b"token=not-a-sign-out-token"
        reader, writer = await open_raw(
            stack,
            SIGN_OUT
            + b"Content-Type: application/x-www-form-urlencoded\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(form),
        )
        assert await read_head(reader) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(form)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert b"sign-out token missing or not for this session" in answer, answer[:300]


# --- held up ---------------------------------------------------------------------------


async def test_h2c_upgrade_is_not_tunnelled_past_the_decision(stack: Stack) -> None:
    """`Upgrade: h2c` (the known h2c smuggling of proxies that pass it and then
    relay bytes): no upgrade reaches the upstream, the answer is HTTP/1.1, and a
    request after it on the connection is decided on its own."""
    token = stack.token("alice", **WAREHOUSE).encode()
    reader, writer = await open_raw(
        stack,
        b"GET /wms/stock HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer " + token + b"\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\n\r\n",
    )
    head = await read_head(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 "), head
    (received,) = stack.forwarded("wms")
    assert {"Upgrade", "HTTP2-Settings", "Connection"}.isdisjoint(received.headers)


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"GET http://other.example/pos/refunds/1 HTTP/1.1", 400),
        (b"CONNECT 127.0.0.1:1 HTTP/1.1", 404),
        (b"CONNECT /wms/stock HTTP/1.1", 404),
        (b"OPTIONS * HTTP/1.1", 404),
    ],
    ids=["absolute-form", "connect-authority", "connect-path", "options-asterisk"],
)
async def test_targets_that_are_not_a_path_are_logged_refusals(
    stack: Stack, line: bytes, status: int
) -> None:
    token = stack.token("alice", groups=["store", "warehouse"], amr=["hwk"]).encode()
    got, _, body = await raw_request(
        stack.url, line + b"\r\nHost: {host}\r\nAuthorization: Bearer " + token + b"\r\n"
    )
    assert got == status, body
    assert stack.total_forwarded() == 0
    (event,) = await stack.events()
    assert event["path"] == REFUSAL_PATH


async def test_an_authorization_header_the_client_marks_hop_by_hop_is_not_forwarded(
    stack: Stack,
) -> None:
    """`Connection: Authorization` removes it from what the upstream gets, never
    from what the gateway verified: the backend gets less, not something else."""
    passing_authorization(stack, "wms")
    token = stack.token("alice", **WAREHOUSE)
    response = await stack.get(
        "/wms/stock", token, headers={"Connection": "keep-alive, Authorization"}
    )
    assert response.status == 200
    assert "Authorization" not in (await response.json())["headers"]


async def test_a_refusal_that_never_asked_for_the_body_closes_the_connection(
    stack: Stack,
) -> None:
    """Refused without `100 Continue`, a client keeps its body (RFC 9110 10.1.1):
    on a kept-alive connection the gateway would read its next request as that
    body. It says `Connection: close` and closes."""
    reader, writer = await open_raw(
        stack,
        b"POST /wms/stock HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\n"
        b"Content-Length: 5\r\n\r\n",
    )
    head = await read_head(reader)
    assert head.startswith(b"HTTP/1.1 401 "), head
    assert b"\r\nConnection: close\r\n" in head, head
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert b"HTTP/1.1 " not in rest.partition(b"}")[2], rest


@pytest.mark.parametrize("target", [b"/wms/stock%0Aadmin", b"/healthz%0A", b"/%0a"])
async def test_an_encoded_line_break_in_the_path_is_refused_for_it_not_as_no_path(
    stack: Stack, target: bytes
) -> None:
    """`%0A` decodes to a line break, which the catch-all route's `.*` did not
    match: the path was a 404 logged as "request target is not a path (asterisk
    or authority form)", a reason that sends the SOC after the wrong thing, while
    `%0D` was the path check's refusal. Both are that refusal now."""
    status, _, body = await raw_request(
        stack.url, b"GET " + target + b" HTTP/1.1\r\nHost: {host}\r\n"
    )
    assert status == 400, body
    (event,) = await stack.events()
    assert event["result"]["reasons"] == [
        "gateway.path_rejected: encoded control character in path"
    ]
    assert stack.total_forwarded() == 0
