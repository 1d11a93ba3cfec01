"""Attack review of the decision-log shipping's sinks (gateway/audit/shipping/sinks/):
a hostile or broken receiver, read as an attacker and as a SIEM operator. One test
per attack, named for it. What they hold to (README "Decision log durability and
shipping to a SIEM"): a batch is acknowledged only when the receiver truly accepted
it; a sink outage never loses or blocks decisions; the bearer token and TLS settings
protect the stream.

Each receiver here is a raw asyncio server on loopback that stands in for a real
SIEM (Splunk HEC, an OPA decision-log collector, a syslog daemon) that can't run
here, answering the way a broken, overloaded or hostile one would."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from gateway.audit.shipping.settings import SinkConfig, read_token
from gateway.audit.shipping.sinks.base import SinkError
from gateway.audit.shipping.sinks.http import HttpSink
from gateway.audit.shipping.sinks.syslog import SyslogSink

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_receiver(handler: Handler) -> AsyncIterator[int]:
    """A loopback TCP server running ``handler`` per connection: it stands in for
    a real SIEM's collector (which can't run here) answering as ``handler`` says.
    Yields its port."""
    tasks: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 request: its head and its body (Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length)
    return head, body


def http_config(url: str, token_file: Path | None = None, **kw: object) -> SinkConfig:
    return SinkConfig("siem", "http", url=url, token_file=token_file, **kw)  # type: ignore[arg-type]


BATCH = [b'{"decision_id":"d1","seq":1}', b'{"decision_id":"d2","seq":2}']


async def not_acknowledged(
    sink: HttpSink | SyslogSink, batch: list[bytes] = BATCH, match: str | None = None
) -> SinkError:
    """Send ``batch``, which the sink must not count as delivered (a SinkError, so
    the shipper retries it); the sink is closed after. Returns the error."""
    try:
        with pytest.raises(SinkError, match=match) as caught:
            await sink.send(batch)
    finally:
        await sink.close()
    return caught.value


# --- memory: the receiver's answer is read whole ----------------------------------------------


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
async def test_a_huge_or_gzip_bomb_answer_is_not_read_whole_into_the_shippers_memory(
    encoding: str,
) -> None:
    """A receiver (or anything on the path of a plain-http url) answers the batch's
    POST with 200 and a 64 MiB body; gzip'd, that is 64 KiB on the wire (aiohttp
    decompresses it). HttpSink.send reads at most 64 KiB of an answer: it once
    read it whole (``response.text()``, 2-3 times the body in memory), and a
    10 MiB gzip bomb (10 GiB) would have OOM-killed the shipping process, again
    after every restart, and stopped the shipping to every sink for good.
    Bounded here to 16 MiB."""
    size = 64 << 20
    zeros = b"\0" * size
    body = gzip.compress(zeros, compresslevel=9) if encoding == "gzip" else zeros

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            + (f"Content-Encoding: {encoding}\r\n" if encoding == "gzip" else "")
            + "\r\n"
        )
        writer.write(head.encode())
        # A MiB at a time, each drained: the stand-in's own transport buffer (in this
        # process, so traced too) stays small, and only the sink's memory is measured.
        view = memoryview(body)
        with contextlib.suppress(ConnectionError):
            for start in range(0, len(view), 1 << 20):
                writer.write(view[start : start + (1 << 20)])
                await writer.drain()

    async with raw_receiver(answer) as port:
        sink = HttpSink(http_config(f"http://127.0.0.1:{port}/v1/logs", timeout=20.0))
        tracemalloc.start()
        try:
            # refusing such an answer is fine too; reading it whole is not
            with contextlib.suppress(SinkError):
                await sink.send(BATCH)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await sink.close()
    assert peak < 16 << 20, f"one answer took {peak >> 20} MiB of the shipper's memory"


# --- what is (not) an acknowledgement --------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_to_another_port_gets_neither_the_token_nor_an_acknowledgement(
    tmp_path: Path, status: int
) -> None:
    """A receiver redirects the POST to another listener (another host's stand-in):
    the token must not travel there, and the batch is not acknowledged."""
    seen_elsewhere: list[bytes] = []

    async def elsewhere(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        seen_elsewhere.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with raw_receiver(elsewhere) as other:

        async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(
                f"HTTP/1.1 {status} Moved\r\nLocation: http://127.0.0.1:{other}/steal\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )
            await writer.drain()

        async with raw_receiver(redirect) as port:
            (tmp_path / "token").write_text("s3cret-token\n")
            sink = HttpSink(http_config(f"http://127.0.0.1:{port}/v1/logs", tmp_path / "token"))
            await not_acknowledged(sink, match="redirected")
    assert seen_elsewhere == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"text":"Invalid data format","code":6,"invalid-event-number":1}',
        b'{"text":"Server is busy","code":9}',
        b'{"text":"Success","code":0.0}',
        b'{"text":"Success","code":"0"}',
        b'[{"text":"Success","code":0}]',
        b"",
    ],
)
async def test_a_hec_200_that_says_failure_or_is_not_hecs_answer_is_not_an_acknowledgement(
    tmp_path: Path, body: bytes
) -> None:
    """Splunk HEC answers 200 with a failure code (a partial batch: the events before
    ``invalid-event-number`` indexed, the rest not), or something that is not its
    success answer: the batch must be sent again, not counted delivered."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        await writer.drain()

    async with raw_receiver(answer) as port:
        (tmp_path / "token").write_text("t")
        url = f"http://127.0.0.1:{port}/services/collector/event"
        await not_acknowledged(
            HttpSink(http_config(url, tmp_path / "token", envelope="splunk_hec"))
        )


async def test_a_receiver_that_reads_the_batch_and_never_answers_times_out_not_acknowledged() -> (
    None
):
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(3600)

    async with raw_receiver(silent) as port:
        start = time.monotonic()
        await not_acknowledged(
            HttpSink(http_config(f"http://127.0.0.1:{port}/v1/logs", timeout=0.5))
        )
    assert time.monotonic() - start < 3.0


async def test_a_slow_drip_answer_is_cut_at_the_timeout_not_acknowledged() -> None:
    """200 and a Content-Length of a megabyte, then one byte every 50 ms: the
    batch is not acknowledged until the whole answer arrived, and the sink gives
    up at its timeout instead of hanging."""

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        while True:
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    async with raw_receiver(drip) as port:
        start = time.monotonic()
        await not_acknowledged(
            HttpSink(http_config(f"http://127.0.0.1:{port}/v1/logs", timeout=0.7))
        )
    assert time.monotonic() - start < 3.0


@pytest.mark.parametrize("cut", ["mid-body", "mid-head", "before-answer", "reset"])
async def test_a_connection_cut_before_the_whole_answer_is_not_an_acknowledgement(
    cut: str,
) -> None:
    async def cutter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if cut == "mid-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        elif cut == "mid-head":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        elif cut == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        await writer.drain()
        writer.close()

    async with raw_receiver(cutter) as port:
        await not_acknowledged(
            HttpSink(http_config(f"http://127.0.0.1:{port}/v1/logs", timeout=2.0))
        )


async def test_a_chunked_gzipped_503_is_a_retry_with_its_reason() -> None:
    text = b"collector overloaded, try later"
    packed = gzip.compress(text)
    chunked = (
        b"".join(
            b"%x\r\n%s\r\n" % (len(packed[i : i + 7]), packed[i : i + 7])
            for i in range(0, len(packed), 7)
        )
        + b"0\r\n\r\n"
    )

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n"
            b"Retry-After: 7\r\n\r\n" + chunked
        )
        await writer.drain()

    async with raw_receiver(answer) as port:
        sink = HttpSink(http_config(f"http://127.0.0.1:{port}/v1/logs"))
        error = await not_acknowledged(sink, match="overloaded")
    assert error.retry_after == 7.0


# --- the token -------------------------------------------------------------------------------


@seed(20260705)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    token=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).map(
        lambda t: "tok" + t
    ),
    injected=st.sampled_from(["", "\r\nX-Evil: 1", "\nX-Evil: 1", "\rX-Evil: 1", "\x00X-Evil: 1"]),
)
def test_a_token_file_never_injects_a_header_or_a_second_line(
    tmp_path_factory: pytest.TempPathFactory, token: str, injected: str
) -> None:
    """Whatever the token file holds (header-injection attempts among it), either
    the sink refuses it (an error, retried) or the request carries exactly one
    Authorization header and no other header the file added."""
    path = tmp_path_factory.mktemp("tok") / "token"
    path.write_text(token + injected, encoding="utf-8", errors="surrogateescape")
    heads: list[bytes] = []

    async def capture(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        heads.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async def main() -> bool:
        async with raw_receiver(capture) as port:
            sink = HttpSink(http_config(f"http://127.0.0.1:{port}/v1/logs", path, timeout=2.0))
            try:
                await sink.send(BATCH)
                return True
            except SinkError:
                return False
            finally:
                await sink.close()

    sent = asyncio.run(main())
    if not sent:
        assert heads == []
        return
    assert len(heads) == 1
    lines = heads[0].split(b"\r\n")
    names = [line.partition(b":")[0].lower() for line in lines[1:] if line]
    assert names.count(b"authorization") == 1
    assert b"x-evil" not in names
    assert all(b"\n" not in line and b"\r" not in line for line in lines)
    assert read_token(path)  # what was sent is a token the reader accepts


async def test_a_token_file_that_disappears_is_a_retry_not_a_send_without_a_token(
    tmp_path: Path,
) -> None:
    heads: list[bytes] = []

    async def capture(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        heads.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()

    async with raw_receiver(capture) as port:
        token = tmp_path / "token"
        token.write_text("first")
        sink = HttpSink(http_config(f"http://127.0.0.1:{port}/v1/logs", token))
        try:
            await sink.send(BATCH)
            token.unlink()
            with pytest.raises(SinkError, match="token_file"):
                await sink.send(BATCH)
            token.write_text("second\n")
            await sink.send(BATCH)
        finally:
            await sink.close()
    assert [b"Bearer first" in heads[0], b"Bearer second" in heads[1]] == [True, True]
    assert len(heads) == 2


# --- syslog ----------------------------------------------------------------------------------


async def test_a_syslog_receiver_that_accepts_but_never_reads_times_out_instead_of_blocking() -> (
    None
):
    """A receiver that accepts the TCP connection and never reads it: a batch larger
    than the kernel's buffers must fail at the timeout (retried), not block for ever
    nor count as delivered."""

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await asyncio.sleep(3600)

    async with raw_receiver(deaf) as port:
        sink = SyslogSink(SinkConfig("siem", "syslog", address=f"127.0.0.1:{port}", timeout=0.5))
        big = [b"%d " % 60000 + b"x" * 60000 for _ in range(200)]  # 12 MB
        start = time.monotonic()
        await not_acknowledged(sink, big)
    assert time.monotonic() - start < 5.0


# --- TLS: a receiver that can't be verified never gets the batch nor the token ---------------


def make_cert(
    directory: Path, *, dns: str = "localhost", expired: bool = False, self_signed: bool = False
) -> tuple[Path, Path, Path]:
    """(CA file, certificate chain file, key file) for a receiver: a leaf for ``dns``
    signed by a fresh CA (or by itself), optionally expired yesterday."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("attack CA")).issuer_name(name("attack CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(now + datetime.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    before = now - datetime.timedelta(days=5)
    after = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=1)
    leaf = (
        x509.CertificateBuilder().subject_name(name(dns))
        .issuer_name(name(dns) if self_signed else ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(before).not_valid_after(after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
        .sign(key if self_signed else ca_key, hashes.SHA256())
    )  # fmt: skip
    ca_file, cert_file, key_file = (
        directory / "ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )  # fmt: skip
    return ca_file, cert_file, key_file


@asynccontextmanager
async def tls_receiver(cert: Path, key: Path, got: list[bytes]) -> AsyncIterator[int]:
    """A TLS listener standing in for a SIEM collector (HTTPS or syslog over TLS)
    that can't run here: it keeps whatever bytes reach it after a handshake."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(65536)
        got.append(data)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await keep(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


CASES = {
    "expired": {"expired": True},
    "wrong-hostname": {"dns": "siem.other.example"},
    "self-signed": {"self_signed": True},
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", ["https", "syslog-tls"])
async def test_a_receiver_whose_certificate_fails_verification_gets_no_batch_and_no_token(
    tmp_path: Path, case: str, kind: str
) -> None:
    """An expired certificate, one for another host name, or a self-signed one
    (the sink trusting only its CA file): the handshake must fail, nothing (the
    token least of all) reaches the receiver, and the batch is not acknowledged."""
    from gateway.audit.shipping.settings import SinkTls

    ca, cert, key = make_cert(tmp_path / "pki", **CASES[case])  # type: ignore[arg-type]
    (tmp_path / "token").write_text("s3cret-token")
    got: list[bytes] = []
    async with tls_receiver(cert, key, got) as port:
        tls = SinkTls(ca_file=ca, server_name="localhost")
        if kind == "https":
            sink: HttpSink | SyslogSink = HttpSink(
                http_config(f"https://127.0.0.1:{port}/v1/logs", tmp_path / "token", tls=tls,
                            timeout=3.0)
            )  # fmt: skip
        else:
            sink = SyslogSink(
                SinkConfig("siem", "syslog", address=f"localhost:{port}", tls=SinkTls(ca_file=ca),
                           timeout=3.0)
            )  # fmt: skip
        await not_acknowledged(sink)
    assert not any(got), got


@pytest.mark.parametrize("kind", ["https", "syslog-tls"])
async def test_the_tls_stand_in_receives_from_a_sink_that_can_verify_it(
    tmp_path: Path, kind: str
) -> None:
    """The control for the test above: a valid certificate for the name, the same
    stand-in: the batch (and for https the token) does get through."""
    from gateway.audit.shipping.settings import SinkTls

    ca, cert, key = make_cert(tmp_path / "pki")
    (tmp_path / "token").write_text("s3cret-token")
    got: list[bytes] = []
    async with tls_receiver(cert, key, got) as port:
        if kind == "https":
            sink: HttpSink | SyslogSink = HttpSink(
                http_config(f"https://127.0.0.1:{port}/v1/logs", tmp_path / "token",
                            tls=SinkTls(ca_file=ca, server_name="localhost"), gzip=False)
            )  # fmt: skip
        else:
            sink = SyslogSink(
                SinkConfig("siem", "syslog", address=f"localhost:{port}", tls=SinkTls(ca_file=ca))
            )
        try:
            await sink.send(BATCH)
        finally:
            await sink.close()
    data = b"".join(got)
    assert b'"decision_id":"d1"' in data
    if kind == "https":
        assert b"Bearer s3cret-token" in data
