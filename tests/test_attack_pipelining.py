"""Attack review of b30a9b2/95584ac: HeaderTimeoutProtocol._parse feeds aiohttp's
parser each read in pieces cut after every CR LF CR LF (gateway/limits.py).

A differential harness drives the same reads (exact read boundaries, a fake
transport) through aiohttp's own RequestHandler and through HeaderTimeoutProtocol,
with the same echoing handler, and compares what a client gets: the responses in
order (status and which request each answers, the body the handler received),
whether the connection ends up closed, and whether it hangs. The gateway side also
checks the refusal log: one on_bad_request call per 400 answered, naming its own
request line or none."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import aiohttp.web_protocol
import pytest
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParserC, HttpRequestParserPy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.limits import HEAD_KEPT, HeaderTimeoutProtocol, LimitedServer
from gateway.parser_refusals import describe

PARSERS = {"C": HttpRequestParserC, "Python": HttpRequestParserPy}


class FakeTransport(asyncio.Transport):
    """A socket whose reads the test decides byte for byte."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.out = bytearray()
        self.closed = False
        self.paused = False
        self.protocol: Any = None

    def write(self, data: Any) -> None:
        if not self.closed:
            self.out += data

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_reading(self) -> bool:
        return not self.paused

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: Any = None, low: Any = None) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


@dataclass
class Outcome:
    responses: list[tuple[int, str]]  # (status, what the handler echoed, or "" for errors)
    closed: bool
    hung: bool  # reads left the test could not deliver (transport paused for good)
    handled: list[str] = field(default_factory=list)
    refusals: list[tuple[int, str, bytes]] = field(default_factory=list)
    cuts: list[str] = field(default_factory=list)
    raw: bytes = b""

    def client_view(self) -> tuple[Any, ...]:
        return (self.responses, self.closed, self.hung)


async def echo(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    digest = hashlib.sha256(body).hexdigest()[:8]
    said = f"{request.method} {request.path_qs} {len(body)} {digest}"
    request.app_handled.append(said)  # type: ignore[attr-defined]
    return web.Response(text=said, headers={"X-Echo": said})


@contextmanager
def parser(name: str) -> Iterator[None]:
    with mock.patch.object(aiohttp.web_protocol, "HttpRequestParser", PARSERS[name]):
        yield


def split_responses(raw: bytes) -> list[tuple[int, str]]:
    """The responses in `raw`, in order: (status, X-Echo or "")."""
    found: list[tuple[int, str]] = []
    at = 0
    while at < len(raw):
        end = raw.find(b"\r\n\r\n", at)
        if end < 0:
            found.append((-1, raw[at : at + 60].decode("latin-1")))  # a broken answer
            break
        head = raw[at:end].decode("latin-1")
        status_match = re.match(r"HTTP/1\.[01] (\d{3})", head)
        status = int(status_match[1]) if status_match else -1
        echo_match = re.search(r"\r\nX-Echo: ([^\r]*)", head)
        said = echo_match[1] if echo_match else ""
        length_match = re.search(r"\r\nContent-Length: (\d+)", head, re.I)
        length = int(length_match[1]) if length_match else 0
        if said.startswith("HEAD ") or status in (100, 101, 204, 304):
            length = 0
        found.append((status, said))
        at = end + 4 + length
    return found


async def run(
    reads: list[bytes],
    *,
    gateway: bool,
    parser_name: str = "C",
    settle: float = 0.05,
    handler: Any = echo,
    limits: dict[str, Any] | None = None,
) -> Outcome:
    """Deliver `reads` one data_received call each (waiting while the transport is
    paused, as a socket would) to aiohttp's handler or the gateway's."""
    loop = asyncio.get_running_loop()
    handled: list[str] = []
    refusals: list[tuple[int, str, bytes]] = []
    cuts: list[str] = []

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        request.app_handled = handled  # type: ignore[attr-defined]
        return await handler(request)

    with parser(parser_name):
        base = web.Server(handle, loop=loop, access_log=None)
        if gateway:
            server: Any = LimitedServer(
                base,
                on_cut=cuts.append,
                **({"header_timeout": 5.0} | (limits or {})),
                on_bad_request=lambda peer, status, reason, head: refusals.append(
                    (status, reason, head)
                ),
            )
        else:
            server = base
        protocol = server()
        assert isinstance(protocol, HeaderTimeoutProtocol) == gateway
    transport = FakeTransport(loop)
    transport.protocol = protocol
    protocol.connection_made(transport)
    hung = False
    for data in reads:
        for _ in range(400):
            if not transport.paused or transport.closed:
                break
            await asyncio.sleep(0.005)
        if transport.closed:
            break
        if transport.paused:
            hung = True
            break
        protocol.data_received(data)
        for _ in range(5):
            await asyncio.sleep(0)
    # Quiet: nothing written for `settle` seconds.
    size = -1
    for _ in range(100):
        if len(transport.out) == size:
            break
        size = len(transport.out)
        await asyncio.sleep(settle)
    closed = transport.closed
    if not closed:
        transport.close()
    await asyncio.sleep(0)
    await server.shutdown(0.1) if hasattr(server, "shutdown") else None
    raw = bytes(transport.out)
    return Outcome(split_responses(raw), closed, hung, handled, refusals, cuts, raw)


async def both(reads: list[bytes], parser_name: str = "C", **kw: Any) -> tuple[Outcome, Outcome]:
    plain = await run(reads, gateway=False, parser_name=parser_name, **kw)
    gated = await run(reads, gateway=True, parser_name=parser_name, **kw)
    return plain, gated


def check_log(gated: Outcome) -> None:
    """One refusal event per 400 the parser caused, each naming its own request or none."""
    errors = [r for r in gated.responses if r[0] in (400, 431) and not r[1]]
    assert len(gated.refusals) == len(errors), (gated.refusals, gated.responses)


def H(path: str = "/", *extra: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gw", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(path: str, body: bytes, *extra: str) -> bytes:
    return H(path, f"Content-Length: {len(body)}", *extra, method="POST") + body


def chunked(path: str, body: bytes, size: int = 3) -> bytes:
    out = H(path, "Transfer-Encoding: chunked", method="POST")
    for i in range(0, len(body), size):
        part = body[i : i + size]
        out += b"%x\r\n%s\r\n" % (len(part), part)
    return out + b"0\r\n\r\n"


# --- the differential: what a client gets is aiohttp's own answer -----------------------------

BAD = [
    b"GET /bad\x01 HTTP/1.1\r\nHost: gw\r\n\r\n",
    b"GET /pos/evil?x=2 HTTP/1.1\r\nHost: gw\r\nBad Header\r\n\r\n",
    b"XX\r\n\r\n",
]


def request_strategy(close_ok: bool) -> st.SearchStrategy[bytes]:
    idx = st.integers(0, 99).map(str)
    kinds = [
        idx.map(lambda i: H(f"/g{i}")),
        idx.map(lambda i: H(f"/h{i}", method="HEAD")),
        st.tuples(
            idx, st.sampled_from([b"", b"abc", b"\r\n\r\n", b"x\r\n\r\nGET / HTTP/1.1\r\n\r\n"])
        ).map(lambda t: post(f"/p{t[0]}", t[1])),
        st.tuples(idx, st.sampled_from([b"hello", b"\r\n\r\n\r\n", b"z" * 20])).map(
            lambda t: chunked(f"/c{t[0]}", t[1])
        ),
        idx.map(lambda i: b"\r\n" + H(f"/l{i}")),
        idx.map(
            lambda i: (
                H(f"/e{i}", "Expect: 100-continue", "Content-Length: 4", method="POST") + b"abcd"
            )
        ),
        st.tuples(idx, st.sampled_from([1, 400, 470, 480])).map(
            lambda t: H(f"/n{t[0]}", "X-Pad: " + "p" * t[1])
        ),
        st.sampled_from(BAD),
    ]
    if close_ok:  # aiohttp's Python parser refuses a read with more after it (documented)
        kinds.append(idx.map(lambda i: H(f"/close{i}", "Connection: close")))
    return st.one_of(kinds)


@st.composite
def pipelines(draw: Any, close_ok: bool) -> list[bytes]:
    requests = draw(st.lists(request_strategy(close_ok), min_size=1, max_size=8))
    many = draw(st.sampled_from([0, 0, 0, 40]))  # past aiohttp's queue of 32
    data = b"".join(requests[:1]) + H("/many") * many + b"".join(requests[1:])
    cuts = (
        draw(st.lists(st.integers(1, len(data) - 1), max_size=6, unique=True))
        if len(data) > 1
        else []
    )
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def named_right(gated: Outcome) -> None:
    """A refusal names its own request (one of BAD) or none."""
    for _, reason, head in gated.refusals:
        if not head or reason.startswith("Data after"):
            continue
        assert any(b.startswith(head) or head.startswith(b) for b in BAD), (reason, head)


@pytest.mark.parametrize("parser_name", PARSERS)
def test_pipelines_split_anywhere_get_aiohttps_own_answers(parser_name: str) -> None:
    @settings(
        max_examples=60,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(reads=pipelines(close_ok=parser_name == "C"))
    def check(reads: list[bytes]) -> None:
        plain, gated = asyncio.run(both(reads, parser_name, settle=0.01))
        assert gated.client_view() == plain.client_view(), reads
        check_log(gated)
        named_right(gated)

    check()


EVIL = BAD[1]
BENIGN = H("/wms/stock?first=1")


@pytest.mark.parametrize("parser_name", PARSERS)
@pytest.mark.parametrize("offset", [1, 2, 3, 4])
async def test_a_head_end_split_across_reads_at_each_offset(parser_name: str, offset: int) -> None:
    data = BENIGN + EVIL
    at = len(BENIGN) - 4 + offset
    plain, gated = await both([data[:at], data[at:]], parser_name)
    assert gated.client_view() == plain.client_view()
    assert [head for _, _, head in gated.refusals] == [EVIL[:HEAD_KEPT]]


@pytest.mark.parametrize("parser_name", PARSERS)
async def test_one_byte_reads_are_answered_and_named(parser_name: str) -> None:
    data = BENIGN + post("/p", b"a\r\n\r\nb") + BENIGN + EVIL
    reads = [data[i : i + 1] for i in range(len(data))]
    plain, gated = await both(reads, parser_name, settle=0.01)
    assert gated.client_view() == plain.client_view()
    # After a body the refused request's start is not known: none, never the POST;
    # read a byte at a time, the head is what came before the byte refused.
    ((_, _, head),) = gated.refusals
    assert EVIL.startswith(head), head


@pytest.mark.parametrize("parser_name", PARSERS)
@pytest.mark.parametrize("before", [0, 1, 30, 31, 32, 33, 40, 70])
async def test_a_refusal_after_many_pipelined_requests(parser_name: str, before: int) -> None:
    reads = [BENIGN * before + EVIL + BENIGN]
    plain, gated = await both(reads, parser_name)
    assert gated.client_view() == plain.client_view()
    check_log(gated)
    assert [head for _, _, head in gated.refusals] in ([EVIL], [b""])


@pytest.mark.parametrize("parser_name", PARSERS)
@pytest.mark.parametrize("count", [31, 32, 33, 64, 65, 100])
async def test_many_pipelined_requests_none_lost_or_reordered(parser_name: str, count: int) -> None:
    data = b"".join(H(f"/r{i}") for i in range(count))
    plain, gated = await both([data], parser_name)
    assert gated.client_view() == plain.client_view()
    assert [said.split()[1] for _, said in gated.responses] == [f"/r{i}" for i in range(count)]


@pytest.mark.parametrize("size", [HEAD_KEPT - 1, HEAD_KEPT, HEAD_KEPT + 1])
async def test_a_refused_head_of_about_head_kept_bytes(size: int) -> None:
    evil = b"GET /x HTTP/1.1\r\nHost: gw\r\nBad Header\r\nX-Pad: "
    evil += b"p" * (size - len(evil) - 4) + b"\r\n\r\n"
    assert len(evil) == size
    plain, gated = await both([BENIGN + evil])
    assert gated.client_view() == plain.client_view()
    assert [head for _, _, head in gated.refusals] == [evil[:HEAD_KEPT]]


async def test_slowloris_one_byte_reads_hit_the_pending_header_cap() -> None:
    head = b"GET / HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"s" * 400
    reads = [head[i : i + 1] for i in range(len(head))]
    gated = await run(reads, gateway=True, settle=0.01, limits={"pending_header_bytes": 200})
    assert gated.cuts == ["header_bytes"]
    assert gated.responses == [(431, "")] and gated.closed
    assert [(s, head_[:16]) for s, _, head_ in gated.refusals] == [(431, head[:16])]


async def test_slowloris_one_byte_reads_hit_the_header_timeout() -> None:
    head = b"GET / HTTP/1.1\r\nHost: gw\r\n"

    async def trickle() -> Outcome:
        return await run(
            [head[i : i + 1] for i in range(len(head))],
            gateway=True,
            settle=0.5,
            limits={"header_timeout": 0.2},
        )

    gated = await trickle()
    assert gated.cuts == ["header_timeout"] and gated.closed


async def ws_echo(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    request.app_handled.append("ws")  # type: ignore[attr-defined]
    async for message in ws:
        await ws.send_str("echo:" + message.data)
        if message.data == "last":
            await ws.close()
    return ws


def ws_frame(text: str) -> bytes:
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


@pytest.mark.parametrize("parser_name", PARSERS)
@pytest.mark.parametrize("split", ["one read", "head then frames", "one byte"])
async def test_websocket_frames_in_the_upgrades_read(parser_name: str, split: str) -> None:
    head = H(
        "/ws",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    )
    # A frame holding CR LF CR LF: cut there, it must still reach the WebSocket whole.
    frames = ws_frame("a\r\n\r\nb") + ws_frame("second") + ws_frame("last")
    data = head + frames
    reads = {
        "one read": [data],
        "head then frames": [head, frames],
        "one byte": [data[i : i + 1] for i in range(len(data))],
    }[split]
    plain = await run(reads, gateway=False, parser_name=parser_name, handler=ws_echo, settle=0.02)
    gated = await run(reads, gateway=True, parser_name=parser_name, handler=ws_echo, settle=0.02)
    assert b"echo:a\r\n\r\nb" in plain.raw and b"echo:last" in plain.raw
    assert gated.raw.split(b"\r\n\r\n", 1)[1] == plain.raw.split(b"\r\n\r\n", 1)[1]


# --- describe(): no byte of the request in the reason -----------------------------------------

SECRET = "SECRETqz7"
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC ,.:'()-", min_size=0, max_size=12)
# Shapes of the parsers' own messages, with request bytes where the message quotes them.
SHAPED = st.one_of(
    st.binary(max_size=16),
    st.tuples(WORDS, WORDS).map(lambda t: f"{t[0]}{SECRET}{t[1]}:\n\n  b'x'\n  ^".encode()),
    st.tuples(WORDS, WORDS).map(lambda t: f'Bearer {SECRET}{t[0]}:\n\n  b"{t[1]}"\n ^'.encode()),
    st.lists(
        st.sampled_from(
            [b"\n", b"\n\n", b"  ", b"b'", b"'", b"^", b":", b"\x01", b";", b" ", b"x"]
        ),
        max_size=8,
    ).map(b"".join),
)


@st.composite
def bad_requests(draw: Any) -> bytes:
    where = draw(
        st.sampled_from(["method", "target", "header", "value", "chunk", "length", "trailer"])
    )
    odd = draw(SHAPED)
    s = SECRET.encode()
    if where == "method":
        return b"G" + odd + s + b" / HTTP/1.1\r\nHost: gw\r\n\r\n"
    if where == "target":
        return b"GET /" + s + odd + b" HTTP/1.1\r\nHost: gw\r\n\r\n"
    if where == "header":
        return b"GET / HTTP/1.1\r\nHost: gw\r\nX" + odd + s + b": v\r\n\r\n"
    if where == "value":
        return b"GET / HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + s + odd + b"\r\n\r\n"
    if where == "length":
        return b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: " + s + odd + b"\r\n\r\n"
    if where == "trailer":
        head = b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        return head + b"0\r\nX-T: " + s + odd + b"\r\n\r\n"
    head = b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + s + odd + b"\r\n"


def refused(parser_name: str, data: bytes) -> HttpProcessingError | None:
    loop = asyncio.new_event_loop()
    try:
        cls: Any = PARSERS[parser_name]
        reader = cls(mock.Mock(), loop, 2**16, max_line_size=8190, max_field_size=8190)
        reader.feed_data(data)
        reader.feed_data(b"")
    except HttpProcessingError as exc:
        return exc
    finally:
        loop.close()
    return None


@pytest.mark.parametrize("parser_name", PARSERS)
def test_no_request_bytes_in_the_reason_for_random_bad_requests(parser_name: str) -> None:
    @settings(max_examples=400, derandomize=True, deadline=None, database=None)
    @given(data=bad_requests())
    def check(data: bytes) -> None:
        exc = refused(parser_name, data)
        if exc is None:
            return
        reason = describe(exc)
        assert SECRET not in reason, (data, exc.message, reason)

    check()


async def test_a_chunk_size_line_shaped_like_llhttps_message_stays_out_of_the_log() -> None:
    """aiohttp's Python parser raises TransferEncodingError(<the raw chunk-size line>),
    which a client can shape like llhttp's messages: describe() takes a reason
    from that shape only when it is one of llhttp's own (it once took any words)."""
    line = f"Bearer {SECRET} (token of alice):\n\n  b'x'\n  ^".encode()
    data = H("/up", "Transfer-Encoding: chunked", method="POST") + line + b"\r\n"
    gated = await run([data], gateway=True, parser_name="Python")
    assert gated.responses == [(400, "")]
    ((_, reason, _),) = gated.refusals
    assert SECRET not in reason, reason
    assert SECRET.encode() not in gated.raw, gated.raw[-120:]
