"""decision_log.durability: in sync a response is sent only once its event is on
disk (group commit), a failing disk fails requests closed, and a gateway killed
with SIGKILL under load has logged every request it answered."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.audit.writer import DecisionLog
from gateway.config import DecisionLogConfig
from gateway.demo import AUDIENCE, DevIssuer, demo_backend
from gateway.own_pages import MAX_BODY_BYTES
from tests.gateway_stack import free_port, start_stack

ROOT = Path(__file__).resolve().parent.parent
STORE: dict[str, Any] = {"groups": ["store", "warehouse"], "amr": ["pwd", "otp"]}


async def test_group_commit_shares_one_fsync_between_concurrent_requests(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.log", ec.generate_private_key(ec.SECP256R1()), key_id="k",
                      sign_interval=60)  # fmt: skip
    await log.start()

    async def request(n: int) -> bool:
        ticket = log.record(decision_id=f"id-{n}", input={"n": n}, result={"allow": True},
                            revision="r", metrics={})  # fmt: skip
        return await log.durable(ticket, 5.0)

    assert all(await asyncio.gather(*(request(n) for n in range(400))))
    fsyncs = log.stats["fsyncs"]
    await log.close()
    assert (tmp_path / "d.log").read_text().count('"decision_id"') == 400
    assert fsyncs <= 40, f"{fsyncs} fsyncs for 400 concurrent requests: no group commit"


def failing_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)  # the writer's (and only its) fsync


def durability(tmp_path: Path, mode: str | None) -> dict[str, Any]:
    # The disk failing (fsync raising) fails a request closed at once; the timeout
    # is for a disk that hangs. 0.3 s refused requests that should pass whenever an
    # fsync took longer on a loaded machine's disk (503 where 200 was expected).
    config = DecisionLogConfig(path=tmp_path / "decisions.log", sign_interval=60,
                               durability=mode, durability_timeout=5.0)  # fmt: skip
    return {"decision_log": config}


async def test_sync_fails_closed_when_the_disk_fails_and_forwards_nothing(
    aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with start_stack(aiohttp_server, tmp_path, **durability(tmp_path, "sync")) as stack:
        token = stack.token("alice", **STORE)
        async with await stack.get("/wms/stock", token) as ok:
            assert ok.status == 200  # the disk still works
        failing_fsync(monkeypatch)
        for path in ("/wms/stock", "/pos/sales", "/nowhere"):
            async with await stack.get(path, token) as response:
                assert response.status == 503, path
                assert (await response.json())["error"] == "decision_log_unavailable"
        assert stack.total_forwarded() == 1
        # The gateway's own pages and the refusals it answers by closing wait too.
        too_big = b"x" * (MAX_BODY_BYTES + 1)
        async with await stack.get("/healthz", data=too_big) as page:
            assert page.status == 503
            assert (await page.json())["error"] == "decision_log_unavailable"


async def test_a_request_failed_closed_is_logged_as_refused_not_only_as_its_decision(
    aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fails, the client gets a 503 and nothing is forwarded; the allow
    event, written once the disk works, was all the log (and the SIEM) said:
    "Access Grant, 200" for an access that never happened. A refusal follows it,
    naming it."""
    async with start_stack(aiohttp_server, tmp_path, **durability(tmp_path, "sync")) as stack:
        token = stack.token("alice", **STORE)
        failing_fsync(monkeypatch)
        async with await stack.get("/pos/sales", token) as response:
            assert response.status == 503
        monkeypatch.undo()  # the disk works again
        assert stack.total_forwarded() == 0
        assert stack.gateway.decision_log is not None
        await stack.gateway.decision_log.close()  # as the gateway's stop does
    records = [json.loads(line) for line in (tmp_path / "decisions.log").read_text().splitlines()]
    decided = [r for r in records if r.get("path") == "portcullis/gateway/decision"]
    refused = [r for r in records if r.get("path") == "gateway"]
    assert len(decided) == 1 and decided[0]["result"]["allow"] is True
    assert len(refused) == 1
    refusal = refused[0]
    assert refusal["labels"]["overrides_decision_id"] == decided[0]["decision_id"]
    assert refusal["result"]["http_status"] == 503 and refusal["result"]["allow"] is False
    assert refusal["result"]["reasons"] == [
        f"gateway.decision_log_unavailable: decision {decided[0]['decision_id']} was not on "
        "disk within 5 s: answered 503, not carried out"
    ]
    assert refusal["input"] == decided[0]["input"]  # the same request
    assert records.index(refusal) > records.index(decided[0])


async def test_an_fsync_that_fails_once_is_not_undone_by_the_next_that_succeeds(
    aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux may drop the pages of a failed fsync and clear the error, so the next
    fsync succeeding proves nothing for them: their requests stay refused, and
    requests after it are served again."""
    calls = {"n": 0}
    real_fsync = os.fsync

    def fails_once(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    async with start_stack(aiohttp_server, tmp_path, **durability(tmp_path, "sync")) as stack:
        token = stack.token("alice", **STORE)
        async with await stack.get("/pos/sales", token) as before:
            assert before.status == 200  # the start record is written and synced
        monkeypatch.setattr(os, "fsync", fails_once)
        async with await stack.get("/pos/sales", token) as first:
            assert first.status == 503
        assert stack.total_forwarded() == 1
        async with await stack.get("/pos/sales", token) as second:
            assert second.status == 200


async def test_async_answers_without_waiting_for_the_disk(
    aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with start_stack(aiohttp_server, tmp_path, **durability(tmp_path, "async")) as stack:
        failing_fsync(monkeypatch)
        async with await stack.get("/pos/sales", stack.token("alice", **STORE)) as response:
            assert response.status == 200


async def test_default_durability_is_sync_for_pci_apps_only(
    aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with start_stack(aiohttp_server, tmp_path, **durability(tmp_path, None)) as stack:
        failing_fsync(monkeypatch)
        token = stack.token("alice", **STORE)
        async with await stack.get("/wms/stock", token) as wms:
            assert wms.status == 200  # confidential: async
        async with await stack.get("/pos/sales", token) as pos:
            assert pos.status == 503  # pci: waits for the disk, which fails
        assert len(stack.forwarded("pos")) == 0


# --- SIGKILL under load -------------------------------------------------------------------


async def test_sigkill_under_load_loses_no_answered_request(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    issuer = DevIssuer(tmp_path / "issuer", "")
    issuer_server = await aiohttp_server(issuer.app())
    issuer.issuer = f"http://127.0.0.1:{issuer_server.port}"
    port = free_port()
    backend = await aiohttp_server(demo_backend("wms", f"http://127.0.0.1:{port}"))
    log = tmp_path / "decisions.log"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"listeners: [{{address: 127.0.0.1, port: {port}}}]\n"
        f"routes: [{{app: wms, upstream: 'http://127.0.0.1:{backend.port}', path_prefix: /wms/}},"
        f" {{app: pos, upstream: 'http://127.0.0.1:{backend.port}', path_prefix: /pos/}}]\n"
        f"issuers: [{{issuer: '{issuer.issuer}', audiences: [{AUDIENCE}], "
        f"jwks_url: '{issuer.issuer}/jwks.json'}}]\n"
        f"policy: {{source: {ROOT / 'policies'}, watch: false}}\n"
        f"assertion: {{key_file: {tmp_path / 'assertion.pem'}}}\n"
        f"decision_log: {{path: {log}, durability: sync, sign_interval: 0.3,\n"
        f"  sinks: [{{kind: file, name: copy, path: {tmp_path / 'copy.jsonl'}}}]}}\n"
    )
    gateway = subprocess.Popen(
        [sys.executable, "-m", "portcullis", "gateway", "--config", str(config),
         "--log-level", "warning"], cwd=ROOT, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    token = issuer.token("alice", **STORE)
    answered: list[str] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            await _wait_up(session, url, gateway)

            async def client(worker: int) -> None:
                for n in range(100_000):
                    request_id = f"w{worker}-{n}"
                    path = "/wms/stock" if n % 2 else "/pos/refunds/9"  # allow, deny
                    headers = {"Authorization": f"Bearer {token}", "X-Request-Id": request_id}
                    try:
                        async with session.get(url + path, headers=headers) as response:
                            await response.read()
                    except (aiohttp.ClientError, TimeoutError):
                        return
                    answered.append(request_id)

            clients = [asyncio.ensure_future(client(worker)) for worker in range(16)]
            await asyncio.sleep(1.5)  # under load, signatures written in between
            # And enough answered to mean anything: 1.5 s alone was not always, on a
            # loaded machine (each answer waits for its fsync).
            deadline = time.monotonic() + 30
            while len(answered) <= 100 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            shipping = _children(gateway.pid)
            os.kill(gateway.pid, signal.SIGKILL)
            gateway.wait(timeout=10)
            await asyncio.gather(*clients)
    finally:
        if gateway.poll() is None:
            gateway.kill()
        gateway.wait(timeout=10)
    # The process is gone: read what the kernel has, not what the process said.
    text = log.read_text()
    # The kill may cut the last line short (its batch was being written, so no one
    # was answered for it): only whole lines count, here and for shipping below.
    complete = text.split("\n")[:-1]
    logged = {line.split('"id":"', 1)[1].split('"', 1)[0] for line in complete
              if '"decision_id"' in line}  # fmt: skip
    assert len(answered) > 100, "too little load to mean anything"
    missing = [request_id for request_id in answered if request_id not in logged]
    assert not missing, f"{len(missing)} answered requests have no event: {missing[:5]}"
    verify = subprocess.run(
        [sys.executable, "-m", "portcullis", "audit", "verify", str(log),
         "--key", str(tmp_path / "assertion.pem")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert "TAMPERED" not in verify.stdout, verify.stdout
    assert verify.stdout.startswith("INCOMPLETE: "), verify.stdout + verify.stderr
    assert "chain intact up to the last signature" in verify.stdout
    assert "not yet covered by a signature" in verify.stderr or "shutdown signature" in (
        verify.stderr
    )
    # The shipping process outlives the gateway just long enough to ship what the
    # file holds, then exits: nothing left behind, nothing unshipped.
    assert len(shipping) == 1, f"expected one shipping process, found {shipping}"
    deadline = time.monotonic() + 15
    while Path(f"/proc/{shipping[0]}").exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not Path(f"/proc/{shipping[0]}").exists(), "the shipping process was left running"
    copied = [json.loads(line) for line in (tmp_path / "copy.jsonl").read_text().splitlines()]
    assert [r.get("seq") for r in copied] == [json.loads(line).get("seq") for line in complete]


def _children(pid: int) -> list[int]:
    """The processes this one started (Linux /proc)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


async def _wait_up(
    session: aiohttp.ClientSession, url: str, gateway: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            raise AssertionError(gateway.stderr.read().decode() if gateway.stderr else "exited")
        try:
            async with session.get(url + "/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the gateway did not come up")


async def test_a_websocket_whose_recheck_is_not_durable_is_closed_not_relayed_on(
    aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In sync durability, going on relaying a WebSocket is acting on its latest
    recheck: a recheck allow that can't reach the disk (the disk failed while the
    socket was open) kept relaying, a decision acted on but never logged. Now
    the socket is closed (1011) as a request would get a 503, and the log, once
    the disk works again, holds a refusal naming that recheck's decision, and
    none for the upgrade, which was durable and served."""
    from tests.test_gateway_limits import WAREHOUSE, limited_stack

    options = {"overrides": durability(tmp_path, "sync"), "websocket_recheck_interval": 0.3}
    async with limited_stack(aiohttp_server, tmp_path, **options) as stack:
        headers = {"Authorization": f"Bearer {stack.token('alice', **WAREHOUSE)}"}
        url = stack.url.replace("http", "ws") + "/wms/ws"
        async with stack.session.ws_connect(url, headers=headers) as socket:
            await socket.send_str("hi")
            assert (await socket.receive(timeout=5)).data == "wms echo: hi"
            failing_fsync(monkeypatch)  # the disk fails while the socket is open
            closed = await socket.receive(timeout=5)  # the next recheck can't be logged
            assert closed.type == aiohttp.WSMsgType.CLOSE
            assert (closed.data, closed.extra) == (1011, "decision log unavailable")
        monkeypatch.undo()
        assert stack.gateway.decision_log is not None
        await stack.gateway.decision_log.close()
    records = [json.loads(line) for line in (tmp_path / "decisions.log").read_text().splitlines()]
    decisions = [r for r in records if r.get("path") == "portcullis/gateway/decision"]
    refusals = [r for r in records if r.get("path") == "gateway"]
    assert len(decisions) >= 2 and all(r["result"]["allow"] for r in decisions)
    upgrade, recheck = decisions[0], decisions[-1]
    assert [r["labels"]["overrides_decision_id"] for r in refusals] == [recheck["decision_id"]]
    assert upgrade["decision_id"] != recheck["decision_id"]
    assert "gateway.decision_log_unavailable" in refusals[0]["result"]["reasons"][0]
