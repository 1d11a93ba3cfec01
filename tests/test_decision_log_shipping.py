"""Shipping the decision log (decision_log.sinks): every record at least once, in
order, from a durable cursor, to a real syslog-ng (TCP and TLS), an OPA
decision-log / Splunk HEC receiver and a second file; the OCSF and ECS mappings;
signed heads anchored in the SIEM's copy."""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.shipping.settings import SinkConfig, SinkTls
from gateway.config import ConfigError, parse_config
from tests.conftest import complete_lines
from tests.gateway_stack import Stack, start_stack
from tests.syslog_ng import installed, start_syslog_ng

ROOT = Path(__file__).resolve().parent.parent
ALICE: dict[str, Any] = {"groups": ["warehouse"], "amr": ["pwd", "otp"]}


def log_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in complete_lines(path.read_text()) if line.strip()]


def decision_ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["decision_id"] for r in records if "decision_id" in r]


async def traffic(stack: Stack, count: int, *, token: str | None = None) -> None:
    """``count`` requests, a mix of allows and denies."""
    token = token or stack.token("alice", **ALICE)
    for index in range(count):
        path = "/wms/stock" if index % 3 else "/pos/sales"  # alice isn't in store: denied
        async with await stack.get(path, token) as response:
            await response.read()


async def caught_up(stack: Stack, *, timeout: float = 15.0) -> None:
    """Wait until every sink acknowledged everything in the log, the events still
    queued for the (async) writer included: lag counts written events only."""
    deadline = asyncio.get_running_loop().time() + timeout
    log = stack.gateway.decision_log
    assert log is not None
    while True:
        stats = [shipper.stats for shipper in stack.gateway.shippers]
        written = log.stats["queue_depth"] == 0
        if written and all(s["lag_events"] == 0 and s["backlog_bytes"] == 0 for s in stats):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"sinks did not catch up: {stats}")
        await asyncio.sleep(0.05)


async def shut_down(stack: Stack) -> None:
    """What Gateway.stop does for the log: seal it, then ship its close signature."""
    assert stack.gateway.decision_log is not None
    await stack.gateway.decision_log.close()
    assert stack.gateway.shipping is not None
    await stack.gateway.shipping.stop(5.0)


def with_sinks(tmp_path: Path, *sinks: SinkConfig, **log: Any) -> dict[str, Any]:
    from gateway.config import DecisionLogConfig

    settings = DecisionLogConfig(path=tmp_path / "decisions.log", sign_interval=0.5)
    return {"decision_log": replace(settings, sinks=sinks, **log)}


# --- syslog-ng ---------------------------------------------------------------------------

needs_syslog_ng = pytest.mark.skipif(not installed(), reason="syslog-ng: run `make test`")


@needs_syslog_ng
async def test_syslog_tcp_and_tls_ship_every_event_once_across_a_syslog_ng_restart(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    server = start_syslog_ng(tmp_path / "syslog-ng")
    try:
        tcp = SinkConfig("siem-tcp", "syslog", "ocsf", address=f"127.0.0.1:{server.tcp_port}",
                         timeout=2.0, retry_initial=0.05, retry_max=0.2)  # fmt: skip
        tls = SinkConfig("siem-tls", "syslog", "ecs", address=f"127.0.0.1:{server.tls_port}",
                         tls=SinkTls(ca_file=server.ca), timeout=2.0, retry_initial=0.05,
                         retry_max=0.2)  # fmt: skip
        async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, tcp, tls)) as stack:
            await traffic(stack, 60)
            await caught_up(stack)
            server.stop()  # mid-run: decisions go on, the file is the buffer
            await traffic(stack, 60)
            assert all(s.stats["lag_events"] > 0 for s in stack.gateway.shippers)
            server.start()
            await traffic(stack, 60)
            await caught_up(stack)
            logged = log_records(stack.log_path)
        ids = decision_ids(logged)
        assert len(ids) == 180
        for source, key in (("tcp", "metadata"), ("tls", "event")):
            messages = await server.written(source, ids)
            shipped = [m for msgid, m in messages if msgid != "chain_head"]
            got = [m[key]["uid"] if key == "metadata" else m[key]["id"] for m in shipped]
            assert got == ids, f"{source}: lost, duplicated or reordered events"
            heads = [msgid for msgid, _ in messages if msgid == "chain_head"]
            assert heads, f"{source}: no chain head shipped"
    finally:
        server.stop()


@needs_syslog_ng
async def test_syslog_tls_refuses_a_receiver_it_cannot_verify(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    server = start_syslog_ng(tmp_path / "syslog-ng")
    try:
        address = f"127.0.0.1:{server.tls_port}"  # its CA is not among the system's
        sink = SinkConfig("siem", "syslog", address=address, tls=SinkTls(), timeout=1.0,
                          retry_initial=0.05, retry_max=0.1)  # fmt: skip
        async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
            await traffic(stack, 3)
            # Until a send was tried and failed (a fixed 0.5 s was too short for the
            # shipping process on a loaded machine: failing was still 0).
            await until(lambda: stack.gateway.shippers[0].stats["retried"] > 0)
            stats = stack.gateway.shippers[0].stats
            assert stats["acknowledged"] == 0 and stats["failing"] == 1
        assert server.messages("tls") == []
    finally:
        server.stop()


# --- http: OPA decision-log API and Splunk HEC -------------------------------------------


@dataclass
class Receiver:
    """OPA's decision-log upload API (POST /logs: a gzip'd JSON array) and Splunk
    HEC's /services/collector/event (concatenated envelopes, `Splunk <token>`).
    No real Splunk or OPA control plane can run here: this stands in for both,
    and fails on command (`fail_next` 503s, `hang_next` requests that time out,
    413 for a body over `max_body` bytes once gunzipped, as Splunk's
    max_content_length or a proxy's body limit)."""

    token: str = "s3cret"
    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    fail_next: int = 0
    hang_next: int = 0
    attempts: int = 0
    retry_after: Callable[[], str] | None = None  # the failures' Retry-After header
    attempted_at: list[float] = field(default_factory=list)
    max_body: int | None = None
    too_large: int = 0  # 413s answered
    # A 200 that is not the receiver's answer (a captive portal, a proxy's page, a
    # wrong path): for the next `impostor_next` requests, this content type and body.
    impostor_next: int = 0
    impostor: tuple[str, str] = ("text/html", "<html><body>Sign in to continue</body></html>")
    # The next request waits for this event before it is read (then it is cleared).
    hold: asyncio.Event | None = None

    def app(self) -> web.Application:
        # The body as sent: the test checks it is gzip'd.
        app = web.Application(handler_args={"auto_decompress": False})
        app.router.add_post("/logs", self.opa)
        app.router.add_post("/services/collector/event", self.hec)
        return app

    async def _body(self, request: web.Request) -> bytes | None:
        if self.hold is not None:
            hold, self.hold = self.hold, None
            await hold.wait()
        self.attempts += 1
        self.attempted_at.append(time.monotonic())
        if self.hang_next:
            self.hang_next -= 1
            await asyncio.sleep(5)
        if self.fail_next:
            self.fail_next -= 1
            return None
        assert request.headers.get("Content-Encoding") == "gzip"
        body = gzip.decompress(await request.read())
        if self.max_body is not None and len(body) > self.max_body:
            self.too_large += 1
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_body, actual_size=len(body))
        return body

    async def opa(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401)
        body = await self._body(request)
        if body is None:
            slow_down = {"Retry-After": self.retry_after()} if self.retry_after else {}
            return web.Response(status=503, headers=slow_down)
        events = json.loads(body)
        assert isinstance(events, list)
        self.batches.append(events)
        return web.Response(status=204)

    async def hec(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Splunk {self.token}":
            return web.json_response({"text": "Invalid token", "code": 4}, status=403)
        if self.impostor_next:
            self.impostor_next -= 1
            self.attempts += 1
            content_type, text = self.impostor
            return web.Response(body=text.encode(), headers={"Content-Type": content_type})
        body = await self._body(request)
        if body is None:
            return web.json_response({"text": "Server is busy", "code": 9}, status=503)
        decoder, text, events, at = json.JSONDecoder(), body.decode(), [], 0
        while at < len(text):
            envelope, at = decoder.raw_decode(text, at)
            assert {"time", "host", "source", "sourcetype", "event"} <= set(envelope)
            events.append(envelope["event"])
        self.batches.append(events)
        return web.json_response({"text": "Success", "code": 0})

    def events(self) -> list[dict[str, Any]]:
        return [event for batch in self.batches for event in batch]


@pytest.fixture
async def receiver(aiohttp_server: Any) -> AsyncIterator[tuple[Receiver, TestServer]]:
    fake = Receiver()
    yield fake, await aiohttp_server(fake.app())


def http_sink(url: str, token_file: Path, **options: Any) -> SinkConfig:
    # A request timing out is resent (at least once): a receiver's answer late by
    # half a second (this process or the niced shipping process not scheduled on a
    # loaded machine) duplicated a batch the tests expect once. Tests of timeouts
    # ask for a short one.
    options.setdefault("timeout", 5.0)
    return SinkConfig("siem", "http", url=url, token_file=token_file,
                      retry_initial=0.05, retry_max=0.2, **options)  # fmt: skip


async def test_http_opa_sink_survives_503s_and_timeouts_without_loss(
    aiohttp_server: Any, tmp_path: Path, receiver: tuple[Receiver, TestServer]
) -> None:
    fake, server = receiver
    (tmp_path / "token").write_text(fake.token + "\n")
    sink = http_sink(f"http://127.0.0.1:{server.port}/logs", tmp_path / "token", timeout=0.5)
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 20)
        await caught_up(stack)
        fake.fail_next, fake.hang_next = 3, 2
        await traffic(stack, 20)
        await caught_up(stack)
        stats = stack.gateway.shippers[0].stats
        logged = log_records(stack.log_path)
    shipped = fake.events()
    # Every record (events and chain signatures) in order; a batch that timed out
    # may have arrived before the client gave up, so ids may repeat, never go missing.
    assert [e.get("decision_id") for e in shipped if "decision_id" in e][-40:] == decision_ids(
        logged
    )[-40:]
    assert set(decision_ids(logged)) == {e["decision_id"] for e in shipped if "decision_id" in e}
    assert any(e.get("type") == "chain_signature" for e in shipped)
    assert stats["retried"] > 0 and stats["failing"] == 0


async def test_http_sink_halves_batches_a_receiver_refuses_as_too_large(
    aiohttp_server: Any, tmp_path: Path, receiver: tuple[Receiver, TestServer]
) -> None:
    """A receiver's body limit (HTTP 413) used to be retried like a 503, with the
    same batch, forever: nothing shipped again. Now the same records go again in
    smaller batches, in order, none twice."""
    fake, server = receiver
    fake.max_body = 6000  # a few records' worth
    # The first batch waits at the receiver until all 30 are logged, so the next is
    # over the limit: shipped as they were written (a slow disk, a busy writer) they
    # came a record or two a batch, and nothing was ever too large.
    fake.hold = logged_all = asyncio.Event()
    (tmp_path / "token").write_text(fake.token)
    sink = http_sink(f"http://127.0.0.1:{server.port}/logs", tmp_path / "token", timeout=30.0)
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 30)
        assert len(await stack.events(at_least=30, timeout=30)) == 30
        logged_all.set()
        await caught_up(stack)
        stats = stack.gateway.shippers[0].stats
        logged = log_records(stack.log_path)
    assert fake.too_large > 0 and stats["failing"] == 0
    assert decision_ids(fake.events()) == decision_ids(logged)  # all, in order, once
    assert all(len(json.dumps(batch, separators=(",", ":"))) <= 6000 for batch in fake.batches)


async def test_one_record_over_the_receivers_limit_waits_loudly_until_it_is_raised(
    aiohttp_server: Any, tmp_path: Path, receiver: tuple[Receiver, TestServer]
) -> None:
    fake, server = receiver
    fake.max_body = 200  # less than any record
    (tmp_path / "token").write_text(fake.token)
    sink = http_sink(f"http://127.0.0.1:{server.port}/logs", tmp_path / "token")
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 6)
        assert len(await stack.events(at_least=6)) == 6  # decisions never wait for a sink
        await until(lambda: stack.gateway.shippers[0].stats["failing"] == 1)
        await asyncio.sleep(0.3)
        assert fake.events() == [] and stack.gateway.shippers[0].stats["acknowledged"] == 0
        fake.max_body = None  # the receiver's limit raised
        await caught_up(stack)
        logged = log_records(stack.log_path)
    assert decision_ids(fake.events()) == decision_ids(logged)


async def test_http_sink_waits_as_long_as_the_receivers_retry_after_asks(
    aiohttp_server: Any, tmp_path: Path, receiver: tuple[Receiver, TestServer]
) -> None:
    """A SIEM shedding load answers 503 (or 429) with Retry-After: the retry comes
    no sooner, though the sink's own backoff (retry_max 0.2 s) would have come back
    within a fifth of a second; in seconds or as an HTTP date."""
    fake, server = receiver
    (tmp_path / "token").write_text(fake.token)
    sink = http_sink(f"http://127.0.0.1:{server.port}/logs", tmp_path / "token")
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 2)
        await caught_up(stack)

        def seconds() -> str:
            return "1"

        def date() -> str:  # made as the 503 is answered: 2 s from then
            return email.utils.formatdate(time.time() + 2, usegmt=True)

        for asked in (seconds, date):
            fake.fail_next, fake.retry_after, fake.attempted_at = 1, asked, []
            await traffic(stack, 2)
            await caught_up(stack)
            failed, retried = fake.attempted_at[:2]
            assert retried - failed >= 0.9  # an HTTP date has whole seconds
        logged = log_records(stack.log_path)
    assert set(decision_ids(logged)) <= {e.get("decision_id") for e in fake.events()}


async def test_http_splunk_hec_envelope_carries_ocsf_events(
    aiohttp_server: Any, tmp_path: Path, receiver: tuple[Receiver, TestServer]
) -> None:
    fake, server = receiver
    (tmp_path / "token").write_text(fake.token)
    sink = http_sink(f"http://127.0.0.1:{server.port}/services/collector/event",
                     tmp_path / "token", envelope="splunk_hec", format="ocsf")  # fmt: skip
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 6)
        await caught_up(stack)
        logged = log_records(stack.log_path)
    events = [e for e in fake.events() if e["class_uid"] != 0]
    assert [e["metadata"]["uid"] for e in events] == decision_ids(logged)
    assert {e["class_uid"] for e in events} == {6001}
    assert {e["action"] for e in events} == {"Allowed", "Denied"}


async def test_wrong_token_is_retried_never_dropped(
    aiohttp_server: Any, tmp_path: Path, receiver: tuple[Receiver, TestServer]
) -> None:
    fake, server = receiver
    (tmp_path / "token").write_text("wrong")
    sink = http_sink(f"http://127.0.0.1:{server.port}/logs", tmp_path / "token")
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 4)
        await asyncio.sleep(0.4)
        assert stack.gateway.shippers[0].stats["acknowledged"] == 0
        (tmp_path / "token").write_text(fake.token)  # the Secret is fixed: read again
        await caught_up(stack)
        logged = log_records(stack.log_path)
    assert {e["decision_id"] for e in fake.events() if "decision_id" in e} == set(
        decision_ids(logged)
    )


async def test_sink_outage_never_blocks_or_loses_decisions(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("t")
    sink = http_sink("http://127.0.0.1:9/logs", tmp_path / "token")  # nothing listens
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        started = asyncio.get_running_loop().time()
        await traffic(stack, 30)
        assert asyncio.get_running_loop().time() - started < 10
        assert len(await stack.events(at_least=30)) == 30
        # The shipping process (at its lower priority) reports what it read, and,
        # later, that sending it failed: wait for the failure, not the read.
        await until(lambda: stack.gateway.shippers[0].stats["retried"] > 0)
        stats = stack.gateway.shippers[0].stats
        assert stats["lag_events"] >= 30 and stats["backlog_bytes"] > 0
        assert stats["failing"] == 1 and stats["acknowledged"] == 0
        metrics = stack.gateway.metrics.render().decode()
    assert 'portcullis_sink_lag_events{sink="siem"} 3' in metrics
    assert 'portcullis_sink_failing{sink="siem"} 1.0' in metrics
    for name in ("events_shipped_total", "events_acknowledged_total", "events_retried_total",
                 "lag_seconds", "backlog_bytes", "behind"):  # fmt: skip
        assert f'portcullis_sink_{name}{{sink="siem"}}' in metrics


# --- file sink, cursor, restart ----------------------------------------------------------


async def test_restart_resumes_from_the_cursor_and_never_resends(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    sink = SinkConfig("copy", "file", "opa", path=tmp_path / "other-volume" / "copy.jsonl")
    for _ in range(2):
        async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
            await traffic(stack, 10)
            await shut_down(stack)
    logged = log_records(tmp_path / "decisions.log")
    copied = log_records(tmp_path / "other-volume" / "copy.jsonl")
    assert [r.get("seq") for r in copied] == [r.get("seq") for r in logged]
    assert decision_ids(copied) == decision_ids(logged)
    assert len(decision_ids(copied)) == 20
    cursor = json.loads((tmp_path / "decisions.log.sink-copy.cursor").read_text())
    assert cursor["offset"] == (tmp_path / "decisions.log").stat().st_size


async def test_a_killed_shipping_process_is_restarted_and_ships_everything(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    sink = SinkConfig("copy", "file", path=tmp_path / "copy.jsonl")
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        shipping = stack.gateway.shipping
        assert shipping is not None and shipping.pid is not None
        await traffic(stack, 5)
        await caught_up(stack)
        os.kill(shipping.pid, signal.SIGKILL)
        await until(lambda: stack.gateway.shippers[0].stats["failing"] == 1)
        await traffic(stack, 5)  # decisions go on while nothing ships
        assert len(await stack.events(at_least=10)) == 10
        await caught_up(stack)
        assert shipping.restarts == 1
        logged = log_records(stack.log_path)
    copied = log_records(tmp_path / "copy.jsonl")
    # At least once, in order: a batch sent but not acknowledged may come twice.
    assert list(dict.fromkeys(decision_ids(copied))) == decision_ids(logged)
    assert len(decision_ids(logged)) == 10


async def test_ctrl_c_in_the_terminal_leaves_shipping_to_the_gateway(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """Ctrl-C reaches the whole process group: the shipping process must not die of
    it (a KeyboardInterrupt traceback, then a restart) but go on until the gateway,
    which drains the log first, stops it."""
    sink = SinkConfig("copy", "file", path=tmp_path / "copy.jsonl")
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        shipping = stack.gateway.shipping
        assert shipping is not None and shipping.pid is not None
        pid = shipping.pid
        os.kill(pid, signal.SIGINT)
        await traffic(stack, 5)
        await caught_up(stack)
        assert shipping.pid == pid and shipping.restarts == 0
        logged = log_records(stack.log_path)
    assert decision_ids(log_records(tmp_path / "copy.jsonl")) == decision_ids(logged)


async def test_stopping_while_the_shipping_process_restarts_does_not_wait_for_it(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    sink = SinkConfig("copy", "file", path=tmp_path / "copy.jsonl")
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        shipping = stack.gateway.shipping
        assert shipping is not None and shipping.pid is not None
        os.kill(shipping.pid, signal.SIGKILL)
        await until(lambda: shipping.pid is None)  # in its restart backoff
        started = asyncio.get_running_loop().time()
        await shipping.stop(5.0)
        assert asyncio.get_running_loop().time() - started < 1.0
        assert shipping.pid is None and shipping.restarts <= 1


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


def test_two_shippers_never_share_a_cursor(tmp_path: Path) -> None:
    """A gateway restarted while its previous shipping process still drains: the
    new one must wait for the cursor, or both would ship the same records."""
    from gateway.audit.shipping.cursor import CursorBusy
    from gateway.audit.shipping.shipper import load_shippers

    sink = SinkConfig("copy", "file", path=tmp_path / "copy.jsonl")
    first = load_shippers((sink,), tmp_path / "decisions.log")
    with pytest.raises(CursorBusy, match="in use by another shipper"):
        load_shippers((sink,), tmp_path / "decisions.log")
    first[0].close()
    load_shippers((sink,), tmp_path / "decisions.log")[0].close()


async def test_shipping_follows_the_log_across_logrotate(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    sink = SinkConfig("copy", "file", path=tmp_path / "copy.jsonl")
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 5)
        (tmp_path / "decisions.log").rename(tmp_path / "decisions.log.1")
        await traffic(stack, 5)
        assert stack.gateway.decision_log is not None
        stack.gateway.decision_log.reopen()
        await asyncio.sleep(0.2)
        await traffic(stack, 5)
        await caught_up(stack)
    logged = log_records(tmp_path / "decisions.log.1") + log_records(tmp_path / "decisions.log")
    assert decision_ids(log_records(tmp_path / "copy.jsonl")) == decision_ids(logged)


async def test_a_damaged_cursor_stops_the_start_with_its_path(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    (tmp_path / "decisions.log.sink-copy.cursor").write_text("{not json")
    sink = SinkConfig("copy", "file", path=tmp_path / "copy.jsonl")
    with pytest.raises(RuntimeError, match=r"sink-copy\.cursor is damaged"):
        async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)):
            pass


# --- formats and anchoring ---------------------------------------------------------------


async def test_ocsf_and_ecs_mappings_of_allow_deny_and_a_refused_token(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    ocsf = SinkConfig("ocsf", "file", "ocsf", path=tmp_path / "ocsf.jsonl")
    ecs = SinkConfig("ecs", "file", "ecs", path=tmp_path / "ecs.jsonl")
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, ocsf, ecs)) as stack:
        token = stack.token("alice", email="alice@example.com", **ALICE)
        for path, bearer in (("/wms/stock", token), ("/pos/sales", token), ("/wms/x", "bad")):
            async with await stack.get(path, bearer) as response:
                await response.read()
        await caught_up(stack)
        logged = [r for r in log_records(stack.log_path) if "decision_id" in r]
    events = [e for e in log_records(tmp_path / "ocsf.jsonl") if e["class_uid"] != 0]
    allow, deny, bad = events
    assert (allow["class_uid"], allow["activity_id"], allow["type_uid"]) == (6001, 2, 600102)
    assert (allow["action"], allow["disposition"]) == ("Allowed", "Allowed")
    assert (deny["action"], deny["disposition"]) == ("Denied", "Blocked")
    policy = deny["authorizations"][0]["policy"]
    assert policy["name"] == "portcullis/gateway/decision" and policy["version"]
    assert allow["actor"]["user"]["uid"] == "alice"
    assert allow["actor"]["user"]["email_addr"] == "alice@example.com"
    assert allow["src_endpoint"]["ip"] == "127.0.0.1"
    assert allow["web_resources"][0]["name"] == "wms"
    assert deny["status_detail"] and deny["unmapped"]["portcullis"]["reasons"]
    assert (bad["class_uid"], bad["status"], bad["is_mfa"]) == (3002, "Failure", False)
    assert bad["auth_protocol"] == "OAUTH 2.0"
    for event, record in zip(events, logged, strict=True):
        chain = event["unmapped"]["portcullis"]
        assert (event["metadata"]["uid"], event["metadata"]["sequence"]) == (
            record["decision_id"], record["seq"],
        )  # fmt: skip
        assert chain["prev_hash"] == record["prev_hash"] and len(chain["chain_hash"]) == 64
    documents = [d for d in log_records(tmp_path / "ecs.jsonl") if d["event"]["kind"] == "event"]
    assert [d["event"]["type"] for d in documents] == [
        ["access", "allowed"], ["access", "denied"], ["start", "denied"],
    ]  # fmt: skip
    assert [d["event"]["outcome"] for d in documents] == ["success", "failure", "failure"]
    assert documents[0]["event"]["category"] == ["web", "network"]
    assert documents[2]["event"]["category"] == ["authentication", "network"]
    assert documents[0]["service"]["target"]["name"] == "wms"
    assert [d["event"]["id"] for d in documents] == [r["decision_id"] for r in logged]


async def test_the_siems_copy_of_a_signed_head_catches_a_cut_tail(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    sink = SinkConfig("siem", "file", "ocsf", path=tmp_path / "siem.jsonl")
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 12)
        await shut_down(stack)
    log = tmp_path / "decisions.log"
    key = tmp_path / "assertion.pem"
    verify = [sys.executable, "-m", "portcullis", "audit", "verify", str(log), "--key", str(key),
              "--head", str(tmp_path / "siem.jsonl")]  # fmt: skip
    intact = subprocess.run(verify, capture_output=True, text=True, cwd=ROOT)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "reaches the outside head" in intact.stderr
    # The gateway host's copy loses its newest events (cut at a signature, so the
    # file alone still verifies).
    lines = log.read_bytes().splitlines(keepends=True)
    records = [json.loads(line) for line in lines]
    cut = max(i for i, r in enumerate(records) if r.get("type") and r["seq"] < 12)
    log.write_bytes(b"".join(lines[: cut + 1]))
    tampered = subprocess.run(verify, capture_output=True, text=True, cwd=ROOT)
    assert tampered.returncode == 1
    assert "but the gateway signed a head at seq 12" in tampered.stdout


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sink", "message"),
    [
        ({"kind": "kafka"}, r"sinks\[0\]\.kind: must be one of syslog, http, file"),
        ({"kind": "syslog", "address": "siem"}, r"sinks\[0\]\.address: expected host:port"),
        ({"kind": "http", "url": "ftp://x"}, r"sinks\[0\]\.url: must be an http\(s\) URL"),
        ({"kind": "http", "url": "http://x/logs", "token": "t"}, r"sinks\[0\]\.token: put the"),
        ({"kind": "http", "url": "http://x/e", "envelope": "splunk_hec"}, r"needs a token"),
        ({"kind": "file", "path": "c", "format": "cef"}, r"format: must be one of opa, ocsf, ecs"),
        ({"kind": "file", "path": "c", "name": "Bad Name"}, r"sinks\[0\]\.name: 'Bad Name'"),
        ({"kind": "file", "path": "c", "retry_max": 0.1}, r"retry_max: must be at least"),
        ({"kind": "syslog", "address": "h:1", "tls": {"ca_file": "nope.pem"}}, r"no such file"),
        ({"kind": "file", "path": "c", "colour": "red"}, r"sinks\[0\]\.colour: unknown key"),
        # HEC's fields on OPA's envelope would be silently dropped.
        ({"kind": "http", "url": "http://x/l", "sourcetype": "pc"}, r"sourcetype: only for envel"),
        ({"kind": "http", "url": "http://x/l", "index": "main"}, r"sinks\[0\]\.index: only for"),
        # A file where a directory of the path must be: every write would fail.
        ({"kind": "file", "path": "d.log/copy.jsonl"}, r"d.log is a file, not a directory"),
    ],
)
def test_bad_sink_settings_are_refused_with_their_key(
    sink: dict[str, Any], message: str, tmp_path: Path
) -> None:
    (tmp_path / "d.log").write_text("")
    data = {"auth": False, "decision_log": {"path": "d.log", "sinks": [sink]}}
    with pytest.raises(ConfigError, match=message):
        parse_config(data, tmp_path)


def test_two_sinks_with_one_name_are_refused(tmp_path: Path) -> None:
    sinks = [{"kind": "file", "path": "a"}, {"kind": "file", "path": "b"}]
    with pytest.raises(ConfigError, match=r"sinks\[1\]\.name: 'file' is also sinks\[0\]"):
        parse_config({"auth": False, "decision_log": {"path": "d", "sinks": sinks}}, tmp_path)


def test_sinks_need_a_log_file(tmp_path: Path) -> None:
    data = {"auth": False, "decision_log": {"sinks": [{"kind": "file", "path": "a"}]}}
    with pytest.raises(ConfigError, match=r"shipping needs decision_log.path"):
        parse_config(data, tmp_path)


# --- the shipping process's priority, reading in batches ----------------------------------


def thread_priorities(pid: int) -> set[tuple[int, int]]:
    """(nice, scheduling policy) of every thread of a process."""
    return {
        (os.getpriority(os.PRIO_PROCESS, int(tid)), os.sched_getscheduler(int(tid)))
        for tid in os.listdir(f"/proc/{pid}/task")
    }


@pytest.mark.parametrize(("nice", "expected"), [(7, (7, os.SCHED_BATCH)), (0, None)])
async def test_the_shipping_process_and_all_its_threads_run_at_the_configured_priority(
    tmp_path: Path, nice: int, expected: tuple[int, int] | None
) -> None:
    from gateway.audit.shipping.supervisor import ShippingProcess

    log = tmp_path / "decisions.log"
    log.write_bytes(b'{"seq": 1}\n')
    sinks = (SinkConfig("a", "file", path=tmp_path / "a.jsonl"),
             SinkConfig("b", "file", path=tmp_path / "b.jsonl"))  # fmt: skip
    shipping = ShippingProcess(sinks, log, lambda: 1, nice)
    await shipping.start()
    try:
        assert shipping.pid is not None
        await until(lambda: (tmp_path / "b.jsonl").exists() and (tmp_path / "a.jsonl").exists())
        threads = thread_priorities(shipping.pid)
        assert len(os.listdir(f"/proc/{shipping.pid}/task")) >= 3  # main + one per sink
        mine = (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))
        assert threads == {expected or mine}
    finally:
        await shipping.stop(1.0)


def test_the_shipping_process_keeps_freed_memory_where_malloc_is_glibcs() -> None:
    """Each batch frees a few MB; given back to the kernel, they came back a page
    fault at a time (bench figures in keep_freed_memory's docstring)."""
    import platform

    from gateway.audit.shipping.process import keep_freed_memory

    assert platform.libc_ver()[0] == "glibc", "this test runs where the image does: glibc"
    assert keep_freed_memory() is True
    assert len(bytes(8 << 20)) == 8 << 20  # malloc still serves blocks above the threshold


def test_shipping_nice_is_read_and_checked(tmp_path: Path) -> None:
    sinks = [{"kind": "file", "path": "a"}]
    data: dict[str, Any] = {"auth": False, "decision_log": {"path": "d", "sinks": sinks}}
    assert parse_config(data, tmp_path).decision_log.shipping_nice == 10
    data["decision_log"]["shipping_nice"] = 0
    assert parse_config(data, tmp_path).decision_log.shipping_nice == 0
    data["decision_log"]["shipping_nice"] = 20
    with pytest.raises(ConfigError, match=r"decision_log.shipping_nice: 0 to 19, got 20"):
        parse_config(data, tmp_path)


def test_the_tail_reads_whole_lines_in_order_a_batch_at_a_time_and_resumes_exactly(
    tmp_path: Path,
) -> None:
    """Blocks are read whole but taken max_lines at a time: nothing is skipped or
    taken twice, a line still being written waits, and a new reader at a saved
    position (a restart) goes on with the next line."""
    from gateway.audit.tail import LogTail, TailLine, parse_record

    log = tmp_path / "decisions.log"
    lines = [json.dumps({"seq": n, "pad": "x" * (n % 50)}).encode() for n in range(1, 101)]
    log.write_bytes(b"\n".join(lines[:60]) + b"\n" + b"not json\n" + lines[60][:10])
    tail = LogTail(log)
    taken: list[TailLine] = []
    again = tail.read(7)
    assert again == tail.read(7)  # not taken until advanced
    while batch := tail.read(7, max_bytes=500):
        assert len(batch) <= 7
        taken += batch
        tail.advance(batch[-1].end)
    records = [parse_record(line.raw) for line in taken]
    assert [record["seq"] for record in records[:60] if record] == list(range(1, 61))
    assert records[60] is None and taken[60].raw == b"not json"
    assert len(taken) == 61  # the unfinished line waits
    resumed = LogTail(log, taken[40].end)  # a restart at a cursor saved after line 41
    assert [parse_record(line.raw) for line in resumed.read(5)] == [
        json.loads(line) for line in lines[41:46]
    ]
    with log.open("ab") as file:
        file.write(lines[60][10:] + b"\n" + b"\n".join(lines[61:]) + b"\n")
    while batch := tail.read(7):
        taken += batch
        tail.advance(batch[-1].end)
    seqs = [record["seq"] for line in taken if (record := parse_record(line.raw))]
    assert seqs == list(range(1, 101))
    assert taken[-1].end.offset == log.stat().st_size
    tail.close()
    resumed.close()


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=120).map(lambda b: b.replace(b"\n", b"")), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=6),
    max_lines=st.integers(min_value=1, max_value=9),
    max_bytes=st.integers(min_value=1, max_value=700),
)
def test_the_tail_takes_every_complete_line_once_in_order_however_the_file_grows(
    tmp_path_factory: pytest.TempPathFactory,
    lines: list[bytes],
    cuts: list[int],
    max_lines: int,
    max_bytes: int,
) -> None:
    """Whatever the lines (empty ones, lines longer than a read), however the writer's
    appends cut them, and whatever the batch limits: the lines taken are the file's
    complete lines, each once, in order, with the position right after each."""
    from gateway.audit.tail import LogTail

    log = tmp_path_factory.mktemp("tail") / "decisions.log"
    data = b"".join(line + b"\n" for line in lines) + b"half a li"
    log.write_bytes(b"")
    tail = LogTail(log)
    taken: list[bytes] = []
    for cut in [*sorted(cuts), len(data)]:
        with log.open("ab") as file:
            file.write(data[log.stat().st_size : max(cut, log.stat().st_size)])
        while batch := tail.read(max_lines, max_bytes):
            assert len(batch) <= max_lines
            for line in batch:
                taken.append(line.raw)
                assert line.end.offset == sum(len(raw) + 1 for raw in taken)
            tail.advance(batch[-1].end)
    tail.close()
    assert taken == lines


def test_the_tail_takes_a_line_at_the_limit_whole_and_one_byte_over_only_hashed(
    tmp_path: Path,
) -> None:
    """MAX_LINE_BYTES is the longest line the tail takes whole: one byte more and it
    comes hashed in pieces (its chain hash exact) as its first bytes and its length,
    with the position right after it; one still being written waits, whatever its
    length, as any line does."""
    from gateway.audit.chain import MAX_LINE_BYTES, line_hash
    from gateway.audit.reader import OVERLONG_HEAD
    from gateway.audit.tail import LogTail
    from tests.test_decision_log import record_of

    log = tmp_path / "decisions.log"
    at, over = record_of(MAX_LINE_BYTES, 2), record_of(MAX_LINE_BYTES + 1, 3)
    longer = record_of(MAX_LINE_BYTES + (3 << 20), 5)
    raws = [b'{"seq":1}', at, over, b'{"seq":4}', longer]
    log.write_bytes(b"".join(raw + b"\n" for raw in raws)[:-1])  # the last one torn
    tail = LogTail(log)
    taken = []
    while batch := tail.read(10):
        taken += batch
        tail.advance(batch[-1].end)
    assert [line.raw for line in taken] == [b'{"seq":1}', at, over[:OVERLONG_HEAD], b'{"seq":4}']
    assert [line.digest for line in taken] == [line_hash(raw) for raw in raws[:4]]
    assert [line.overlong for line in taken] == [0, 0, len(over), 0]
    ends = [line.end.offset for line in taken]
    assert ends == [sum(len(raw) + 1 for raw in raws[: n + 1]) for n in range(4)]
    with log.open("ab") as file:
        file.write(b"\n")
    [last] = tail.read(10)
    assert (last.digest, last.overlong) == (line_hash(longer), len(longer))
    assert last.end.offset == log.stat().st_size
    tail.close()


async def test_a_sink_that_falls_behind_is_reported_by_metric_and_log_line(
    aiohttp_server: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """At the shipping process's lower priority the alert still fires."""
    (tmp_path / "token").write_text("t")
    sink = http_sink("http://127.0.0.1:9/logs", tmp_path / "token", backlog_alert_bytes=2000)
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 5)
        await until(lambda: stack.gateway.shippers[0].stats["behind"] == 1.0)
        metrics = stack.gateway.metrics.render().decode()
        await until(lambda: "sink siem is behind" in capfd.readouterr().err)
    assert 'portcullis_sink_behind{sink="siem"} 1.0' in metrics


async def test_the_backlog_metric_keeps_growing_while_a_batch_waits_for_an_outage_to_end(
    aiohttp_server: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The backlog was looked at only between batches: once the first batch was
    being retried, portcullis_sink_backlog_bytes froze at its size, so `behind`
    and the "is behind" line never came however much the outage piled up."""
    (tmp_path / "token").write_text("t")
    sink = http_sink("http://127.0.0.1:9/logs", tmp_path / "token", backlog_alert_bytes=20_000)
    async with start_stack(aiohttp_server, tmp_path, **with_sinks(tmp_path, sink)) as stack:
        await traffic(stack, 1)
        shipper = stack.gateway.shippers[0]
        await until(lambda: shipper.stats["failing"] == 1)  # the first batch is being retried
        first = shipper.stats["backlog_bytes"]
        assert 0 < first < 20_000
        await traffic(stack, 60)
        await until(lambda: shipper.stats["backlog_bytes"] > 20_000)
        await until(lambda: shipper.stats["behind"] == 1.0)
        await until(lambda: "sink siem is behind" in capfd.readouterr().err)
