"""Faults found in the decision-log shipping by a review (issue 13), one test each,
named for the fault: each failed before its fix. What they hold to: every record
shipped at least once, in order, from a durable cursor; a sink outage never loses
or blocks a decision; a problem is loud (``portcullis_sink_failing``, the lag
metrics, a log line)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import tracemalloc
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.chain import MAX_LINE_BYTES, line_hash
from gateway.audit.shipping.settings import SinkConfig, SinkTls
from gateway.config import ConfigError, parse_config
from tests.gateway_stack import start_stack
from tests.syslog_ng import start_syslog_ng
from tests.test_decision_log import append_line_of
from tests.test_decision_log_shipping import (
    Receiver,
    caught_up,
    decision_ids,
    http_sink,
    log_records,
    needs_syslog_ng,
    receiver,  # noqa: F401 - the fixture
    shut_down,
    traffic,
    until,
    with_sinks,
)

if TYPE_CHECKING:
    from gateway.audit.shipping.shipper import Shipper


def logged_line(capfd: pytest.CaptureFixture[str], seen: list[str], text: str) -> bool:
    """Whether ``text`` was written to stderr so far (``seen`` keeps what was read)."""
    seen.append(capfd.readouterr().err)
    return text in "".join(seen)


# --- 1. a redirect is not an acknowledgement -----------------------------------------------


async def test_a_redirect_is_a_failure_not_an_acknowledgement(
    aiohttp_server: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A receiver that answers POST /logs with 301 to /logs/ (and GET with 200):
    followed, the POST becomes a GET and the batch vanishes, acknowledged."""
    posted: list[bytes] = []

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/logs/")

    async def page(request: web.Request) -> web.Response:
        if request.method == "POST":
            posted.append(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/logs", moved)
    app.router.add_route("*", "/logs/", page)
    server = await aiohttp_server(app)
    (tmp_path / "token").write_text("t")
    sink = http_sink(f"http://127.0.0.1:{server.port}/logs", tmp_path / "token")
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 4)
        await until(lambda: stack.gateway.shippers[0].stats["failing"] == 1)
        await asyncio.sleep(0.3)
        stats = stack.gateway.shippers[0].stats
        assert stats["acknowledged"] == 0 and stats["lag_events"] >= 4
        await until(
            lambda: "redirected to /logs/: point the sink's url there" in capfd.readouterr().err
        )
    assert posted == []
    assert not (tmp_path / "decisions.log.sink-siem.cursor").read_text().strip()


@pytest.mark.parametrize(
    "impostor",
    [
        ("text/html", "<html><body>Sign in to continue</body></html>"),  # a captive portal
        ("text/plain", ""),  # a proxy's empty 200
        ("application/json", '{"status": "ok"}'),  # JSON, but not HEC's answer
        ("application/json", '{"text": "Success", "code": false}'),
    ],
)
async def test_a_hec_2xx_that_is_not_hecs_success_answer_is_not_an_acknowledgement(
    aiohttp_server: Any,
    tmp_path: Path,
    receiver: tuple[Receiver, Any],  # noqa: F811
    capfd: pytest.CaptureFixture[str],
    impostor: tuple[str, str],
) -> None:
    """HEC acknowledges with ``{"text": "Success", "code": 0}``. A 200 whose body
    says nothing of the kind was taken as delivered: the events were gone,
    ``failing`` 0, lag 0, the cursor past them."""
    fake, server = receiver
    fake.impostor, fake.impostor_next = impostor, 1_000_000
    (tmp_path / "token").write_text(fake.token)
    url = f"http://127.0.0.1:{server.port}/services/collector/event"
    sink = http_sink(url, tmp_path / "token", envelope="splunk_hec")
    seen: list[str] = []
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 4)
        await until(lambda: stack.gateway.shippers[0].stats["failing"] == 1)
        await until(lambda: logged_line(capfd, seen, "not HEC's acknowledgement"))
        stats = stack.gateway.shippers[0].stats
        assert stats["acknowledged"] == 0 and stats["lag_events"] >= 4
        assert not (tmp_path / "decisions.log.sink-siem.cursor").read_text().strip()
        fake.impostor_next = 0  # the real collector answers again
        await caught_up(stack)
        logged = log_records(stack.log_path)
    assert decision_ids(fake.events()) == decision_ids(logged)


# --- 2. a shipper never dies of an error that isn't a sink error ----------------------------


@pytest.mark.parametrize(
    ("content", "said"),
    [("abc\ndef\n", "line break"), ("\n", "empty: the file must hold the sink's token")],
    ids=["line-break", "emptied"],  # a header value it can't be; a Secret being rewritten
)
async def test_a_token_file_that_cant_be_sent_fails_loudly_and_recovers_once_fixed(
    aiohttp_server: Any,
    tmp_path: Path,
    receiver: tuple[Receiver, Any],  # noqa: F811
    capfd: pytest.CaptureFixture[str],
    content: str,
    said: str,
) -> None:
    fake, server = receiver
    (tmp_path / "token").write_text(content)
    sink = http_sink(f"http://127.0.0.1:{server.port}/logs", tmp_path / "token")
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 5)
        await until(lambda: stack.gateway.shippers[0].stats["failing"] == 1)
        await until(lambda: said in capfd.readouterr().err)
        assert stack.gateway.shippers[0].stats["acknowledged"] == 0
        (tmp_path / "token").write_text(fake.token + "\n")  # the Secret is fixed
        await caught_up(stack)
        assert stack.gateway.shippers[0].stats["failing"] == 0
        logged = log_records(stack.log_path)
    shipped = [e["decision_id"] for e in fake.events() if "decision_id" in e]
    assert list(dict.fromkeys(shipped)) == decision_ids(logged)


async def test_an_unexpected_error_while_sending_is_a_sink_failure_retried_not_a_dead_shipper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a sink raises, the batch waits and is sent again."""
    from gateway.audit.shipping.shipper import Shipper
    from gateway.audit.shipping.sinks.file import FileSink

    log = tmp_path / "decisions.log"
    log.write_bytes(b"".join(json.dumps({"seq": n}).encode() + b"\n" for n in range(1, 6)))
    real_send = FileSink.send
    calls = {"n": 0}

    async def flaky(self: FileSink, items: Any) -> int:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ValueError("something nobody expected")
        return await real_send(self, items)

    monkeypatch.setattr(FileSink, "send", flaky)
    config = SinkConfig("copy", "file", path=tmp_path / "copy.jsonl", retry_initial=0.01,
                        retry_max=0.02)  # fmt: skip
    shipper = Shipper(config, log)
    shipper.start()
    try:
        await until(lambda: shipper.acknowledged == 5)
        assert shipper.failures == 2 and not shipper.failing
    finally:
        await shipper.stop(1.0)
    assert [r["seq"] for r in log_records(tmp_path / "copy.jsonl")] == [1, 2, 3, 4, 5]


@needs_syslog_ng
async def test_a_ca_file_that_is_not_pem_fails_loudly_and_recovers_once_fixed(
    aiohttp_server: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The CA file is broken after the config was read (a remounted Secret): the
    shipper must say so and keep trying, not die with a traceback."""
    server = start_syslog_ng(tmp_path / "syslog-ng")
    try:
        ca = tmp_path / "ca.pem"
        ca.write_text("not a certificate\n")
        sink = SinkConfig("siem", "syslog", "ocsf", address=f"127.0.0.1:{server.tls_port}",
                          tls=SinkTls(ca_file=ca), timeout=2.0, retry_initial=0.05,
                          retry_max=0.2)  # fmt: skip
        async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
            await traffic(stack, 5)
            await until(lambda: stack.gateway.shippers[0].stats["failing"] == 1)
            err: list[str] = []
            await until(lambda: logged_line(capfd, err, "tls:"))
            assert "shipper stopped" not in "".join(err)
            ca.write_bytes(server.ca.read_bytes())
            await caught_up(stack)
            logged = log_records(stack.log_path)
        messages = await server.written("tls", decision_ids(logged))
        shipped = [m["metadata"]["uid"] for msgid, m in messages if msgid != "chain_head"]
        assert list(dict.fromkeys(shipped)) == decision_ids(logged)
    finally:
        server.stop()


def test_a_ca_file_that_is_not_pem_is_refused_at_config_time_with_its_key(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    sink = {"kind": "syslog", "address": "h:6514", "tls": {"ca_file": "ca.pem"}}
    data = {"auth": False, "decision_log": {"path": "d.log", "sinks": [sink]}}
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.tls\.ca_file: .*ca\.pem is not a PEM CA"):
        parse_config(data, tmp_path)


# --- 3. a file sink into the decision log ------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["d.log", "./sub/../d.log", "d.log.head", "d.log.sink-other.cursor", "d.log.1", "link"],
)
def test_a_file_sink_into_the_decision_log_or_its_files_is_refused(
    tmp_path: Path, target: str
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d.log")
    sinks = [{"kind": "file", "path": target}]
    data = {"auth": False, "decision_log": {"path": "d.log", "sinks": sinks}}
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.path: .* is the decision log"):
        parse_config(data, tmp_path)


def test_two_file_sinks_on_one_file_are_refused(tmp_path: Path) -> None:
    sinks = [{"kind": "file", "path": "copy.jsonl", "name": "a"},
             {"kind": "file", "path": "./copy.jsonl", "name": "b"}]  # fmt: skip
    data = {"auth": False, "decision_log": {"path": "d.log", "sinks": sinks}}
    with pytest.raises(ConfigError, match=r"sinks\[1\]\.path: .* is also decision_log.sinks\[0\]"):
        parse_config(data, tmp_path)


def test_a_file_sink_beside_the_log_with_its_own_name_is_accepted(tmp_path: Path) -> None:
    sinks = [{"kind": "file", "path": "copy.jsonl"}]
    data = {"auth": False, "decision_log": {"path": "d.log", "sinks": sinks}}
    assert parse_config(data, tmp_path).decision_log.sinks[0].path == tmp_path / "copy.jsonl"


# --- 6. an unacknowledged syslog batch is resent on a new connection only --------------------


async def test_an_unacknowledged_syslog_batch_is_resent_on_a_new_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resent on the same connection, the receiver would get the batch twice in
    one stream (and part of it, maybe, mid-frame)."""
    from gateway.audit.shipping.sinks.base import SinkError
    from gateway.audit.shipping.sinks.syslog import SyslogSink
    from gateway.audit.tail import LogTail, parse_record

    received: list[bytes] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(b"")
        index = len(received) - 1
        while data := await reader.read(65536):
            received[index] += data
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    log = tmp_path / "decisions.log"
    log.write_bytes(b'{"seq": 1, "decision_id": "d1", "result": {"allow": true}}\n')
    tail = LogTail(log)
    lines = tail.read(10)
    tail.close()
    records = [parse_record(line.raw) or {} for line in lines]
    sink = SyslogSink(SinkConfig("siem", "syslog", address=f"127.0.0.1:{port}", timeout=1.0))
    batch = [sink.encode(record, record) for record in records]
    real = SyslogSink._acknowledged
    failures = {"left": 1}

    async def not_in_time(self: SyslogSink, writer: asyncio.StreamWriter) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise SinkError("not acknowledged in time")
        await real(self, writer)

    monkeypatch.setattr(SyslogSink, "_acknowledged", not_in_time)
    try:
        with pytest.raises(SinkError):
            await sink.send(batch)
        await sink.send(batch)
        await sink.close()
        await until(lambda: len(received) == 2 and all(received))
    finally:
        server.close()
        await server.wait_closed()
    assert received == [batch[0], batch[0]]  # one copy per connection


# --- 9. settings that could never work are refused with their key --------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "http://127.0.0.1:99999/logs"}, r"sinks\[0\]\.url: not a valid URL \(Port out"),
        ({"url": "http://[::1/logs"}, r"sinks\[0\]\.url: not a valid URL \(Invalid IPv6"),
        ({"url": "http://h:0/logs"}, r"sinks\[0\]\.url: port 0"),
        ({"url": "http://h/logs", "timeout": float("nan")}, r"sinks\[0\]\.timeout: must be a"),
        ({"url": "http://h/logs", "timeout": float("inf")}, r"sinks\[0\]\.timeout: must be a"),
        ({"url": "http://h/logs", "retry_max": float("nan")}, r"sinks\[0\]\.retry_max: must be"),
    ],
)
def test_impossible_http_sink_settings_are_one_line_config_errors(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    sinks = [{"kind": "http", **options}]
    data = {"auth": False, "decision_log": {"path": "d.log", "sinks": sinks}}
    with pytest.raises(ConfigError, match=message) as raised:
        parse_config(data, tmp_path)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://splunkuser:P4ssw0rd-SECRET@siem.example:8088/services/collector/event",
        "https://P4ssw0rd-SECRET@siem.example/logs",  # a token as the user name
        "http://:P4ssw0rd-SECRET@siem.example/logs",
        "http://user:P4ss/w0rd-SECRET@siem.example/logs",  # an unencoded "/": not a port
    ],
)
def test_credentials_in_a_sink_url_are_refused_at_config_time_without_echoing_them(
    tmp_path: Path, url: str
) -> None:
    """``http://user:pass@host``: the gateway used them (Basic auth) and printed
    the url whole in its error lines. A secret goes in ``token_file``."""
    data = {
        "auth": False,
        "decision_log": {"path": "d.log", "sinks": [{"kind": "http", "url": url}]},
    }
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.url: holds credentials.*token_file"):
        parse_config(data, tmp_path)
    with pytest.raises(ConfigError) as raised:
        parse_config(data, tmp_path)
    assert "P4ss" not in str(raised.value) and "\n" not in str(raised.value)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    user=st.text(st.characters(codec="ascii", exclude_characters="?#@\"'<> \t\r\n\f\v")),
    password=st.text(
        st.characters(codec="ascii", exclude_characters="?#@\"'<> \t\r\n\f\v"), min_size=1
    ),
)
def test_an_error_line_never_shows_a_urls_userinfo(user: str, password: str) -> None:
    from gateway.audit.shipping.settings import without_userinfo

    line = f"siem: Cannot connect to https://{user}:{password}@siem.example:8088/logs?x=@ (refused)"
    assert without_userinfo(line) == (
        "siem: Cannot connect to https://***@siem.example:8088/logs?x=@ (refused)"
    )


async def test_a_sink_url_with_credentials_never_prints_them_while_failing(
    aiohttp_server: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A sink made without the config's check (its settings handed over as they
    are) and a receiver that is down: the error lines name the url without them."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://splunkuser:P4ssw0rd-SECRET@127.0.0.1:{port}/logs"
    sink = SinkConfig("siem", "http", url=url, timeout=0.5, retry_initial=0.05, retry_max=0.1)
    seen: list[str] = []
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 3)
        await until(lambda: stack.gateway.shippers[0].stats["failing"] == 1)
        await until(lambda: logged_line(capfd, seen, "not acknowledged"))
    logged_line(capfd, seen, "")
    assert f"http://***@127.0.0.1:{port}/logs" in "".join(seen)
    assert "P4ssw0rd" not in "".join(seen)


# --- 4. logrotate's create: the writer goes on in the old file until SIGUSR1 ----------------


async def test_logrotate_create_events_written_to_the_old_file_before_sigusr1_are_shipped(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """``mv decisions.log decisions.log.1; touch decisions.log`` (logrotate's
    ``create``), requests, then SIGUSR1: the requests before the signal go into
    the old file, after the new one has appeared at the path."""
    sink = SinkConfig("copy", "file", path=tmp_path / "copy.jsonl")
    log = tmp_path / "decisions.log"
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 5)
        await caught_up(stack)
        log.rename(tmp_path / "decisions.log.1")
        log.touch()
        await traffic(stack, 5)  # into the old inode
        await asyncio.sleep(0.5)  # the shipper has read all of it and sees a new file
        await traffic(stack, 5)  # still into the old inode
        await asyncio.sleep(0.5)
        os.kill(os.getpid(), signal.SIGUSR1)  # the gateway reopens the path
        await until(lambda: log.stat().st_size > 0)
        await traffic(stack, 5)
        await caught_up(stack)
        stats = stack.gateway.shippers[0].stats
        logged = log_records(tmp_path / "decisions.log.1") + log_records(log)
        # An interval signature (every 0.5 s here) may come after caught_up looked
        # (it counts events): wait until the copy holds what the log held when read.
        copy = tmp_path / "copy.jsonl"
        await until(lambda: len(log_records(copy)) >= len(logged))
    assert len(decision_ids(logged)) == 20
    copied = log_records(copy)
    assert decision_ids(copied) == decision_ids(logged)  # each once, in order
    assert [r["seq"] for r in copied[: len(logged)]] == [r["seq"] for r in logged]
    assert stats["lag_events"] == 0 and stats["discontinuities"] == 0


def test_a_rotated_file_without_a_seal_is_left_only_after_a_grace_once_the_new_has_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer that died without its rotate seal: the tail waits for the old file
    to stay unchanged and the new one to have content, and ships the old file's
    late lines first."""
    import gateway.audit.tail as tail_module

    monkeypatch.setattr(tail_module, "ROTATION_GRACE", 0.3)
    # The tail's own clock, moved by the test: on the real one, the test process
    # descheduled for 0.3 s between two reads let the grace run out early.
    now = [1000.0]
    monkeypatch.setattr(tail_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    log = tmp_path / "decisions.log"
    log.write_bytes(b'{"seq": 1}\n')
    tail = tail_module.LogTail(log)
    seqs: list[int] = []

    def drain() -> None:
        while batch := tail.read(10):
            seqs.extend(json.loads(line.raw)["seq"] for line in batch)
            tail.advance(batch[-1].end)

    drain()
    log.rename(tmp_path / "decisions.log.1")
    log.touch()
    drain()
    with (tmp_path / "decisions.log.1").open("ab") as old:
        old.write(b'{"seq": 2}\n')  # the writer is still at it
    drain()
    # A new writer: its start record links to the old file's last line (its .head).
    start = {"type": "chain_signature", "reason": "start", "seq": 2,
             "head": line_hash(b'{"seq": 2}')}  # fmt: skip
    log.write_bytes(json.dumps(start).encode() + b'\n{"seq": 3}\n')
    drain()
    assert seqs == [1, 2]  # not before the grace
    now[0] += 0.4
    drain()  # the old file's grace starts when the tail sees it unchanged
    now[0] += 0.4
    drain()
    assert seqs == [1, 2, 2, 3] and tail.discontinuities == 0
    with (tmp_path / "decisions.log.1").open("ab") as old:
        old.write(b'{"seq": 99}\n')  # a writer that was not dead after all: said loudly
    drain()
    tail.close()
    assert tail.discontinuities == 1
    assert "were written to the rotated file" in caplog.text


# --- 5. a log truncated in place (copytruncate) ---------------------------------------------


async def test_copytruncate_is_noticed_shipped_from_the_start_and_counted(
    aiohttp_server: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    sink = SinkConfig("copy", "file", path=tmp_path / "copy.jsonl")
    log = tmp_path / "decisions.log"
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 6)
        await caught_up(stack)
        before = log_records(log)
        (tmp_path / "decisions.log.1").write_bytes(log.read_bytes())  # copytruncate: copy,
        os.truncate(log, 0)  # then cut in place; the writer appends from byte 0 again
        await traffic(stack, 2)
        await caught_up(stack)
        stats = stack.gateway.shippers[0].stats
        metrics = stack.gateway.metrics.render().decode()
        err: list[str] = []
        await until(lambda: logged_line(capfd, err, "was truncated in place"))
        after = log_records(log)
    copied = log_records(tmp_path / "copy.jsonl")
    assert not any("damaged" in r for r in copied)
    assert decision_ids(copied) == decision_ids(before) + decision_ids(after)
    assert len(decision_ids(after)) == 2
    assert stats["discontinuities"] == 1
    assert 'portcullis_sink_log_discontinuities_total{sink="copy"} 1.0' in metrics


def log_with_cursor_after_its_first_line(tmp_path: Path) -> Path:
    """A two-line log and sink "copy"'s cursor right after its first line."""
    from gateway.audit.tail import LogTail

    log = tmp_path / "decisions.log"
    log.write_bytes(b'{"seq": 1}\n{"seq": 2}\n')
    tail = LogTail(log)
    lines = tail.read(10)
    tail.close()
    (tmp_path / "decisions.log.sink-copy.cursor").write_text(json.dumps({
        "inode": lines[0].end.inode, "offset": lines[0].end.offset, "seq": 1,
        "hash": lines[0].digest,
    }))  # fmt: skip
    return log


def test_a_cursor_that_does_not_match_its_line_restarts_the_file_not_mid_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log was cut and rewritten while nothing followed it: the cursor's offset
    lands mid-line in the new content. Shipped from the start, never half a line."""
    from gateway.audit.shipping.shipper import load_shippers

    log = log_with_cursor_after_its_first_line(tmp_path)
    with log.open("r+b") as file:  # same inode, other content, longer than the cursor
        file.truncate(0)
        file.write(b'{"seq": 7, "pad": "xxxxxxxx"}\n{"seq": 8}\n')
    sink = SinkConfig("copy", "file", path=tmp_path / "copy.jsonl")
    shipper = load_shippers((sink,), log)[0]
    assert shipper._tail is not None
    batch = shipper._tail.read(10)
    shipper.close()
    assert [json.loads(line.raw) for line in batch] == [{"seq": 7, "pad": "xxxxxxxx"}, {"seq": 8}]
    assert "is not the one the shipping cursor recorded" in caplog.text
    assert shipper.report()["discontinuities"] == 1


def test_a_cursor_that_matches_its_line_resumes_right_after_it(tmp_path: Path) -> None:
    from gateway.audit.shipping.shipper import load_shippers

    log = log_with_cursor_after_its_first_line(tmp_path)
    shipper = load_shippers((SinkConfig("copy", "file", path=tmp_path / "c.jsonl"),), log)[0]
    assert shipper._tail is not None
    assert [json.loads(line.raw) for line in shipper._tail.read(10)] == [{"seq": 2}]
    assert shipper.report()["discontinuities"] == 0
    shipper.close()


@pytest.mark.parametrize(
    "document",
    [
        '{"inode": 1e400, "offset": 5, "seq": 1, "hash": ""}',
        '{"inode": 7, "offset": -5, "seq": 1, "hash": ""}',
        '{"inode": 7, "offset": 5, "seq": 1.5, "hash": ""}',
        '{"inode": 7, "offset": "5", "seq": 1, "hash": ""}',
        '{"inode": 7, "offset": true, "seq": 1, "hash": ""}',
        '{"inode": 7, "offset": 5.5, "seq": 1, "hash": ""}',
        '{"inode": 7, "offset": 5, "hash": ""}',
        "[1, 2, 3]",
        "null",
        "[" * 5000 + "]" * 5000,  # deeper than the JSON parser recurses
    ],
    ids=[
        "huge",
        "negative-offset",
        "float-seq",
        "string",
        "bool",
        "float",
        "no-seq",
        "list",
        "null",
        "nested-deeper-than-the-parser-goes",
    ],
)
def test_a_tampered_cursor_is_reported_damaged_and_lets_go_of_its_lock(
    tmp_path: Path, document: str
) -> None:
    """A cursor edited by hand or by an attacker on the host: the documented
    "is damaged ... remove it" error every time (a huge number used to escape as an
    OverflowError, a negative offset to fail forever on each read with EINVAL),
    and the file's lock released, so a retry says the same instead of "busy"."""
    from gateway.audit.shipping.cursor import Cursor, CursorBusy, CursorError

    log = tmp_path / "decisions.log"
    (tmp_path / "decisions.log.sink-copy.cursor").write_text(document)
    for _ in range(2):
        with pytest.raises(CursorError, match=r"sink-copy\.cursor is damaged") as caught:
            Cursor(log, "copy").load()
        assert not isinstance(caught.value, CursorBusy)


def test_a_cursor_keeps_any_integer_seq_it_acknowledged(tmp_path: Path) -> None:
    """A hand-edited line with "seq": -1 is shipped and acknowledged like any other;
    its seq in the cursor must not make the next start refuse the cursor as damaged
    (one record never stops the log behind it)."""
    from gateway.audit.shipping.cursor import Cursor, CursorState
    from gateway.audit.tail import Position

    cursor = Cursor(tmp_path / "decisions.log", "copy")
    assert cursor.load() is None
    cursor.save(CursorState(Position(7, 120), -1, "ab" * 32))
    cursor.close()
    again = Cursor(tmp_path / "decisions.log", "copy")
    assert again.load() == CursorState(Position(7, 120), -1, "ab" * 32)
    again.close()


@pytest.mark.parametrize(
    ("name", "says"),
    [
        # Not named as a rotation: never looked at, the cursor's file is gone.
        ("decisions.log.1.gz", "the file the shipping cursor points into (inode"),
        # Named as one (a later rotation got the inode): looked at, and refused.
        ("decisions.log.2", "decisions.log.2 has the inode the shipping cursor points into"),
    ],
)
def test_a_cursor_whose_inode_another_file_now_has_never_ships_that_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, says: str
) -> None:
    """The shipper stopped inside a rotated file; logrotate then compressed and
    deleted it, and the .gz beside the log got the freed inode (ext4 and tmpfs
    reuse them at once). The .gz is not the log: nothing of it reaches the SIEM
    (it used to arrive as hundreds of High-severity damaged records); the log is
    shipped from its start."""
    import gzip

    from gateway.audit.shipping.shipper import load_shippers

    log = log_with_cursor_after_its_first_line(tmp_path)
    log.write_bytes(b'{"seq": 3}\n{"seq": 4}\n')  # the log after rotation
    archive = tmp_path / name
    archive.write_bytes(gzip.compress(b'{"seq": 1}\n{"seq": 2}\n' * 50))
    cursor = tmp_path / "decisions.log.sink-copy.cursor"
    position = json.loads(cursor.read_text())
    cursor.write_text(json.dumps({**position, "inode": archive.stat().st_ino}))
    shipper = load_shippers((SinkConfig("copy", "file", path=tmp_path / "copy.jsonl"),), log)[0]
    assert shipper._tail is not None
    batch = shipper._tail.read(10)
    shipper.close()
    assert [json.loads(line.raw) for line in batch] == [{"seq": 3}, {"seq": 4}]
    assert says in caplog.text


# --- 7. a shadow policy's divergence is not an access decision ------------------------------

SHADOW_RECORD: dict[str, Any] = {
    "decision_id": "shadow-1",
    "timestamp": "2026-12-03T07:00:00.123456789Z",
    "path": "shadow/portcullis/gateway/decision",
    "input": {
        "attributes": {
            "request": {
                "http": {"method": "GET", "host": "gw:8080", "path": "/wms/stock", "id": "r1"}
            }
        },
        "identity": {"subject": "alice"},
    },
    "result": {
        "divergence": "allow_to_deny",
        "live": {"allow": True, "reasons": []},
        "shadow": {"allow": False, "reasons": ["candidate: no"]},
    },
    "labels": {
        "shadow": True,
        "shadow_policy": "policies/candidate",
        "app": "wms",
        "live_decision_id": "live-1",
        "id": "gw-1",
    },
    "bundles": {"portcullis": {"revision": "cand-2"}},
    "seq": 7,
    "prev_hash": "ab" * 32,
}


def test_a_shadow_divergence_is_not_shipped_as_an_access_denial() -> None:
    from gateway.audit.shipping.formats import formatter
    from gateway.audit.shipping.sinks.syslog import INFO, SyslogSink

    digest = "cd" * 32
    ocsf = formatter("ocsf")(SHADOW_RECORD, digest)
    assert ocsf["class_uid"] == 0 and ocsf["activity_name"] == "shadow_divergence"
    for key in ("action", "action_id", "disposition", "disposition_id"):
        assert key not in ocsf
    assert "shadow" in ocsf["metadata"]["labels"] and ocsf["unmapped"]["shadow"] is True
    divergence = ocsf["unmapped"]["divergence"]
    assert (divergence["live"]["allow"], divergence["shadow"]["allow"]) == (True, False)
    assert divergence["live_decision_id"] == "live-1"
    assert ocsf["metadata"]["uid"] == "shadow-1" and ocsf["metadata"]["sequence"] == 7

    ecs = formatter("ecs")(SHADOW_RECORD, digest)
    assert (ecs["event"]["kind"], ecs["event"]["type"]) == ("event", ["info"])
    assert "outcome" not in ecs["event"] and ecs["labels"] == {"shadow": "true"}
    assert ecs["portcullis"]["divergence"]["shadow"]["allow"] is False
    assert ecs["@timestamp"] == SHADOW_RECORD["timestamp"]

    sink = SyslogSink(SinkConfig("siem", "syslog", "ocsf", address="127.0.0.1:514"))
    frame = sink.encode(SHADOW_RECORD, ocsf).decode("utf-8", "replace")
    pri = int(frame.split("<", 1)[1].split(">", 1)[0])
    assert pri % 8 == INFO and " shadow_divergence [" in frame


# --- 8. a damaged line keeps its text and says what it is, in every format --------------------


async def ship_in_every_format(log: Path, tmp_path: Path, records: int) -> list[Shipper]:
    """A file shipper of ``log`` per format (opa, ocsf, ecs: tmp_path/<format>.jsonl),
    run until each has acknowledged ``records``; the stopped shippers."""
    from gateway.audit.shipping.shipper import Shipper

    shippers = [Shipper(SinkConfig(form, "file", form, path=tmp_path / f"{form}.jsonl"), log)
                for form in ("opa", "ocsf", "ecs")]  # fmt: skip
    for shipper in shippers:
        shipper.start()
    try:
        await until(lambda: all(s.acknowledged == records for s in shippers))
    finally:
        for shipper in shippers:
            await shipper.stop(1.0)
    return shippers


async def test_a_damaged_line_is_shipped_as_damaged_with_its_text_in_every_format(
    tmp_path: Path,
) -> None:
    from gateway.audit.shipping.formats.fields import DAMAGED_MAX_CHARS

    log = tmp_path / "decisions.log"
    huge = "y" * (DAMAGED_MAX_CHARS + 500)
    log.write_bytes(b'{"seq": 1, "decision_id": "a"}\n{"seq": 2, "decisi\n' + huge.encode()
                    + b'\n{"seq": 3, "decision_id": "c"}\n')  # fmt: skip
    await ship_in_every_format(log, tmp_path, 4)
    opa = log_records(tmp_path / "opa.jsonl")
    assert opa[1]["damaged"] == '{"seq": 2, "decisi' and opa[1]["damaged_truncated"] is False
    assert len(opa[2]["damaged"]) == DAMAGED_MAX_CHARS and opa[2]["damaged_truncated"] is True
    assert opa[2]["damaged_bytes"] == len(huge)
    ocsf = log_records(tmp_path / "ocsf.jsonl")[1:3]
    for event in ocsf:
        assert (event["class_uid"], event["activity_name"]) == (0, "damaged_record")
        assert event["severity"] == "High" and event["time"] > 0
        assert "disposition" not in event and "action" not in event
    assert ocsf[0]["raw_data"] == '{"seq": 2, "decisi'
    assert ocsf[1]["unmapped"]["damaged"] == {"bytes": len(huge), "truncated": True}
    ecs = log_records(tmp_path / "ecs.jsonl")[1:3]
    for document in ecs:
        assert document["event"]["kind"] == "pipeline_error" and document["@timestamp"]
        assert "denied" not in document["event"]["type"]
    assert ecs[0]["event"]["original"] == '{"seq": 2, "decisi'


async def test_a_record_too_deep_to_encode_ships_as_damaged_and_never_stops_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON the parser reads but the encoder refuses (a policy's step_up nested
    past orjson's 254 levels; the writer's stdlib fallback can write such a
    line): ocsf and ecs carry step_up, so in each the record ships as a damaged
    one with its text and its decision_id and seq; opa ships the line as
    written (valid JSON, the chain_hash added). The records after it ship."""

    deep = "[" * 300 + "]" * 300
    log = tmp_path / "decisions.log"
    log.write_bytes(b'{"seq": 1, "decision_id": "a"}\n'
                    + f'{{"seq": 2, "decision_id": "b", "result": {{"step_up": {deep}}}}}\n'
                    .encode()
                    + b'{"seq": 3, "decision_id": "c"}\n')  # fmt: skip
    shippers = await ship_in_every_format(log, tmp_path, 3)
    assert all(s.report()["failing"] == 0.0 and s.report()["acked_seq"] == 3 for s in shippers)
    opa = log_records(tmp_path / "opa.jsonl")
    assert [r.get("seq") for r in opa] == [1, 2, 3] and opa[1]["decision_id"] == "b"
    assert "damaged" not in opa[1]
    assert opa[1]["chain_hash"] == line_hash(log.read_bytes().split(b"\n")[1])
    assert json.dumps(opa[1]["result"]["step_up"]) == "[" * 300 + "]" * 300
    ocsf = log_records(tmp_path / "ocsf.jsonl")[1]
    assert ocsf["activity_name"] == "damaged_record"
    assert (ocsf["metadata"]["uid"], ocsf["metadata"]["sequence"]) == ("b", 2)
    ecs = log_records(tmp_path / "ecs.jsonl")[1]
    assert ecs["event"]["kind"] == "pipeline_error"
    assert (ecs["event"]["id"], ecs["event"]["sequence"]) == ("b", 2)
    assert "can't be shipped in ocsf" in caplog.text


async def test_a_request_that_was_not_utf8_ships_as_its_decision_not_as_damaged(
    tmp_path: Path,
) -> None:
    """Bytes of a request that were not UTF-8 reach the log as lone surrogates (the
    writer's fallback writes them as \\udcXX escapes, which orjson refuses to
    read or write). The decision still ships as itself, the bytes as U+FFFD: an
    attacker's odd header must not turn their denied request into a record the
    SIEM can't attribute."""
    from gateway.audit.writer import _forgiving_line

    record = {
        "decision_id": "odd-1", "timestamp": "2026-12-03T07:00:00.123456789Z",
        "path": "portcullis/gateway/decision", "labels": {"app": "pos"},
        "input": {"attributes": {"request": {"http": {
            "method": "GET", "path": "/pos/\udcff", "headers": {"x-odd": "a\udc80b"}}}},
            "identity": {"subject": "mallory"}},
        "result": {"allow": False, "reasons": ["not in group"], "http_status": 403},
        "seq": 1, "prev_hash": "0" * 64,
    }  # fmt: skip
    line = _forgiving_line(record)
    assert b"\\udcff" in line  # as the writer writes it
    log = tmp_path / "decisions.log"
    log.write_bytes(line + b"\n")
    await ship_in_every_format(log, tmp_path, 1)
    opa = log_records(tmp_path / "opa.jsonl")[0]
    assert opa["decision_id"] == "odd-1" and opa["seq"] == 1
    assert opa["input"]["attributes"]["request"]["http"]["headers"]["x-odd"] == "a\ufffdb"
    ocsf = log_records(tmp_path / "ocsf.jsonl")[0]
    assert (ocsf["action"], ocsf["actor"]["user"]["uid"]) == ("Denied", "mallory")
    assert ocsf["http_request"]["url"]["path"] == "/pos/\ufffd"
    ecs = log_records(tmp_path / "ecs.jsonl")[0]
    assert ecs["event"]["type"] == ["access", "denied"] and ecs["user"]["id"] == "mallory"


async def test_two_parameters_differing_only_in_undecodable_bytes_both_reach_the_siem(
    tmp_path: Path,
) -> None:
    """An attacker's pair of query parameters whose names differ only in bytes that
    were not UTF-8 (``a\\xff`` and ``a\\xfe``): shown as U+FFFD both names would be
    one key, and the SIEM would get one of the two values. Both arrive; the second
    is named with its bytes."""
    from gateway.audit.writer import _forgiving_line

    record = {
        "decision_id": "odd-2", "timestamp": "2026-12-03T07:00:00.123456789Z",
        "path": "portcullis/gateway/decision", "labels": {"app": "pos"},
        "input": {"attributes": {"request": {"http": {"method": "GET", "path": "/pos/x"}}},
                  "parsed_query": {"a" + chr(0xDCFF): ["decoy"], "a" + chr(0xDCFE): ["payload"]},
                  "identity": {"subject": "mallory"}},
        "result": {"allow": False, "reasons": ["not in group"], "http_status": 403},
        "seq": 1, "prev_hash": "0" * 64,
    }  # fmt: skip
    log = tmp_path / "decisions.log"
    log.write_bytes(_forgiving_line(record) + b"\n")
    await ship_in_every_format(log, tmp_path, 1)
    opa = log_records(tmp_path / "opa.jsonl")[0]
    assert opa["input"]["parsed_query"] == {"a\ufffd": ["decoy"], "a\\xfe": ["payload"]}


_KEY_TEXT = st.text(
    alphabet=["a", "\\", "x", "f", "e", "\ufffd", "\udcff", "\udcfe", "\ud800"], max_size=4
)


@settings(max_examples=400, derandomize=True, deadline=None, database=None)
@given(st.dictionaries(_KEY_TEXT, st.integers(0, 1000), max_size=6))
def test_replacing_undecodable_bytes_never_merges_two_keys(document: dict[str, int]) -> None:
    """Whatever keys differ only in surrogates, U+FFFD or their spelled bytes: as
    many keys come out as went in, every value with them, all encodable as UTF-8."""
    from gateway.audit.shipping.formats.fields import without_surrogates

    clean = without_surrogates({"q": document})["q"]
    assert len(clean) == len(document)
    assert sorted(clean.values()) == sorted(document.values())
    assert all(not any("\ud800" <= c <= "\udfff" for c in key) for key in clean)
    orjson.dumps(clean)


async def test_a_line_nested_deeper_than_any_parser_goes_is_damaged_not_a_crash(
    tmp_path: Path,
) -> None:
    """orjson refuses it and stdlib json raises RecursionError: `audit verify` and
    the shipper both take it as a damaged line and go on."""
    from gateway.audit.reader import verify_log
    from gateway.audit.shipping.shipper import Shipper

    log = tmp_path / "decisions.log"
    log.write_bytes(b'{"seq": 1}\n' + b"[" * 100_000 + b"\n" + b'{"seq": 3}\n')
    result = verify_log([log], {})
    assert [problem.kind for problem in result.problems][:1] == ["damaged"]
    shipper = Shipper(SinkConfig("copy", "file", path=tmp_path / "copy.jsonl"), log)
    shipper.start()
    try:
        await until(lambda: shipper.acknowledged == 3)
    finally:
        await shipper.stop(1.0)
    copy = log_records(tmp_path / "copy.jsonl")
    assert [r.get("seq") for r in copy] == [1, None, 3] and copy[1]["damaged_bytes"] == 100_000


async def test_a_log_line_of_hundreds_of_megabytes_ships_once_as_damaged_never_read_whole(
    tmp_path: Path,
) -> None:
    """The tail took a line longer than a read whole (file.readline()): a line of
    300 MB cost the shipping process its bytes and their copies, and under a
    memory limit it died and started again at the same line, forever, stopping
    every sink. It ships once, as a damaged record of its first characters with
    its true length and chain hash; the shipper's memory stays a few times
    MAX_LINE_BYTES; the line after it ships, and a restart goes on after it."""
    from gateway.audit.shipping.formats.fields import DAMAGED_MAX_CHARS
    from gateway.audit.shipping.shipper import Shipper

    log = tmp_path / "decisions.log"
    log.write_bytes(b'{"seq": 1, "decision_id": "a"}\n')
    size = 300_000_000
    digest = append_line_of(log, size)
    config = SinkConfig("copy", "file", path=tmp_path / "copy.jsonl")
    shipper = Shipper(config, log)
    tracemalloc.start()
    shipper.start()
    try:
        await until(lambda: shipper.acknowledged == 2, timeout=30.0)
    finally:
        await shipper.stop(1.0)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 3 * MAX_LINE_BYTES < size / 5
    with log.open("ab") as file:
        file.write(b'{"seq": 3, "decision_id": "c"}\n')
    restarted = Shipper(config, log)  # from the cursor saved after the long line
    restarted.start()
    try:
        await until(lambda: restarted.acknowledged == 1)
    finally:
        await restarted.stop(1.0)
    copy = log_records(tmp_path / "copy.jsonl")
    assert [r.get("decision_id") for r in copy] == ["a", None, "c"]
    assert copy[1]["damaged"] == '{"decision_id":"big","pad":"' + "x" * (DAMAGED_MAX_CHARS - 28)
    assert copy[1]["damaged_bytes"] == size and copy[1]["damaged_truncated"] is True
    assert copy[1]["chain_hash"] == digest
    assert copy[2]["chain_hash"] == line_hash(b'{"seq": 3, "decision_id": "c"}')


async def test_a_batch_ending_in_a_damaged_line_still_acknowledges_its_last_seq(
    tmp_path: Path,
) -> None:
    from gateway.audit.shipping.shipper import Shipper

    log = tmp_path / "decisions.log"
    log.write_bytes(b'{"seq": 1}\nnot json\n{"seq": 3}\n{"seq": 4}\nnot json either\n')
    config = SinkConfig("copy", "file", path=tmp_path / "copy.jsonl", batch_max_events=3)
    shipper = Shipper(config, log)
    shipper.start()
    try:
        await until(lambda: shipper.acknowledged == 5)
    finally:
        await shipper.stop(1.0)
    assert shipper.report()["acked_seq"] == 4  # the batch [seq 4, damaged] counts seq 4


def test_a_damaged_record_keeps_only_the_chain_fields_of_the_writers_types() -> None:
    """What the line parsed to is the log's, not the writer's, if hand-edited: a
    seq that is no integer, or one orjson can't write (the stdlib parser reads
    any size), would mislead the SIEM or make the damaged record unshippable."""
    from gateway.audit.shipping.formats.fields import damaged_record

    def kept(record: dict[str, Any]) -> dict[str, Any]:
        damaged = damaged_record(b"{}", "2026-12-03T07:00:00.5Z", record)
        return {k: v for k, v in damaged.items() if k in ("decision_id", "seq", "prev_hash")}

    assert kept({"decision_id": "d", "seq": 0, "prev_hash": "ab"}) == {
        "decision_id": "d", "seq": 0, "prev_hash": "ab"}  # fmt: skip
    for seq in (True, 2.0, "2", -1, 2**63, 2**70, None):
        assert kept({"decision_id": 7, "seq": seq, "prev_hash": ["ab"]}) == {}
    assert kept({"decision_id": "", "prev_hash": ""}) == {}
    orjson.dumps(damaged_record(b"{}", "x", {"seq": 2**63 - 1}))


@pytest.mark.parametrize("form", ["opa", "ocsf", "ecs"])
def test_a_line_with_the_damaged_records_keys_is_a_record_not_a_damaged_one(form: str) -> None:
    """A damaged record is the shipper's own type, not a shape of keys: a line of
    the log that holds "damaged" (hand-edited: a record's top-level keys are the
    writer's) ships as the record it is, and a damaged record with a seq as damaged."""
    from gateway.audit.shipping.formats import formatter
    from gateway.audit.shipping.formats.fields import damaged_record, is_damaged
    from gateway.audit.tail import parse_record

    line = b'{"damaged": "x", "damaged_bytes": 1, "read_at": "2026-12-03T07:00:00.5Z"}'
    record = parse_record(line)
    assert record is not None and not is_damaged(record)
    shipped = formatter(form)(record, "cd" * 32)
    assert "damaged_record" not in json.dumps(shipped)
    damaged = damaged_record(line, "2026-12-03T07:00:00.5Z", {"seq": 5, "decision_id": "e"})
    assert is_damaged(damaged)
    assert "pipeline_error" in json.dumps(formatter("ecs")(damaged, "cd" * 32))


def test_a_damaged_record_keeps_its_seq_and_decision_id_in_syslog_structured_data() -> None:
    """A record a format can't express carries its seq and decision_id where a
    record's go, in the SD-ELEMENT too; a line that is not JSON carries neither
    (it used to send seq="0" and decision_id="", which read as a record's)."""
    from gateway.audit.shipping.formats import formatter
    from gateway.audit.shipping.formats.fields import damaged_record
    from gateway.audit.shipping.sinks.syslog import SyslogSink

    sink = SyslogSink(SinkConfig("siem", "syslog", "ocsf", address="127.0.0.1:514"))
    record = {"decision_id": 'a"]b', "seq": 42, "prev_hash": "ab" * 32}
    for damaged, element in (
        (damaged_record(b"{...}", "2026-12-03T07:00:00.5Z", record),
         '[portcullis@32473 seq="42" decision_id="a\\"\\]b"]'),
        (damaged_record(b"not json", "2026-12-03T07:00:00.5Z"), "[portcullis@32473]"),
    ):  # fmt: skip
        frame = sink.encode(damaged, formatter("ocsf")(damaged, "cd" * 32)).decode()
        assert f" damaged {element} \ufeff" in frame, frame


async def test_a_line_that_is_not_json_still_ships_with_no_seq_beside_one_that_parsed(
    tmp_path: Path,
) -> None:
    """Between the records, a line that is not JSON (no seq: 0 would read as one)
    and a record too deep to encode (its seq: the SIEM sees no gap; opa ships
    that one as written); the shipper counts the latter's seq as acknowledged."""
    deep = "[" * 300 + "]" * 300
    log = tmp_path / "decisions.log"
    log.write_bytes(b'{"seq": 1, "decision_id": "a"}\nnot json\n'
                    + f'{{"seq": 2, "decision_id": "b", "result": {{"step_up": {deep}}}}}\n'
                    .encode())  # fmt: skip
    shippers = await ship_in_every_format(log, tmp_path, 3)
    assert all(s.report()["acked_seq"] == 2 for s in shippers)
    opa = log_records(tmp_path / "opa.jsonl")
    assert [(r.get("seq"), r.get("decision_id"), "damaged" in r) for r in opa] == [
        (1, "a", False), (None, None, True), (2, "b", False)]  # fmt: skip
    ocsf = log_records(tmp_path / "ocsf.jsonl")
    assert "sequence" not in ocsf[1]["metadata"] and ocsf[2]["metadata"]["sequence"] == 2
    assert ocsf[1]["unmapped"]["portcullis"] == {"chain_hash": line_hash(b"not json")}
    ecs = log_records(tmp_path / "ecs.jsonl")
    assert "sequence" not in ecs[1]["event"] and "seq" not in ecs[1]["portcullis"]
    assert ecs[2]["portcullis"]["seq"] == 2 and ecs[2]["event"]["sequence"] == 2


def test_a_chain_head_and_a_damaged_line_name_the_product_version() -> None:
    """They carry no labels; the SIEM's product.version was "" for them (beside
    "0.1.0" on every event), so a search by version lost the anchoring heads."""
    from gateway.audit.shipping.formats import formatter
    from gateway.audit.shipping.formats.fields import damaged_record
    from portcullis import __version__

    head = {"type": "chain_signature", "reason": "interval", "seq": 3, "head": "ab" * 32,
            "signed_at": "2026-12-03T07:00:00.5Z", "kid": "k", "signature": "x"}  # fmt: skip
    for record in (head, damaged_record(b"not json", "2026-12-03T07:00:00.5Z")):
        assert formatter("ocsf")(record, "cd" * 32)["metadata"]["product"]["version"] == __version__
        assert formatter("ecs")(record, "cd" * 32)["observer"]["version"] == __version__


def test_a_damaged_line_is_a_syslog_warning_named_damaged() -> None:
    from gateway.audit.shipping.formats.fields import damaged_record
    from gateway.audit.shipping.sinks.syslog import WARNING, SyslogSink

    record = damaged_record(b"not json", "2026-12-03T07:00:00.5Z")
    sink = SyslogSink(SinkConfig("siem", "syslog", "opa", address="127.0.0.1:514"))
    frame = sink.encode(record, record).decode("utf-8", "replace")
    pri = int(frame.split("<", 1)[1].split(">", 1)[0])
    assert pri % 8 == WARNING
    assert " 2026-12-03T07:00:00.5Z " in frame and " damaged [" in frame
    assert "not json" in frame


# RFC 5424's HEADER and one SD-ELEMENT: PRI VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME
# SP PROCID SP MSGID SP [id param="value"...], values escaping only \\ " ].
_RFC5424 = re.compile(
    r"<[0-9]{1,3}>1 "
    r"(-|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})) "
    r"[!-~]{1,255} [!-~]{1,48} [!-~]{1,128} [!-~]{1,32} "
    r'\[portcullis@32473( [^ =\]"]{1,32}="([^"\\\]]|\\["\\\]])*")+\] ',
    re.ASCII,
)


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(
    stamp=st.one_of(
        st.text(max_size=40),
        st.from_regex(r"2026-12-03T07:00:00(\.[0-9]{1,12})?(Z|[+-]0[0-9]:00)", fullmatch=True),
    ),
    seq=st.one_of(st.integers(0, 10**12), st.text(max_size=20)),
    decision_id=st.text(max_size=20),
)
def test_a_syslog_header_stays_rfc_5424_whatever_the_record_holds(
    stamp: str, seq: Any, decision_id: str
) -> None:
    """A hand-edited or damaged log is the input: a seq like `2"] [evil@1 a="b"` used
    to open a second SD-ELEMENT, and a time with spaces shifted every header field
    after it. Each frame is one valid header and one element; a time RFC 5424
    can't carry is its NILVALUE, one it can keeps its first 6 fractional digits."""
    from gateway.audit.shipping.sinks.syslog import SyslogSink

    sink = SyslogSink(SinkConfig("siem", "syslog", "opa", address="127.0.0.1:514"))
    record = {"decision_id": decision_id, "timestamp": stamp, "seq": seq, "path": "x"}
    frame = sink.encode(record, {"x": 1})
    length, _, message = frame.partition(b" ")
    assert int(length) == len(message)
    header = message.rsplit(b"\xef\xbb\xbf", 1)[0].decode("utf-8")  # the body has none
    if not header.isascii():
        header = header.encode("ascii", "replace").decode()  # non-ASCII values stay inside quotes
    assert _RFC5424.fullmatch(header), header
    written = header.split(" ")[1]
    valid = _STAMP_OK.fullmatch(stamp)
    if valid:
        fraction, zone = valid.group(1) or "", valid.group(2)
        assert written == stamp[:19] + fraction[:7] + zone  # "." and 6 digits at most
    else:
        assert written == "-"


_STAMP_OK = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)


@pytest.mark.parametrize(
    "value", ["", " ", "archive/", "{tmp}"], ids=["empty", "blank", "slash", "dir"]
)
def test_a_file_sink_given_a_directory_is_refused_at_config_time(
    tmp_path: Path, value: str
) -> None:
    """It used to start fine and then fail every write with EISDIR, forever, with
    nothing acknowledged."""
    sink = {"kind": "file", "path": value.format(tmp=tmp_path)}
    data = {"auth": False, "decision_log": {"path": "d.log", "sinks": [sink]}}
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.path: .* is a directory"):
        parse_config(data, tmp_path)
    sink["path"] = "copy.jsonl"
    assert parse_config(data, tmp_path).decision_log.sinks[0].path == tmp_path / "copy.jsonl"


@pytest.mark.parametrize(
    ("content", "said"),
    [("abc\ndef\n", "token holds a line break"), (" \n", "empty: the file must hold")],
    ids=["line-break", "empty"],  # empty: no header, a 401 for every batch, for ever
)
def test_a_token_file_that_cant_be_sent_is_refused_at_config_time_with_its_key(
    tmp_path: Path, content: str, said: str
) -> None:
    (tmp_path / "token").write_text(content)
    sink = {"kind": "http", "url": "http://h/logs", "token_file": "token"}
    data = {"auth": False, "decision_log": {"path": "d.log", "sinks": [sink]}}
    with pytest.raises(ConfigError, match=rf"sinks\[0\]\.token_file: .*{said}"):
        parse_config(data, tmp_path)
    (tmp_path / "token").write_text("abc\n")  # a Secret's trailing newline is fine
    assert parse_config(data, tmp_path).decision_log.sinks[0].token_file == tmp_path / "token"


async def test_an_error_outside_sending_restarts_the_shipper_instead_of_ending_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Reading the log fails once (EIO): the shipper says so, is failing, and
    starts again from where it was, shipping everything once."""
    from gateway.audit.shipping.shipper import Shipper
    from gateway.audit.tail import LogTail

    log = tmp_path / "decisions.log"
    log.write_bytes(b"".join(json.dumps({"seq": n}).encode() + b"\n" for n in range(1, 4)))
    real_read = LogTail.read
    failures = {"left": 1}

    def failing_read(self: LogTail, max_lines: int, max_bytes: int = 1 << 20) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(5, "Input/output error")
        return real_read(self, max_lines, max_bytes)

    monkeypatch.setattr(LogTail, "read", failing_read)
    config = SinkConfig("copy", "file", path=tmp_path / "copy.jsonl", retry_initial=0.05,
                        retry_max=0.1)  # fmt: skip
    shipper = Shipper(config, log)
    shipper.start()
    try:
        await until(lambda: shipper.acknowledged == 3)
    finally:
        await shipper.stop(1.0)
    assert "shipper failed (1 times); it starts again" in caplog.text
    assert [r["seq"] for r in log_records(tmp_path / "copy.jsonl")] == [1, 2, 3]


def test_a_log_cut_and_written_past_the_position_between_two_reads_is_read_from_its_start(
    tmp_path: Path,
) -> None:
    """A sink in a long backoff doesn't look at the log for seconds: cut in place
    and refilled beyond the position meanwhile, it must not ship from mid-line."""
    from gateway.audit.tail import LogTail

    log = tmp_path / "decisions.log"
    log.write_bytes(b'{"seq": 1}\n{"seq": 2}\n')
    tail = LogTail(log)
    batch = tail.read(10)
    tail.advance(batch[-1].end)
    with log.open("r+b") as file:
        file.truncate(0)
        file.write(b'{"seq": 3, "pad": "xxxxxxxxxxxxxxx"}\n{"seq": 4}\n')
    records = [json.loads(line.raw) for line in tail.read(10)]
    tail.close()
    assert records == [{"seq": 3, "pad": "xxxxxxxxxxxxxxx"}, {"seq": 4}]
    assert tail.discontinuities == 1


async def test_a_real_shadow_divergence_is_shipped_as_one_in_ocsf_and_ecs(tmp_path: Path) -> None:
    """The gateway with a shadow policy (tests/test_shadow_mode.py's candidate):
    each divergence it logs reaches the SIEM as a divergence, never as a denial."""
    from gateway.audit.chain import SHADOW_PATH
    from tests.decision_traffic import record_traffic, refunds_candidate
    from tests.test_shadow_mode import shadow_policy, shadow_ready

    candidate = refunds_candidate(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    sinks = (SinkConfig("ocsf", "file", "ocsf", path=run / "ocsf.jsonl"),
             SinkConfig("ecs", "file", "ecs", path=run / "ecs.jsonl"))  # fmt: skip
    await record_traffic(run, 300, before=shadow_ready, policy_options=shadow_policy(candidate),
                         **with_sinks(run, *sinks))  # fmt: skip
    shadowed = [r["decision_id"] for r in log_records(run / "decisions.log")
                if r.get("path") == SHADOW_PATH]  # fmt: skip
    assert shadowed, "the traffic made no divergence"
    ocsf = {e["metadata"]["uid"]: e for e in log_records(run / "ocsf.jsonl")}
    ecs = {d["event"].get("id"): d for d in log_records(run / "ecs.jsonl")}
    for decision_id in shadowed:
        event, document = ocsf[decision_id], ecs[decision_id]
        assert event["class_uid"] == 0 and "disposition" not in event
        assert event["unmapped"]["shadow"] is True and event["metadata"]["labels"] == ["shadow"]
        assert event["unmapped"]["divergence"]["kind"] in ("allow-to-deny", "step-up")
        assert document["event"]["type"] == ["info"] and "outcome" not in document["event"]
        assert document["labels"] == {"shadow": "true"}
    live = [e for e in ocsf.values() if e["class_uid"] == 6001]
    assert live and not any(e["metadata"]["uid"] in shadowed for e in live)


# --- 10. a shipper several rotations behind follows the chain, not the newest file ------------


def logrotate(log: Path) -> None:
    """logrotate's numbering with ``create``: .1 -> .2, the log -> .1, a new empty log."""
    for number in (3, 2, 1):
        older = log.with_name(f"{log.name}.{number}")
        if older.exists():
            older.rename(log.with_name(f"{log.name}.{number + 1}"))
    log.rename(log.with_name(f"{log.name}.1"))
    log.touch()


async def test_an_outage_across_two_rotations_ships_the_file_between_them(
    aiohttp_server: Any,
    tmp_path: Path,
    receiver: tuple[Receiver, Any],  # noqa: F811
) -> None:
    """The SIEM down while logrotate ran twice: the shipper finished the oldest
    file and went straight to the log's path, skipping decisions.log.1 whole,
    silently (no discontinuity, no error, lag 0)."""
    fake, server = receiver
    (tmp_path / "token").write_text(fake.token)
    sink = http_sink(f"http://127.0.0.1:{server.port}/logs", tmp_path / "token")
    log = tmp_path / "decisions.log"
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 3)
        await caught_up(stack)
        fake.fail_next = 1_000_000  # the SIEM is down
        for _ in range(2):
            await traffic(stack, 4)
            logrotate(log)
            os.kill(os.getpid(), signal.SIGUSR1)
            await until(lambda: log.stat().st_size > 0)
        await traffic(stack, 4)
        fake.fail_next = 0  # and back
        await caught_up(stack)
        stats = stack.gateway.shippers[0].stats
    files = [log.with_name(f"{log.name}.{n}") for n in (2, 1)] + [log]
    logged = [record for file in files for record in log_records(file)]
    assert [len(decision_ids(log_records(file))) for file in files] == [7, 4, 4]
    assert decision_ids(fake.events()) == decision_ids(logged)  # every one, in order, once
    assert stats["discontinuities"] == 0


async def test_a_rotated_file_deleted_before_it_was_shipped_is_a_discontinuity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The file between two rotations gone (deleted by a too-short retention, or
    compressed) before the shipper reached it: its events can't be shipped, and
    that is said, not passed over."""
    from gateway.audit.tail import LogTail, Position
    from tests.test_decision_log import write_log

    log = tmp_path / "decisions.log"
    runs = []
    for number in range(3):
        await write_log(log, 2)
        runs.append(len(log_records(log)))
        if number < 2:
            logrotate(log)
    oldest = log.with_name(f"{log.name}.2")
    tail = LogTail(log, Position(oldest.stat().st_ino, 0))  # a cursor at its start
    log.with_name(f"{log.name}.1").unlink()
    seqs = []
    while batch := tail.read(100):
        seqs += [json.loads(line.raw).get("seq") for line in batch]
        tail.advance(batch[-1].end)
    assert tail.discontinuities == 1
    assert "no file beside it continues the chain" in caplog.text
    assert len(seqs) == runs[0] + runs[2]  # the oldest and the newest file, nothing twice


async def test_the_cursors_own_file_compressed_away_before_it_was_shipped_is_a_discontinuity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """logrotate's ``compress`` without ``delaycompress``: the file the cursor points
    into is gzip'd and removed while the SIEM was down. Its unshipped events are
    gone from the shipper's reach; that is counted, not only logged."""
    import gzip

    from gateway.audit.tail import LogTail, Position
    from tests.test_decision_log import write_log

    log = tmp_path / "decisions.log"
    await write_log(log, 3)
    first = log.read_bytes().split(b"\n", 1)[0]
    cursor = Position(log.stat().st_ino, len(first) + 1)  # only the first line acknowledged
    logrotate(log)
    rotated = log.with_name(f"{log.name}.1")
    with rotated.open("rb") as plain, gzip.open(f"{rotated}.gz", "wb") as packed:
        packed.write(plain.read())
    rotated.unlink()
    await write_log(log, 2)
    tail = LogTail(log, cursor, line_hash(first))
    seqs = []
    while batch := tail.read(100):
        seqs += [json.loads(line.raw).get("seq") for line in batch]
        tail.advance(batch[-1].end)
    assert tail.discontinuities == 1
    assert "the file the shipping cursor points into" in caplog.text
    assert seqs == [record.get("seq") for record in log_records(log)]


async def test_lag_counts_a_new_chains_events_while_its_sink_is_down(
    aiohttp_server: Any,
    tmp_path: Path,
    receiver: tuple[Receiver, Any],  # noqa: F811
) -> None:
    """The log and its .head moved away (a new chain begins, seq from 1) while the
    SIEM is down: the lag was the writer's seq less the cursor's, the old chain's,
    so 0 while nothing shipped."""
    fake, server = receiver
    (tmp_path / "token").write_text(fake.token)
    sink = http_sink(f"http://127.0.0.1:{server.port}/logs", tmp_path / "token")
    log = tmp_path / "decisions.log"
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 12)
        await caught_up(stack)
        await shut_down(stack)
    (tmp_path / "old").mkdir()
    for name in (log.name, f"{log.name}.head"):
        (tmp_path / name).rename(tmp_path / "old" / name)
    fake.fail_next = 1_000_000  # the SIEM is down
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 8)
        writer = stack.gateway.decision_log
        assert writer is not None

        # Every event of the new chain (its seq 1 to 8) waits: all of them are lag.
        # (The shipping process reports its failing send on its own beat, which may
        # come after the lag is counted: both are waited for.)
        def lagging() -> bool:
            stats = stack.gateway.shippers[0].stats
            return stats["lag_events"] == writer.seq == 8 and stats["failing"] == 1

        await until(lagging)
        assert stack.gateway.shippers[0].stats["lag_seconds"] > 0
        fake.fail_next = 0  # and back
        await caught_up(stack)
        assert stack.gateway.shippers[0].stats["lag_events"] == 0
        logged = log_records(log)
    assert set(decision_ids(logged)) <= set(decision_ids(fake.events()))


def logrotate_dateext(log: Path, day: str) -> None:
    """logrotate's ``dateext``: the log -> ``decisions.log-<day>``, a new empty log."""
    log.rename(log.with_name(f"{log.name}-{day}"))
    log.touch()


async def test_an_outage_across_two_dateext_rotations_ships_the_file_between_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With logrotate's ``dateext`` the backlog counted ``decisions.log-20261202``
    but following the chain looked only at ``decisions.log.*``: a shipper two
    rotations behind reported a discontinuity and skipped that day's file whole."""
    from gateway.audit.tail import LogTail, Position
    from tests.test_decision_log import write_log

    log = tmp_path / "decisions.log"
    days = ["20261201", "20261202"]
    for number in range(3):
        await write_log(log, 2)
        if number < 2:
            logrotate_dateext(log, days[number])
    files = [log.with_name(f"{log.name}-{day}") for day in days] + [log]
    tail = LogTail(log, Position(files[0].stat().st_ino, 0))  # a cursor at the oldest's start
    assert tail.read(1)
    assert tail.backlog_bytes() == sum(file.stat().st_size for file in files)
    shipped: list[bytes] = []
    while batch := tail.read(100):
        shipped += [line.raw for line in batch]
        tail.advance(batch[-1].end)
    tail.close()
    logged = [line for file in files for line in file.read_bytes().splitlines()]
    assert shipped == logged  # every line of the three files, in chain order, once
    assert tail.discontinuities == 0
    assert "no file beside it continues the chain" not in caplog.text


async def test_a_fifo_beside_the_log_does_not_hold_the_shipper(tmp_path: Path) -> None:
    """Looking for the file that continues the chain opened every sibling: a FIFO
    named like a rotated file blocked the shipper's thread for good."""
    from gateway.audit.tail import LogTail, Position
    from tests.test_decision_log import write_log

    log = tmp_path / "decisions.log"
    for number in range(3):
        await write_log(log, 2)
        if number < 2:
            logrotate(log)
    os.mkfifo(tmp_path / "decisions.log.0")  # named like a rotation: it is looked at
    oldest = log.with_name(f"{log.name}.2")
    tail = LogTail(log, Position(oldest.stat().st_ino, 0))

    def drain() -> int:
        read = 0
        while batch := tail.read(100):
            read += len(batch)
            tail.advance(batch[-1].end)
        return read

    read = await asyncio.wait_for(asyncio.to_thread(drain), timeout=10)
    files = [oldest, log.with_name(f"{log.name}.1"), log]
    assert read == sum(len(log_records(file)) for file in files)
    assert tail.discontinuities == 0


async def test_the_backlog_counts_the_rotated_files_between_the_shipper_and_the_log(
    tmp_path: Path,
) -> None:
    """Two rotations behind, the backlog counted the file being shipped and the
    log's path only: it fell at each rotation of an outage (decisions.log.1,
    333 KB, left out), and with it portcullis_sink_behind."""
    from gateway.audit.tail import LogTail, Position
    from tests.test_decision_log import write_log

    log = tmp_path / "decisions.log"
    for number in range(3):
        await write_log(log, 3)
        if number < 2:
            logrotate(log)
    (tmp_path / "decisions.log.3.gz").write_bytes(b"\x1f\x8b" + b"x" * 5000)  # shipped long ago
    oldest = log.with_name(f"{log.name}.2")
    tail = LogTail(log, Position(oldest.stat().st_ino, 0))
    assert tail.read(1)  # opened, at the start of the oldest
    files = [oldest, log.with_name(f"{log.name}.1"), log]
    assert tail.backlog_bytes() == sum(file.stat().st_size for file in files)
    tail.close()


# A full disk (or a file size limit) stops a file sink's write part of the way
# through a batch; the batch is then sent again, appended.
_TORN_WRITE = """
import asyncio, json, resource, signal, sys
from pathlib import Path
from gateway.audit.shipping.settings import SinkConfig
from gateway.audit.shipping.sinks.base import SinkError
from gateway.audit.shipping.sinks.file import FileSink

path = Path(sys.argv[1])
batch = [json.dumps({"seq": n, "pad": "x" * 300}).encode() + b"\\n" for n in range(1, 4)]

async def main():
    sink = FileSink(SinkConfig("copy", "file", path=path))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead, as ENOSPC would be
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(batch[0]) + 100, resource.RLIM_INFINITY))
    try:
        await sink.send(batch)
        raise SystemExit("the write past the limit succeeded")
    except SinkError:
        pass
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    await sink.send(batch)  # the retry, once there is room again
    await sink.close()

asyncio.run(main())
"""


def test_a_file_sink_write_cut_short_by_a_full_disk_leaves_no_torn_line(tmp_path: Path) -> None:
    """A write that stopped part of the way through a batch (ENOSPC, EFBIG) left
    half a record in the copy, and the retried batch was appended right after it:
    one line of the copy was half a record glued to the next, which no SIEM reads
    as JSON. The failed batch's bytes are cut off before it is retried."""
    import subprocess
    import sys

    copy = tmp_path / "copy.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", _TORN_WRITE, str(copy)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = copy.read_bytes().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3]
