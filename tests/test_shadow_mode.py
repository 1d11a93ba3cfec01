"""Shadow mode: a candidate policy decides beside the live one, in its own process."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.chain import SHADOW_PATH
from gateway.config import ConfigError, DecisionLogConfig, parse_config
from gateway.policy.shadow_worker import ShadowWorker
from portcullis.cli import main
from tests.conftest import FIXTURES, POLICIES
from tests.decision_traffic import Recorded, Sent, record_traffic, refunds_candidate
from tests.gateway_stack import Stack, free_port, start_stack

SLOW = FIXTURES / "replay/slow"
BROKEN = FIXTURES / "replay/broken"


def refunds_300(directory: Path) -> Path:
    return refunds_candidate(directory)


def shadow_policy(shadow: Path, **options: Any) -> dict[str, Any]:
    """start_stack's policy_options for a shadow policy."""
    return {"shadow": str(shadow), **options}


async def until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


async def shadow_ready(stack: Stack) -> None:
    assert stack.gateway.shadow is not None
    await until(lambda: stack.gateway.shadow.ready)


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{wanted}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def answer(sent: Sent) -> Any:
    """What a client got, without what differs between any two runs (ids, ports)."""
    body: Any = json.loads(sent.body) if sent.body.startswith(b"{") else sent.body
    if isinstance(body, dict):
        body.pop("decision_id", None)
        # The two runs are seconds apart: "last sign-in was 1200 s ago" may read 1201.
        body["reasons"] = [
            re.sub(r"was \d+ s ago", "was N s ago", r) for r in body.get("reasons", [])
        ]
        if "headers" in body:  # a backend's echo: what it was asked
            body = {k: body[k] for k in ("app", "method", "path")}
    return sent.status, body


def events(recorded: Recorded) -> list[dict[str, Any]]:
    lines = recorded.log.read_text().splitlines()
    return [json.loads(line) for line in lines if '"decision_id"' in line]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recorded, Recorded, Path]:
    """The same 300 requests through a gateway without and with a shadow policy."""
    base = tmp_path_factory.mktemp("shadow")
    candidate = refunds_300(base)
    plain = asyncio.run(record_traffic(base / "plain", 300))
    shadowed = asyncio.run(
        record_traffic(
            base / "shadowed", 300, before=shadow_ready, policy_options=shadow_policy(candidate)
        )
    )
    return plain, shadowed, candidate


def test_shadow_never_changes_a_response(runs: tuple[Recorded, Recorded, Path]) -> None:
    plain, shadowed, _ = runs
    assert [answer(s) for s in shadowed.sent] == [answer(s) for s in plain.sent]
    assert {s.status for s in shadowed.sent} >= {200, 401, 403, 404}


def test_shadow_divergences_are_logged_with_both_results(
    runs: tuple[Recorded, Recorded, Path],
) -> None:
    _, shadowed, candidate = runs
    logged = events(shadowed)
    live = {e["decision_id"]: e for e in logged if e["path"] == "portcullis/gateway/decision"}
    divergences = [e for e in logged if e["labels"].get("shadow") is True]
    assert divergences and all(e["path"] == SHADOW_PATH for e in divergences)
    kinds = {e["result"]["divergence"] for e in divergences}
    assert kinds == {"allow-to-deny", "step-up"}
    for event in divergences:
        assert event["labels"]["shadow_policy"] == str(candidate)
        original = live[event["labels"]["live_decision_id"]]
        assert event["result"]["live"] == original["result"]  # the live result, as enforced
        assert event["input"] == original["input"]
        if event["result"]["divergence"] == "allow-to-deny":
            assert original["result"]["allow"] is True
            assert event["result"]["shadow"]["step_up"] == {"acr": "phr", "max_age": 300}
        assert event["input"]["attributes"]["request"]["http"]["headers"]["authorization"] == (
            "**REDACTED**"
        )


def test_shadow_divergences_are_counted_in_metrics(
    runs: tuple[Recorded, Recorded, Path],
) -> None:
    _, shadowed, _ = runs
    divergences = [e for e in events(shadowed) if e["labels"].get("shadow") is True]
    for kind in ("allow-to-deny", "step-up"):
        logged = sum(1 for e in divergences if e["result"]["divergence"] == kind)
        name = "portcullis_shadow_divergences_total"
        assert metric(shadowed.metrics, name, app="pos", kind=kind) == logged > 0
    sent = metric(shadowed.metrics, "portcullis_shadow_decisions_total", outcome="sent")
    assert sent == sum(1 for e in events(shadowed) if e["path"] == "portcullis/gateway/decision")


def test_shadow_agrees_with_replay_and_replay_skips_shadow_events(
    capsys: pytest.CaptureFixture[str], runs: tuple[Recorded, Recorded, Path]
) -> None:
    _, shadowed, candidate = runs
    code = main(["policy", "replay", "--log", str(shadowed.log), "--policy", str(candidate),
                 "--key", str(shadowed.key), "--output", "json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    divergences = [e for e in events(shadowed) if e["labels"].get("shadow") is True]
    assert report["not_replayed"]["shadow_events"] == len(divergences)
    for kind in ("allow-to-deny", "step-up", "deny-to-allow", "reasons", "error"):
        shadow = sum(1 for e in divergences if e["result"]["divergence"] == kind)
        assert report["changes"][kind]["count"] == shadow
    assert code == 1


async def test_shadow_policy_that_fails_to_load_never_affects_live_traffic(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    shadow = tmp_path / "shadow"
    shutil.copytree(BROKEN, shadow)
    async with start_stack(aiohttp_server, tmp_path, policy_options=shadow_policy(shadow)) as stack:
        metrics = stack.gateway.metrics
        await until(lambda: metric(metrics.render().decode(), "portcullis_shadow_reloads_total",
                                   result="rejected") >= 1)  # fmt: skip
        token = stack.token("clerk", groups=["store"], amr=["hwk"], auth_age=600)
        response = await stack.get("/pos/refunds/1", token)
        assert response.status == 200
        text = metrics.render().decode()
        assert metric(text, "portcullis_shadow_decisions_total", outcome="unavailable") == 1
        # Fixing the shadow's files loads it (hot reload); then it diverges.
        shutil.rmtree(shadow)
        shutil.copytree(refunds_300(tmp_path), shadow)
        await shadow_ready(stack)
        response = await stack.get("/pos/refunds/2", token)
        assert response.status == 200
        name = "portcullis_shadow_divergences_total"
        await until(lambda: metric(metrics.render().decode(), name, app="pos",
                                   kind="allow-to-deny") == 1)  # fmt: skip


async def test_shadow_data_file_with_a_yaml_date_is_rejected_and_hot_reload_goes_on(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """The date raised TypeError, which ended the shadow's file watcher: nothing
    counted, and the candidate never reloaded again."""
    candidate = refunds_300(tmp_path)
    async with start_stack(aiohttp_server, tmp_path,
                           policy_options=shadow_policy(candidate)) as stack:  # fmt: skip
        await shadow_ready(stack)
        shadow, metrics = stack.gateway.shadow, stack.gateway.metrics
        assert shadow is not None
        started = shadow.revision
        dated = candidate / "data/extra.yaml"
        shutil.copy(FIXTURES / "policies/yaml_date/extra.yaml", dated)
        await until(lambda: metric(metrics.render().decode(), "portcullis_shadow_reloads_total",
                                   result="rejected") == 1, timeout=8)  # fmt: skip
        assert f"{dated}:3:10: data.extra.since" in (shadow.last_error or "")
        assert shadow.revision == started  # the last good candidate goes on
        dated.unlink()
        (candidate / "data/notes.yaml").write_text("notes: {reviewed: true}\n")
        await until(lambda: shadow.revision not in (None, started), timeout=8)
        assert metric(metrics.render().decode(), "portcullis_shadow_restarts_total") == 0


async def test_shadow_with_a_yaml_date_at_start_is_rejected_and_not_restarted(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """It crash-looped: the process died on the TypeError at each start, with a
    traceback and never a `rejected`. Now it is counted once, the process waits
    without a policy (README: a shadow failing at start), and a fix loads."""
    candidate = refunds_300(tmp_path)
    dated = candidate / "data/extra.yaml"
    shutil.copy(FIXTURES / "policies/yaml_date/extra.yaml", dated)
    async with start_stack(aiohttp_server, tmp_path,
                           policy_options=shadow_policy(candidate)) as stack:  # fmt: skip
        metrics = stack.gateway.metrics
        await until(lambda: metric(metrics.render().decode(), "portcullis_shadow_reloads_total",
                                   result="rejected") == 1, timeout=8)  # fmt: skip
        await asyncio.sleep(1.5)  # past the first restart's 1 s backoff
        text = metrics.render().decode()
        assert metric(text, "portcullis_shadow_restarts_total") == 0
        assert metric(text, "portcullis_shadow_reloads_total", result="rejected") == 1
        dated.unlink()
        await shadow_ready(stack)


async def test_shadow_watcher_survives_a_directory_removed_while_it_scans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ConfigMap update removes the old `..<timestamp>` directory; removed between
    the scan listing it and reading it, it raised FileNotFoundError out of the
    shadow process's watcher, and the candidate never reloaded again."""
    candidate = refunds_300(tmp_path)
    swapped = candidate / "..2026_01_01_00_00_00.000000001"
    swapped.mkdir()
    (swapped / "apps.yaml").write_text("# the previous ConfigMap's contents\n")
    scandir = os.scandir
    removed = asyncio.Event()

    def scandir_racing_the_kubelet(path: Any = ".") -> Any:
        if isinstance(path, str | os.PathLike) and Path(path) == swapped and swapped.exists():
            shutil.rmtree(swapped)  # between listing the directory and reading it
            removed.set()
        return scandir(path)

    out = io.BytesIO()
    worker = ShadowWorker(str(candidate), 250, out)

    def revisions() -> list[str]:
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        return [line["revision"] for line in lines if line.get("ok")]

    await worker.load("start")
    watcher = asyncio.ensure_future(worker.watch(0.05))
    try:
        monkeypatch.setattr(os, "scandir", scandir_racing_the_kubelet)
        await asyncio.wait_for(removed.wait(), 5)
        monkeypatch.undo()
        (candidate / "data/notes.yaml").write_text("notes: {reviewed: true}\n")
        await until(lambda: len(set(revisions())) == 2, timeout=8)
        assert not watcher.done()
    finally:
        watcher.cancel()
        if worker.engine is not None:
            await worker.engine.close()


async def test_a_shadow_process_that_keeps_exiting_is_restarted_ever_later(
    aiohttp_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """README: restarted after 1 s, doubling to 30 s. The backoff went back to 1 s
    whenever the process exited, which it always does: a crash loop every second."""
    caplog.set_level(logging.ERROR, logger="portcullis.shadow")
    policy = shadow_policy(refunds_300(tmp_path))
    async with start_stack(aiohttp_server, tmp_path, policy_options=policy) as stack:
        shadow = stack.gateway.shadow
        assert shadow is not None
        for _ in range(2):
            await shadow_ready(stack)
            assert shadow._process is not None
            pid = shadow._process.pid
            os.kill(pid, signal.SIGKILL)  # the process this test's gateway started
            await until(lambda pid=pid: shadow._process is None or shadow._process.pid != pid)
        await until(lambda: len(restarts(caplog)) == 2)
        assert restarts(caplog) == ["1", "2"]


def restarts(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The delays the shadow's supervisor announced, in seconds."""
    found = (re.search(r"restarting in (\d+) s", r.getMessage()) for r in caplog.records)
    return [match.group(1) for match in found if match]


async def test_shadow_process_crash_is_restarted_and_live_traffic_goes_on(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    policy = shadow_policy(refunds_300(tmp_path))
    async with start_stack(aiohttp_server, tmp_path, policy_options=policy) as stack:
        await shadow_ready(stack)
        shadow = stack.gateway.shadow
        assert shadow is not None and shadow._process is not None
        os.kill(shadow._process.pid, signal.SIGKILL)  # the process this test's gateway started
        token = stack.token("clerk", groups=["store"], amr=["hwk"], auth_age=60)
        for n in range(5):
            assert (await stack.get(f"/pos/refunds/{n}", token)).status == 200
        await until(lambda: metric(stack.gateway.metrics.render().decode(),
                                   "portcullis_shadow_restarts_total") == 1)  # fmt: skip
        await shadow_ready(stack)


async def test_slow_shadow_policy_does_not_delay_responses(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """A candidate taking tens of ms per decision: were it on the response path,
    the median response would grow by that much."""

    async def median_ms(stack: Stack) -> float:
        token = stack.token("clerk", groups=["store"], amr=["otp"], auth_age=60)
        times = []
        for n in range(30):
            started = time.perf_counter()
            response = await stack.get(f"/pos/sales/{n}", token)
            await response.read()
            assert response.status == 200
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    def no_fsync_wait(where: Path) -> dict[str, Any]:
        # /pos is PCI: by default each answer waits for its event's fsync, and the
        # disk's latency, not the shadow, decided the medians (an fsync taking 0.5 s:
        # 796 ms shadowed against 503 ms plain).
        config = DecisionLogConfig(path=where / "decisions.log", sign_interval=0.5,
                                   durability="async")  # fmt: skip
        return {"decision_log": config}

    async with start_stack(
        aiohttp_server, tmp_path / "plain", **no_fsync_wait(tmp_path / "plain")
    ) as stack:
        plain = await median_ms(stack)
    slow = shadow_policy(SLOW, timeout_ms=1000)
    async with start_stack(
        aiohttp_server, tmp_path / "slow", policy_options=slow, **no_fsync_wait(tmp_path / "slow")
    ) as stack:
        await shadow_ready(stack)
        shadowed = await median_ms(stack)
        await until(lambda: bool([e for e in stack.log_path.read_text().splitlines()
                                  if '"shadow":true' in e]))  # fmt: skip
        slow_event = next(json.loads(line) for line in stack.log_path.read_text().splitlines()
                          if '"shadow":true' in line)  # fmt: skip
    shadow_ms = slow_event["metrics"]["timer_rego_query_eval_ns"] / 1e6
    assert shadow_ms > 15  # the shadow really was slow
    assert shadowed < plain + shadow_ms / 2, (plain, shadowed, shadow_ms)


async def test_a_shadow_answering_megabytes_is_an_error_not_a_huge_event(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    """A candidate whose answer ran away (a comprehension over a range): each
    divergence event carried all of it, parsed on the gateway's event loop and
    written, hashed and fsync'd into the live log (12 MB answers: p50 6 -> 94 ms,
    a 490 MB log after 41 requests)."""
    candidate = tmp_path / "runaway"
    candidate.mkdir()
    (candidate / "decision.rego").write_text(
        "package portcullis.gateway\n\nimport rego.v1\n\n"
        'decision := {"allow": false, "http_status": 403, "headers": {}, '
        '"step_up": {"acr": "phr", "why": many}, "reasons": many}\n\n'
        'many := [sprintf("reason %d: %s", [i, pad]) | some i in numbers.range(1, 3000)]\n\n'
        'pad := "................................................"\n'
    )
    options = shadow_policy(candidate, timeout_ms=5000)
    async with start_stack(aiohttp_server, tmp_path / "run", policy_options=options) as stack:
        await shadow_ready(stack)
        token = stack.token("clerk", groups=["store"], amr=["otp"], auth_age=60)
        async with await stack.get("/pos/sales/1", token) as response:
            assert response.status == 200
        await until(lambda: '"shadow":true' in stack.log_path.read_text())
        line = next(line for line in stack.log_path.read_text().splitlines()
                    if '"shadow":true' in line)  # fmt: skip
    assert len(line) < 32 * 1024
    event = json.loads(line)
    assert event["result"]["divergence"] == "error"
    assert event["result"]["shadow"]["allow"] is False
    assert event["result"]["shadow"]["step_up"] is None  # a runaway step-up too
    # Read as the live policy's would be (gateway/policy/decision.py): a malformed decision.
    # (Its numbers masked as any an error's message holds: one may be the request's.)
    error = event["result"]["shadow_error"]
    assert "characters of reasons, headers and step_up, over **REDACTED**" in error


def test_shadow_config_key(tmp_path: Path) -> None:
    def policy(**keys: Any) -> Any:
        return parse_config({"auth": False, "policy": keys}, tmp_path).policy

    assert policy(source="policies", shadow="candidate/").shadow == "candidate/"
    assert policy().shadow is None
    with pytest.raises(ConfigError, match=r"policy\.shadow"):
        policy(shadow=" ")
    with pytest.raises(ConfigError, match=r"policy\.shadow"):
        policy(shadow=["a"])


async def test_demo_shadow_flag_runs_a_candidate_beside_the_live_policy(tmp_path: Path) -> None:
    # `portcullis demo --shadow DIR`: the worked example's candidate (refunds
    # within 300 s) beside the shipped policy, as a user would try it.
    candidate = refunds_300(tmp_path)
    state, port, admin = tmp_path / "state", free_port(), free_port()
    command = [sys.executable, "-m", "portcullis", "demo", "--port", str(port), "--base-port", "0",
               "--admin-port", str(admin), "--state-dir", str(state), "--no-redis",
               "--shadow", str(candidate)]  # fmt: skip
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def get(url: str, token: str | None = None) -> tuple[int, str]:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                         if token else {})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            return 0, ""

    metrics = f"http://127.0.0.1:{admin}/metrics"
    try:
        await until(lambda: demo.poll() is not None or "portcullis_shadow_policy_info{" in
                    get(metrics)[1], timeout=60)  # fmt: skip
        assert demo.poll() is None, demo.communicate()[1]
        token = subprocess.run(
            [sys.executable, "-m", "portcullis", "demo", "token", "--state-dir", str(state),
             "--sub", "bob", "--groups", "store", "--amr", "pwd,hwk", "--auth-age", "600"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        # Signed in 10 minutes ago: live (900 s) allows, the shadow (300 s) would not.
        status, _ = get(f"http://127.0.0.1:{port}/pos/refunds/1", token)
        assert status == 200
        await until(lambda: metric(get(metrics)[1], "portcullis_shadow_divergences_total",
                                   app="pos", kind="allow-to-deny") == 1.0)  # fmt: skip
    finally:
        demo.send_signal(signal.SIGTERM)
        out, err = demo.communicate(timeout=30)
    assert demo.returncode == 0, err
    assert f"Shadow mode: {candidate} decides every request too" in out
    logged = [json.loads(line) for line in (state / "decisions.log").read_text().splitlines()
              if '"decision_id"' in line]  # fmt: skip
    shadow = [e for e in logged if e["labels"].get("shadow") is True]
    assert [e["result"]["divergence"] for e in shadow] == ["allow-to-deny"]


def test_demo_shadow_that_does_not_exist_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["demo", "--shadow", str(tmp_path / "nowhere"), "--state-dir", str(tmp_path)])
    assert code == 2
    assert "no such policy directory or bundle" in capsys.readouterr().err


async def test_a_shadow_policy_that_never_loaded_says_none_runs_not_that_one_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At start there is no last good shadow policy to keep: the log line said
    there was one."""
    import io

    from gateway.policy.shadow_worker import ShadowWorker

    shadow = tmp_path / "shadow"
    shutil.copytree(BROKEN, shadow)
    worker = ShadowWorker(str(shadow), 250, io.BytesIO())
    with caplog.at_level(logging.ERROR, logger="portcullis.shadow"):
        await worker.load("start")
    assert f"shadow policy {shadow} rejected (start); no shadow policy runs" in caplog.text
    assert "keeping the last good one" not in caplog.text
    shutil.rmtree(shadow)
    shutil.copytree(POLICIES, shadow)
    await worker.load("files changed")
    assert worker.engine is not None
    shutil.rmtree(shadow)
    shutil.copytree(BROKEN, shadow)
    with caplog.at_level(logging.ERROR, logger="portcullis.shadow"):
        await worker.load("files changed")
    assert "rejected (files changed); keeping the last good one" in caplog.text
