"""Requests aiohttp's parser refuses: the logged reason is the parser's own words
(never the bytes it quotes), and the logged request line is the refused request's
or none, never another request's (gateway/parser_refusals.py, gateway/limits.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    TransferEncodingError,
)
from aiohttp.http_parser import HttpRequestParserC, HttpRequestParserPy
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.chain import REFUSAL_PATH
from gateway.limits import CUTS_PER_READ
from gateway.parser_refusals import describe
from tests.gateway_stack import ServerFactory, Stack
from tests.test_gateway_limits import closed_after, limited_stack, open_raw

SECRET = "SECRETqz7"
PARSERS = {"C": HttpRequestParserC, "Python": HttpRequestParserPy}


def refusal(parser: str, data: bytes) -> HttpProcessingError | None:
    """What aiohttp's C or pure-Python request parser raises for `data`, if anything;
    aiohttp's server uses the C one unless AIOHTTP_NO_EXTENSIONS is set."""
    loop = asyncio.new_event_loop()
    try:
        cls: Any = PARSERS[parser]
        reader = cls(mock.Mock(), loop, 2**16, max_line_size=8190, max_field_size=8190)
        reader.feed_data(data)
    except HttpProcessingError as exc:
        return exc
    finally:
        loop.close()
    return None


S = SECRET.encode()
H = b"\r\nHost: gw\r\n"
# Each quotes the secret in at least one parser's message: (request, what the C parser says).
QUOTING = {
    "control byte in a header value": (
        b"GET / HTTP/1.1" + H + b"Authorization: Bearer " + S + b"\x01x\r\n\r\n",
        "Invalid header value char",
    ),
    "NUL in a header value": (
        b"GET / HTTP/1.1" + H + b"Cookie: sid=" + S + b"\x00\r\n\r\n",
        "Invalid header value char",
    ),
    "header line without a colon": (
        b"GET / HTTP/1.1" + H + b"Bearer " + S + b"\r\n\r\n",
        "Invalid header token",
    ),
    "bad method": (
        b"G\x01T /?code=" + S + b" HTTP/1.1" + H + b"\r\n",
        "Invalid method encountered",
    ),
    "bad version": (
        b"GET /?code=" + S + b" HTXP/1.1" + H + b"\r\n",
        "Expected HTTP/, RTSP/ or ICE/",
    ),
    "HTTP/9.9": (b"GET /?code=" + S + b" HTTP/9.9" + H + b"\r\n", "Invalid HTTP version"),
    "control byte in the target": (
        b"GET /?code=" + S + b"\x01 HTTP/1.1" + H + b"\r\n",
        "Invalid char in url query",
    ),
    "bad absolute target": (
        b"GET http:/" + S + b" HTTP/1.1" + H + b"\r\n",
        "Unexpected char in url schema",
    ),
    "bad chunk size": (
        b"POST / HTTP/1.1" + H + b"Transfer-Encoding: chunked\r\n\r\n" + S + b"\r\n",
        "Invalid character in chunk size",
    ),
    "bad Content-Length": (
        b"POST / HTTP/1.1" + H + b"Content-Length: " + S + b"\r\n\r\n",
        "Invalid character in Content-Length",
    ),
    "request line too long": (
        b"GET /?code=" + S + b"x" * 9000 + b" HTTP/1.1\r\n",
        "Line too long (over 8190 bytes)",
    ),
    "header value too long": (
        b"GET / HTTP/1.1" + H + b"Authorization: Bearer " + S + b"x" * 9000 + b"\r\n\r\n",
        "Line too long (over 8190 bytes)",
    ),
    "obs-fold": (
        b"GET / HTTP/1.1" + H + b"X-A: a\r\n " + S + b"\r\n\r\n",
        "Unexpected whitespace after header value",
    ),
    "bare LF in a header value": (
        b"GET / HTTP/1.1" + H + b"Cookie: " + S + b"\nX: y\r\n\r\n",
        "Missing expected CR after header value",
    ),
    "request after Connection: close": (
        b"GET / HTTP/1.1" + H + b"Connection: close\r\n\r\nGET /?code=" + S + b" HTTP/1.1\r\n",
        "Data after `Connection: close`",
    ),
}


@pytest.mark.parametrize(("data", "words"), QUOTING.values(), ids=QUOTING.keys())
@pytest.mark.parametrize("parser", PARSERS)
def test_a_refusal_reason_is_the_parsers_words_without_the_bytes_it_quotes(
    parser: str, data: bytes, words: str
) -> None:
    exc = refusal(parser, data)
    if exc is None:  # aiohttp's pure-Python parser takes HTTP/9.9
        assert parser == "Python"
        return
    reason = describe(exc)
    assert SECRET not in reason and "b'" not in reason and "\\x" not in reason, reason
    if parser == "C":
        assert reason == words


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (BadHttpMessage("Duplicate 'Host' header found."), "Duplicate 'Host' header found"),
        (BadHttpMessage("Missing 'Host' header in request."), "Missing 'Host' header in request"),
        (InvalidHeader("Sec-WebSocket-Key1"), "Invalid HTTP header: 'Sec-WebSocket-Key1'"),
        (BadHttpMessage("Too many headers received"), "Too many headers received"),
    ],
)
def test_a_refusal_quoting_nothing_keeps_the_parsers_message(exc: Exception, reason: str) -> None:
    assert isinstance(exc, HttpProcessingError)
    assert describe(exc) == reason


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (BadHttpMessage(f"Something new: {SECRET}"), "Bad HTTP message"),
        (BadHttpMessage(f"Duplicate '{SECRET}' header found."), "Bad HTTP message"),
        (InvalidHeader(f"X-{SECRET}"), "Invalid HTTP header"),
        (BadStatusLine(f"GET /?code={SECRET} HTXP/1.1"), "Bad request line"),
        (InvalidURLError(f"/?code={SECRET}"), "Invalid request target"),
        (TransferEncodingError(SECRET), "Invalid transfer encoding"),
        (HttpProcessingError(message=SECRET), "Unreadable HTTP request"),
        # llhttp's shape, but not llhttp's words before the quoted line.
        (BadHttpMessage(f"{SECRET}\x01:\n\n  b'x'\n    ^"), "Bad HTTP message"),
        (BadHttpMessage(f"Invalid char:\n\n  b'{SECRET}'\n    ^ {SECRET}"), "Bad HTTP message"),
    ],
)
def test_a_refusal_message_of_an_unknown_shape_is_described_by_its_kind(
    exc: Exception, reason: str
) -> None:
    """Fail closed: a message not recognised as aiohttp's own words is not logged."""
    assert isinstance(exc, HttpProcessingError)
    assert describe(exc) == reason


# A header line's value: bytes around the secret, control and non-ASCII bytes likely.
ODD_BYTES = [b"\x00", b"\x01", b"\x7f", b"\xff", b"\t", b" ", b"\r", b"\n", b":", b"'", b"a"]
VALUE_BYTES = st.binary(max_size=12) | st.lists(st.sampled_from(ODD_BYTES), max_size=6).map(
    b"".join
)


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(
    before=VALUE_BYTES,
    after=VALUE_BYTES,
    name=st.sampled_from([b"Authorization", b"Cookie", b"X-Api-Key", b"Bad Name", b"X\x01"]),
    parser=st.sampled_from(sorted(PARSERS)),
)
def test_no_byte_of_a_header_lines_value_reaches_the_reason(
    before: bytes, after: bytes, name: bytes, parser: str
) -> None:
    value = before + S + after
    data = b"GET /wms/stock HTTP/1.1\r\nHost: gw\r\n" + name + b": " + value + b"\r\n\r\n"
    exc = refusal(parser, data)
    if exc is None:
        return
    reason = describe(exc)
    assert SECRET not in reason, (data, reason)
    # Whatever else of the value: the reason is words, no quoted or escaped bytes.
    assert reason.isprintable() and "b'" not in reason and "\\x" not in reason, (data, reason)


# --- end to end: the refusal names the request refused, or none ----------------------------


async def refused_http(stack: Stack, *writes: bytes, pause: float = 0.0) -> dict[str, Any]:
    """Send `writes` on one connection (with `pause` between them), read until the
    gateway closes, and return the refusal's http input (there must be one refusal)."""
    reader, writer = await open_raw(stack, writes[0])
    for data in writes[1:]:
        await asyncio.sleep(pause)
        writer.write(data)
        await writer.drain()
    _, answer = await closed_after(reader, 5.0)
    writer.close()
    assert b"400 Bad Request: " in answer, answer[-300:]
    assert SECRET.encode() not in answer  # the 400's body says the reason too
    events = await stack.events(at_least=answer.count(b"HTTP/1."))
    (event,) = [e for e in events if e["path"] == REFUSAL_PATH]
    assert event["result"]["reasons"][0].startswith("gateway.bad_request: ")
    http: dict[str, Any] = event["input"]["attributes"]["request"]["http"]
    return http


BENIGN = b"GET /wms/stock?first=1 HTTP/1.1\r\nHost: gw\r\n\r\n"
EVIL = b"GET /pos/second?x=2 HTTP/1.1\r\nHost: gw\r\nBad Header\r\n\r\n"


async def test_a_request_refused_after_one_sent_in_an_earlier_read_is_named(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The first request is answered (its own event); the refusal names the second."""
    async with limited_stack(aiohttp_server, tmp_path) as stack:
        http = await refused_http(stack, BENIGN, EVIL, pause=0.2)
    assert http["request_line"] == "GET /pos/second?x=2 HTTP/1.1", http


async def test_a_request_head_ending_across_two_reads_does_not_hide_the_next_one(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The benign head's CR LF CR LF is cut between reads: the refused request
    starts one byte into the second read, not at the first byte of either."""
    async with limited_stack(aiohttp_server, tmp_path) as stack:
        http = await refused_http(stack, BENIGN[:-1], BENIGN[-1:] + EVIL, pause=0.2)
    assert http["request_line"] == "GET /pos/second?x=2 HTTP/1.1", http


async def test_a_refusal_in_a_requests_own_body_names_that_request(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    data = b"POST /wms/upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    async with limited_stack(aiohttp_server, tmp_path) as stack:
        http = await refused_http(stack, data)
    assert http["request_line"] == "POST /wms/upload HTTP/1.1", http


async def test_a_request_refused_after_a_body_in_the_same_read_is_named_by_none(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """Where a body ends is the parser's to know: the refused request is not named,
    rather than named as the request the body belonged to."""
    posted = b"POST /wms/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nabcde"
    async with limited_stack(aiohttp_server, tmp_path) as stack:
        http = await refused_http(stack, posted + EVIL)
    assert (http["request_line"], http["method"], http["path"]) == ("", "", ""), http


async def test_a_request_refused_after_more_pipelined_ones_than_are_cut_is_named_by_none(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """Past CUTS_PER_READ requests in one read (and past aiohttp's queue of 32) the
    refused request's start is not known: no request line rather than a wrong one."""
    async with limited_stack(aiohttp_server, tmp_path) as stack:
        http = await refused_http(stack, BENIGN * (CUTS_PER_READ + 1) + EVIL)
    assert http["request_line"] == "", http


async def test_a_request_after_an_upgrade_not_taken_in_the_same_read_is_answered(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """Cut into pieces, a read is parsed as if they came in separate reads: aiohttp's
    C parser would ignore what follows an Upgrade it doesn't take in the same call."""
    upgrade = b"GET /wms/stock HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n"
    then = b"GET /wms/stock?second=1 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    async with limited_stack(aiohttp_server, tmp_path) as stack:
        reader, writer = await open_raw(stack, upgrade + then)
        _, answer = await closed_after(reader, 5.0)
        writer.close()
        events = await stack.events(at_least=2)
    assert answer.count(b"HTTP/1.1 ") == 2, answer
    paths = [e["input"]["attributes"]["request"]["http"]["path"] for e in events]
    assert paths == ["/wms/stock", "/wms/stock?second=1"], paths
