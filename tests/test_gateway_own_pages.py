"""The gateway's own pages and the connection itself under the limits proxied requests
have (the pen test's second round): stalled or large bodies on the sign-out page,
header floods on the sign-in page, one address holding every connection, header
blocks that never end, and requests aiohttp's parser refuses, each logged and
counted once in portcullis_requests_total. The gateway runs with its production
runner (gateway/runner.py GatewayRunner)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.audit.chain import REFUSAL_PATH
from gateway.config import SessionConfig, SignInConfig
from gateway.operations import build_admin_app
from gateway.signin.session import write_key_file
from tests.gateway_stack import ServerFactory, Stack
from tests.test_gateway_limits import closed_after, limited_stack, metric, open_raw

SIGN_OUT = b"POST /.portcullis/sign_out HTTP/1.1\r\nHost: gw\r\n"
Counts = dict[tuple[str, str], float]  # portcullis_requests_total by (app, status)


@contextlib.asynccontextmanager
async def sign_in_stack(
    aiohttp_server: ServerFactory, tmp_path: Path, **limits: Any
) -> AsyncIterator[Stack]:
    """The limited stack with browser sign-in on. No provider runs: nothing here
    gets as far as asking one (the discovery prefetch fails and is retried on use)."""
    key = tmp_path / "session.key"
    write_key_file(key)
    overrides = {
        "sign_in": SignInConfig(issuer="http://127.0.0.1:9/", client_id="portcullis"),
        "session": SessionConfig(key_files=(key,), secure=False),
    }
    async with limited_stack(aiohttp_server, tmp_path, overrides=overrides, **limits) as stack:
        yield stack


def reasons(events: list[dict[str, Any]]) -> list[str]:
    return [event["result"]["reasons"][0] for event in events if event["path"] == REFUSAL_PATH]


async def admin_listener(aiohttp_server: ServerFactory, stack: Stack) -> str:
    server = await aiohttp_server(build_admin_app(stack.gateway))
    return f"http://127.0.0.1:{server.port}"


async def requests_total(admin: str) -> Counts:
    """portcullis_requests_total by (app, status), as the admin listener's /metrics has it."""
    async with aiohttp.ClientSession() as session:
        text = await (await session.get(f"{admin}/metrics")).text()
    return {
        (sample.labels["app"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "portcullis_requests_total"
    }


def moved(before: Counts, after: Counts) -> Counts:
    return {key: n - before.get(key, 0.0) for key, n in after.items() if n != before.get(key)}


# --- the sign-in pages: body timeouts, a body cap, header caps -----------------------------


async def test_sign_out_with_a_stalled_body_is_cut_at_the_body_timeout(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The pen test: Content-Length 4000, one byte, then nothing, held a connection
    for as long as the client liked (75 s and counting)."""
    async with sign_in_stack(aiohttp_server, tmp_path, body_idle_timeout=0.5) as stack:
        reader, _ = await open_raw(
            stack,
            SIGN_OUT + b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 4000\r\n\r\nt",
        )
        elapsed, answer = await closed_after(reader, 5.0)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert 0.4 < elapsed < 3.0
        assert reasons(await stack.events()) == [
            "gateway.body_timeout: no request body byte for 0.5 s"
        ]


async def test_sign_out_with_a_body_over_the_cap_is_refused(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with sign_in_stack(aiohttp_server, tmp_path) as stack:
        reader, _ = await open_raw(stack, SIGN_OUT + b"Content-Length: 100000\r\n\r\n")
        _, answer = await closed_after(reader, 5.0)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        chunked = SIGN_OUT + b"Transfer-Encoding: chunked\r\n\r\n4000\r\n" + b"a" * 0x4000
        reader, _ = await open_raw(stack, chunked + b"\r\n10\r\n" + b"b" * 16 + b"\r\n")
        _, answer = await closed_after(reader, 5.0)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert [r.split(":")[0] for r in reasons(await stack.events(at_least=2))] == [
            "gateway.body_too_large"
        ] * 2


async def test_sign_out_form_still_reaches_its_page(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The body read by the middleware is the body the page reads: a form without
    a valid token is the page's own refusal, not a hang or a 500."""
    async with sign_in_stack(aiohttp_server, tmp_path) as stack:
        form = b"token=not-a-sign-out-token"
        reader, _ = await open_raw(
            stack,
            SIGN_OUT + b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(form), form),
        )
        _, answer = await closed_after(reader, 5.0)
        assert answer.startswith(b"HTTP/1.1 4"), answer[:200]
        assert b"sign-out token missing or not for this session" in answer


async def test_sign_in_page_gets_the_header_caps(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with sign_in_stack(aiohttp_server, tmp_path) as stack:
        lines = b"".join(b"X-Flood-%d: %s\r\n" % (i, b"a" * 2000) for i in range(40))
        reader, _ = await open_raw(
            stack,
            b"GET /.portcullis/sign_in HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
            + lines
            + b"\r\n",
        )
        _, answer = await closed_after(reader, 5.0)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        (reason,) = reasons(await stack.events())
        assert reason.startswith("gateway.headers_too_large: ")


async def test_non_utf8_header_on_a_sign_in_page_is_a_logged_400(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with sign_in_stack(aiohttp_server, tmp_path) as stack:
        reader, _ = await open_raw(
            stack,
            b"GET /.portcullis/sign_in HTTP/1.1\r\nHost: gw\r\nX-Probe: \xe9\r\n"
            b"Connection: close\r\n\r\n",
        )
        _, answer = await closed_after(reader, 5.0)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        (event,) = await stack.events()
        assert event["result"]["reasons"][0].startswith("gateway.bad_header: header 'X-Probe'")
        assert event["input"]["attributes"]["request"]["http"]["headers"]["x-probe"] == "\ufffd"


async def test_superscript_max_age_on_sign_in_is_a_400_not_a_500(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """'²'.isdigit() is True and int('²') raises: it was a 500 with a traceback."""
    async with sign_in_stack(aiohttp_server, tmp_path) as stack:
        for value in (b"%C2%B2", b"%D9%A3", b"-1", b"1e3", b"123456789"):
            reader, _ = await open_raw(
                stack,
                b"GET /.portcullis/sign_in?acr=phr&max_age=" + value + b" HTTP/1.1\r\n"
                b"Host: gw\r\nAccept: text/html\r\nConnection: close\r\n\r\n",
            )
            _, answer = await closed_after(reader, 5.0)
            assert answer.startswith(b"HTTP/1.1 400"), (value, answer[:200])
            assert b"max_age must be a whole number of seconds" in answer


async def test_return_to_that_is_no_url_is_ignored_not_a_500(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """urlsplit raises on `http://[`: the sign-in page must treat it as no return
    address, not crash."""
    async with sign_in_stack(aiohttp_server, tmp_path) as stack:
        reader, _ = await open_raw(
            stack,
            b"GET /.portcullis/sign_in?rd=http://%5B HTTP/1.1\r\n"
            b"Host: gw\r\nAccept: text/html\r\nConnection: close\r\n\r\n",
        )
        _, answer = await closed_after(reader, 5.0)
        # This stack's provider is unreachable: its page (502) is the answer, not a crash.
        assert not answer.startswith(b"HTTP/1.1 500"), answer[:200]
        assert answer.startswith((b"HTTP/1.1 302", b"HTTP/1.1 502")), answer[:200]


# --- the connection: per-address cap, unfinished header blocks -----------------------------


async def test_one_address_cannot_hold_every_connection(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The pen test: 150 stalled sign-out connections used up a 160-file limit and a
    normal user's request was reset. Past `connections_per_ip` a new connection
    from the same address is closed at once, and counted."""
    async with limited_stack(aiohttp_server, tmp_path, connections_per_ip=5) as stack:
        held = [
            await open_raw(stack, SIGN_OUT + b"Content-Length: 4000\r\n\r\nt") for _ in range(5)
        ]
        reader, _ = await open_raw(stack, b"")
        elapsed, answer = await closed_after(reader, 2.0)
        assert answer == b"" and elapsed < 1.0
        assert metric(stack, 'portcullis_connections_cut_total{reason="connections_per_ip"}') == 1
        _, writer = held.pop()
        writer.close()
        await asyncio.sleep(0.2)
        reader, _ = await open_raw(
            stack, b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        )
        _, answer = await closed_after(reader, 5.0)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


async def test_unfinished_header_flood_is_cut_at_the_header_byte_cap(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """aiohttp buffers up to 128 fields of 16 KiB (2 MiB a connection) before the
    gateway sees a request; 20 such connections held 73 MB for 10 s. Past the cap
    (the gateway's header bytes + 16 KiB) the connection gets a logged 431."""
    async with limited_stack(aiohttp_server, tmp_path) as stack:
        lines = b"".join(b"X-P%03d: %s\r\n" % (i, b"a" * 16000) for i in range(8))
        reader, _ = await open_raw(stack, b"GET /wms/stock HTTP/1.1\r\nHost: gw\r\n" + lines)
        elapsed, answer = await closed_after(reader, 3.0)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert elapsed < 1.0
        assert metric(stack, 'portcullis_connections_cut_total{reason="header_bytes"}') == 1
        (event,) = await stack.events()
        assert event["result"]["reasons"][0].startswith("gateway.headers_too_large: more than")
        assert event["input"]["attributes"]["request"]["http"]["path"] == "/wms/stock"
        assert stack.total_forwarded() == 0


# --- requests aiohttp refuses before the gateway: logged, one line each ---------------------

PARSER_REFUSED = {
    "asterisk-form GET": b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    "raw UTF-8 in path": b"GET /wms/adm\xc4\xb1n/users HTTP/1.1\r\nHost: x\r\n\r\n",
    "raw non-UTF-8 in path": b"GET /wms/adm\xffn/users HTTP/1.1\r\nHost: x\r\n\r\n",
    "lower-case method": b"get /wms/admin/users HTTP/1.1\r\nHost: x\r\n\r\n",
    "obs-fold": b"GET /wms/admin/users HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "CL+TE": b"POST /wms/admin/users HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "HTTP/1.2": b"GET /wms/admin/users HTTP/1.2\r\nHost: x\r\n\r\n",
    "no Host": b"GET /wms/admin/users HTTP/1.1\r\n\r\n",
    "duplicate Host": b"GET /wms/admin/users HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "space before colon": b"GET /wms/admin/users HTTP/1.1\r\nHost: x\r\nX-Remote-User : a\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", PARSER_REFUSED.values(), ids=PARSER_REFUSED.keys())
async def test_requests_the_parser_refuses_are_logged_in_one_line(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    request_bytes: bytes,
) -> None:
    async with limited_stack(aiohttp_server, tmp_path) as stack:
        caplog.set_level(logging.DEBUG, logger="aiohttp")
        reader, _ = await open_raw(stack, request_bytes)
        _, answer = await closed_after(reader, 5.0)
        assert answer.split(b" ", 2)[1] == b"400", answer[:200]
        (event,) = await stack.events()
        assert event["path"] == REFUSAL_PATH
        assert event["result"]["reasons"][0].startswith("gateway.bad_request: ")
        http = event["input"]["attributes"]["request"]["http"]
        line = request_bytes.split(b"\r\n", 1)[0].decode("utf-8", "backslashreplace")
        assert http["request_line"] == line
        assert event["input"]["attributes"]["source"]["address"]["socketAddress"]["address"] == (
            "127.0.0.1"
        )
        assert not [r for r in caplog.records if r.exc_info], "a traceback per bad request"
        assert stack.total_forwarded() == 0


@pytest.mark.parametrize(
    "request_bytes",
    [b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: x\r\n\r\n"],
    ids=["OPTIONS *", "CONNECT"],
)
async def test_targets_that_are_not_paths_are_logged(
    aiohttp_server: ServerFactory, tmp_path: Path, request_bytes: bytes
) -> None:
    async with limited_stack(aiohttp_server, tmp_path) as stack:
        reader, writer = await open_raw(stack, request_bytes)
        status = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert status.startswith(b"HTTP/1.1 404"), status
        (reason,) = reasons(await stack.events())
        assert (
            reason == "gateway.no_route: request target is not a path (asterisk or authority form)"
        )


# --- portcullis_requests_total: each request once, refused or not ---------------------------

COUNTED_ONCE = {
    "OPTIONS *": (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", "404"),
    "CONNECT": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "404"),
    "sign-out refused": (b"PUT /.portcullis/sign_out HTTP/1.1\r\nHost: gw\r\n\r\n", "405"),
    "parser refused": (b"get /wms/stock HTTP/1.1\r\nHost: gw\r\n\r\n", "400"),
    "headers too large": (
        b"GET /wms/stock HTTP/1.1\r\nHost: gw\r\n"
        + b"".join(b"X-P%03d: %s\r\n" % (i, b"a" * 16000) for i in range(8)),
        "431",
    ),
}


@pytest.mark.parametrize(
    ("request_bytes", "status"), COUNTED_ONCE.values(), ids=COUNTED_ONCE.keys()
)
async def test_refusals_off_the_proxied_route_count_once_in_requests_total(
    aiohttp_server: ServerFactory, tmp_path: Path, request_bytes: bytes, status: str
) -> None:
    """A dashboard's deny ratio from requests_total missed them: they were decision
    events and in decisions_total only. Labelled as a path no route has is."""
    async with sign_in_stack(aiohttp_server, tmp_path) as stack:
        admin = await admin_listener(aiohttp_server, stack)
        before = await requests_total(admin)
        assert (await stack.get("/nowhere/")).status == 404
        no_route = await requests_total(admin)
        assert moved(before, no_route) == {("-", "404"): 1.0}
        reader, _ = await open_raw(stack, request_bytes)
        answer = await asyncio.wait_for(reader.readline(), 5)
        assert answer.split(b" ", 2)[1] == status.encode(), answer
        await stack.events(at_least=2)
        assert moved(no_route, await requests_total(admin)) == {("-", status): 1.0}
        assert metric(stack, 'portcullis_decisions_total{app="-",result="deny"}') == 2


async def test_proxied_request_counts_once_and_own_pages_served_not_at_all(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with sign_in_stack(aiohttp_server, tmp_path) as stack:
        admin = await admin_listener(aiohttp_server, stack)
        before = await requests_total(admin)
        token = stack.token("alice", groups=["warehouse"], amr=["pwd", "otp"])
        assert (await stack.get("/wms/stock", token)).status == 200
        served = await requests_total(admin)
        assert moved(before, served) == {("wms", "200"): 1.0}
        assert (await stack.get("/healthz")).status == 200
        assert await requests_total(admin) == served
