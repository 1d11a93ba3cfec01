"""Attack review of the policy hot reload (gateway/policy/reload.py) as deployments
change policy files: `cp`, `>`, an editor, `rsync`, `tar x`, `git checkout`. One
test per attack, named for it. What they hold to (README "Hot reload"): the
gateway enforces only a policy someone wrote whole, never a file caught half
written, and never keeps enforcing an allow the files on disk no longer grant."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
import types
from pathlib import Path

import pytest

from gateway.policy import reload
from gateway.policy.shadow_worker import ShadowWorker
from policy_engine import load_policy_set
from tests.gateway_stack import ServerFactory, Stack, start_stack
from tests.test_gateway_ops import wait_for

STORE = {"groups": ["store"], "amr": ["pwd", "otp"]}
ANALYST = {"groups": ["analyst"], "amr": ["pwd"]}  # no MFA


async def analyst_posts_while_apps_is_half_written(running: Stack, policy_copy: Path) -> None:
    """apps.yaml written in two steps 2 s apart, cut after analytics' `groups:
    [analyst]` (it parses, analytics' MFA gone): an analyst without MFA is
    refused a POST to analytics throughout, and once the whole file is live
    (a GET, which needs no MFA, let through)."""
    token = running.token("alice", **ANALYST)
    assert (await running.get("/analytics/x", token, method="POST")).status == 403
    apps = policy_copy / "data/apps.yaml"
    whole = apps.read_text()
    cut = whole.index("groups: [analyst]\n") + len("groups: [analyst]\n")
    seen = []
    with apps.open("w") as writing:
        writing.write(whole[:cut])
        writing.flush()
        for _ in range(20):  # 2 s: 40 of the watcher's ticks
            seen.append((await running.get("/analytics/x", token, method="POST")).status)
            await asyncio.sleep(0.1)
        writing.write(whole[cut:])
    assert set(seen) == {403}
    holder = running.gateway.policy
    revision = load_policy_set(policy_copy).revision
    await wait_for(lambda: holder.engine is not None and holder.engine.revision == revision)
    assert (await running.get("/analytics/x", token, method="POST")).status == 403
    assert (await running.get("/analytics/x", token)).status == 200


async def test_a_same_size_edit_copied_with_its_old_mtime_is_still_reloaded(
    aiohttp_server: ServerFactory, tmp_path: Path, policy_copy: Path
) -> None:
    """`rsync -a`, `cp -p` and `tar x` give a file its source's mtime. The watcher
    compared path, mtime and size: an edit that kept the size (pos' group `store`
    renamed `clerk`) copied that way changed none of them, and the gateway let the
    store group into pos until some other change."""
    async with start_stack(aiohttp_server, tmp_path, policy=policy_copy) as running:
        token = running.token("alice", **STORE)
        assert (await running.get("/pos/sales", token)).status == 200
        apps = policy_copy / "data/apps.yaml"
        before = apps.stat()
        text = apps.read_text()
        assert text.count("groups: [store]") == 1
        apps.write_text(text.replace("groups: [store]", "groups: [clerk]"))
        os.utime(apps, ns=(before.st_atime_ns, before.st_mtime_ns))  # as rsync -a leaves it
        assert (apps.stat().st_mtime_ns, apps.stat().st_size) == (
            before.st_mtime_ns,
            before.st_size,
        )
        reloads = running.gateway.metrics.policy_reloads
        await wait_for(lambda: reloads.labels("ok")._value.get() >= 2)
        assert (await running.get("/pos/sales", token)).status == 403


async def test_a_data_file_caught_half_written_is_never_enforced(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    policy_copy: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`cp`, `>` or an editor truncates apps.yaml and writes it in steps. Cut after
    analytics' `groups: [analyst]` it still parses, with analytics' MFA gone: the
    watcher read it once it stopped changing for the time a load takes (~1 s), and
    an analyst without MFA could POST to analytics until the rest was written."""
    monkeypatch.setattr(reload, "QUIET", 3.0)  # a pause well over a load's time, under this
    async with start_stack(aiohttp_server, tmp_path, policy=policy_copy) as running:
        await analyst_posts_while_apps_is_half_written(running, policy_copy)


async def test_a_data_file_caught_half_written_is_never_enforced_when_the_file_clock_lags(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    policy_copy: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wait for quiet files read their age off their ctime, which a network
    mount's server stamps with its own clock: one an hour behind this host's made
    a file being written look an hour old, there was no wait at all, and the
    half-written apps.yaml (analytics' MFA gone) was enforced. A change the
    watcher saw is as recent as when it saw it, whatever the ctime says."""
    monkeypatch.setattr(reload, "QUIET", 3.0)  # a pause well over a load's time, under this
    real = time.time
    monkeypatch.setattr(
        reload, "time", types.SimpleNamespace(time=lambda: real() + 3600, sleep=time.sleep)
    )
    async with start_stack(aiohttp_server, tmp_path, policy=policy_copy) as running:
        await analyst_posts_while_apps_is_half_written(running, policy_copy)


async def test_an_allow_remembered_before_a_reload_that_denies_it_is_never_reused(
    aiohttp_server: ServerFactory, tmp_path: Path, policy_copy: Path
) -> None:
    """The decision memo reuses an allow the policy can't tell apart: one remembered
    under the old catalogue must not answer after a data-only reload (memo.rego's
    declared reads name no data file) takes the group away, nor after a rejected
    reload that followed it."""
    async with start_stack(aiohttp_server, tmp_path, policy=policy_copy) as running:
        token = running.token("alice", **STORE)
        hits = running.gateway.metrics.memo_hits
        for _ in range(2):
            assert (await running.get("/pos/sales", token)).status == 200
        assert hits.value() == 1  # the second was the remembered allow
        apps = policy_copy / "data/apps.yaml"
        apps.write_text(apps.read_text().replace("groups: [store]", "groups: [store-leads]"))
        reloads = running.gateway.metrics.policy_reloads
        await wait_for(lambda: reloads.labels("ok")._value.get() >= 2)
        assert (await running.get("/pos/sales", token)).status == 403
        (policy_copy / "gateway/broken.rego").write_text("package portcullis.gateway\nx if {\n")
        await wait_for(lambda: reloads.labels("rejected")._value.get() >= 1)
        assert (await running.get("/pos/sales", token)).status == 403
        assert hits.value() == 1


async def test_a_storm_of_sighups_costs_two_loads_not_one_each(
    aiohttp_server: ServerFactory, tmp_path: Path, policy_copy: Path
) -> None:
    """Each SIGHUP queued a whole reload (a child process loads the candidate
    first, ~1 s of CPU): a config reloader retrying 20 times cost 20 loads, one
    after another. With one reload running and one waiting, the waiting one reads
    the files after any later signal: those are dropped, and what was written
    before the storm is still what ends up live."""
    async with start_stack(
        aiohttp_server, tmp_path, policy=policy_copy, policy_options={"watch": False}
    ) as running:
        token = running.token("alice", **STORE)
        assert (await running.get("/pos/sales", token)).status == 200
        apps = policy_copy / "data/apps.yaml"
        apps.write_text(apps.read_text().replace("groups: [store]", "groups: [clerk]"))
        reloads = running.gateway.metrics.policy_reloads
        for _ in range(20):
            os.kill(os.getpid(), signal.SIGHUP)
            await asyncio.sleep(0.01)  # each signal handled before the next
        await wait_for(lambda: not running.gateway._reloads, timeout=60)
        assert 1 <= reloads.labels("ok")._value.get() - 1 <= 2
        assert (await running.get("/pos/sales", token)).status == 403


async def test_a_storm_of_sighups_costs_the_shadow_process_one_load(
    tmp_path: Path, policy_copy: Path
) -> None:
    """The shadow process got a reload message a signal and loaded its policy for
    each, its decisions waiting meanwhile. A message sent before the last load
    began is answered by that load."""
    out = io.BytesIO()
    worker = ShadowWorker(str(policy_copy), 250, out)
    await worker.load("start")
    storm = [{"op": "reload", "sent": time.monotonic()} for _ in range(20)]
    try:
        for message in storm:
            await worker.handle(message)
        loads = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [load["why"] for load in loads] == ["start", "SIGHUP"]
        await worker.handle({"op": "reload", "sent": time.monotonic()})  # after it: loads
        assert len(out.getvalue().splitlines()) == 3
    finally:
        if worker.engine is not None:
            await worker.engine.close()


async def test_a_rule_kept_in_a_test_file_never_decides_so_the_memo_cannot_disagree(
    aiohttp_server: ServerFactory, tmp_path: Path, policy_copy: Path
) -> None:
    """The compiled VM, the memo's check of what the policy reads, replay and the
    input contract leave `*_test.rego` files out; the interpreter that confirms
    an allow read them. A deny condition kept in a test file refused a request on
    the interpreter, and the same request, once an allow was remembered for its
    identity, was let through from the memo: one request, two answers. Test files
    take part in no decision now, on any engine."""
    (policy_copy / "gateway/extra_test.rego").write_text(
        "package portcullis.gateway\n\nimport rego.v1\n\n"
        'missing_override_group if input.attributes.request.http.headers["x-test-rule"] == "deny"\n'
    )
    async with start_stack(aiohttp_server, tmp_path, policy=policy_copy) as running:
        token = running.token("alice", groups=["warehouse"], amr=["pwd", "otp"])
        marked = {"X-Test-Rule": "deny"}
        statuses = [
            (await running.get("/wms/stock", token, headers=marked)).status,
            (await running.get("/wms/stock", token)).status,  # remembered for alice
            (await running.get("/wms/stock", token, headers=marked)).status,
        ]
        assert statuses == [200, 200, 200]
