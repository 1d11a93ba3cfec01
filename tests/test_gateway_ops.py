"""Operating the gateway: health, readiness, metrics, hot reload that never
regresses, failing closed, config errors, the demo, workers and shutdown."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import heap
from gateway.config import ConfigError, load_config
from gateway.demo import DevIssuer
from gateway.operations import build_admin_app
from policy_engine import load_policy_set, policy_set
from tests.conftest import FIXTURES, POLICIES, ROOT
from tests.gateway_stack import ServerFactory, Stack, free_port, start_stack

WAREHOUSE = {"groups": ["warehouse"], "amr": ["pwd", "otp"]}


@pytest.fixture
async def admin(aiohttp_server: ServerFactory, stack: Stack) -> str:
    """The admin listener (/metrics, /readyz, /audit/head) of ``stack``'s gateway."""
    server = await aiohttp_server(build_admin_app(stack.gateway))
    return f"http://127.0.0.1:{server.port}"


async def test_public_health_and_readiness_say_nothing_more(stack: Stack) -> None:
    health = await stack.get("/healthz")
    assert health.status == 200 and await health.json() == {"status": "ok"}
    ready = await stack.get("/readyz")
    assert ready.status == 200 and await ready.json() == {"ready": True}


async def test_metrics_are_not_served_on_the_public_listener(stack: Stack) -> None:
    response = await stack.get("/metrics")
    assert response.status == 404
    text = await response.text()
    assert "portcullis_" not in text and stack.issuer.issuer not in text
    assert (await response.json())["error"] == "no_route"
    await stack.gateway.decision_log.close()  # type: ignore[union-attr]
    events = [json.loads(line) for line in stack.log_path.read_text().splitlines()]
    refused = [e for e in events if e.get("path") == "gateway"]
    assert [e["input"]["attributes"]["request"]["http"]["path"] for e in refused] == ["/metrics"]
    for path in ("/audit/head", "/readyz?verbose=1"):
        body = await (await stack.get(path)).text()
        assert "policy_revision" not in body and '"seq"' not in body


async def test_admin_listener_serves_metrics_and_readyz(stack: Stack, admin: str) -> None:
    async with aiohttp.ClientSession() as session:
        ready = await session.get(f"{admin}/readyz")
        assert ready.status == 200
        body = await ready.json()
        assert body["policy_revision"] == stack.gateway.policy.engine.revision  # type: ignore[union-attr]
        assert body["instance"] == stack.gateway.instance_id
        metrics = await session.get(f"{admin}/metrics")
        assert metrics.status == 200
        assert "portcullis_policy_reloads_total" in await metrics.text()
        # The writer thread signs the start right after the log opens, possibly just
        # after the listener is up: until then the head is 404 "nothing signed yet".
        log = stack.gateway.decision_log
        assert log is not None
        await wait_for(lambda: log.signed_head() is not None, timeout=5.0)
        head = await (await session.get(f"{admin}/audit/head")).json()
        assert head["type"] == "chain_signature" and head["reason"] == "start"
        assert head["file"] == str(stack.log_path) and len(head["signature"]) == 86
        # The admin app serves operations only: nothing is proxied from it.
        assert (await session.get(f"{admin}/wms/stock")).status == 404
    assert stack.total_forwarded() == 0


async def test_metrics_count_requests_decisions_and_latency(stack: Stack, admin: str) -> None:
    await stack.get("/wms/a", stack.token("alice", **WAREHOUSE))
    await stack.get("/wms/a", stack.token("eve", groups=["store"], amr=["otp"]))
    await stack.get("/nowhere/")
    async with aiohttp.ClientSession() as session:
        text = await (await session.get(f"{admin}/metrics")).text()
    assert 'portcullis_requests_total{app="wms",status="200"} 1.0' in text
    assert 'portcullis_requests_total{app="wms",status="403"} 1.0' in text
    assert 'portcullis_requests_total{app="-",status="404"} 1.0' in text
    assert 'portcullis_decisions_total{app="wms",result="allow"} 1.0' in text
    assert 'portcullis_decisions_total{app="wms",result="deny"} 1.0' in text
    assert "portcullis_decision_duration_seconds_count 2.0" in text
    assert 'portcullis_request_duration_seconds_count{app="wms"} 2.0' in text
    assert 'portcullis_jwks_refreshes_total{issuer="' in text
    assert 'portcullis_policy_reloads_total{result="ok"} 1.0' in text


def decision_policy(tmp_path: Path, rego: str) -> Path:
    """A policy directory of one module in package portcullis.gateway: `rego` after
    the package and import lines."""
    policy = tmp_path / "odd"
    policy.mkdir()
    (policy / "decision.rego").write_text(f"package portcullis.gateway\nimport rego.v1\n{rego}")
    return policy


async def test_policy_that_errors_fails_closed(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    broken = decision_policy(
        tmp_path,
        'decision := {"allow": true, "n": 1 / count(input.identity.groups)} if '
        "input.identity.authenticated\n",
    )
    async with start_stack(aiohttp_server, tmp_path, policy=broken) as running:
        response = await running.get("/wms/stock", running.token("alice", groups=[], amr=["otp"]))
        assert response.status == 403
        assert (await response.json())["reasons"] == ["policy evaluation failed"]
        assert running.total_forwarded() == 0


@pytest.mark.parametrize(
    "answer",
    ['{"allow": "true"}', '{"allow": 1}', '{"allow": false, "reasons": 5}',
     '{"allow": true, "reasons": "ok"}', '{"allow": true, "headers": ["x-remote-user"]}',
     '{"allow": true, "headers": "x-remote-user: alice"}'],
    ids=["allow-string", "allow-number", "reasons-number", "allow-with-reasons-string",
         "headers-array", "headers-string"],
)  # fmt: skip
async def test_policy_answering_a_malformed_decision_is_a_deny(
    aiohttp_server: ServerFactory, tmp_path: Path, answer: str
) -> None:
    """An answer the contract can't read fails closed, with a reason saying so. (A
    number as reasons crashed the handler; a string as reasons let an allow through,
    its letters as reasons; headers that weren't an object, or a header value that
    wasn't a string, were dropped and the request forwarded without them: a backend
    reading X-Remote-User got none.)"""
    odd = decision_policy(tmp_path, f"decision := {answer}\n")
    async with start_stack(aiohttp_server, tmp_path, policy=odd) as running:
        response = await running.get("/wms/stock", running.token("alice", **WAREHOUSE))
        assert response.status == 403
        assert (await response.json())["reasons"] == ["policy returned a malformed decision"]
        assert running.total_forwarded() == 0


@pytest.mark.parametrize(
    "headers",
    ['{"x-user": "alice\\r\\nx-remote-user: admin"}', '{"x-user": "a\\nb"}',
     '{"x-user": "a\\u0000b"}', '{"x-user\\r\\nx-admin": "1"}', '{"x user": "1"}',
     '{"": "1"}', '{"x-remote-user: admin": "1"}', '{"Transfer-Encoding": "chunked"}',
     '{"Content-Length": "5"}', '{"Host": "admin.internal"}', '{"Connection": "close"}',
     '{"X-Forwarded-For": "10.0.0.1"}', '{"x_forwarded_for": "10.0.0.1"}',
     '{"X-Portcullis-Assertion": "forged"}', '{"X-Remote-User": 7}',
     '{"X-Remote-User": null}', '{"X-Remote-User": ["alice"]}'],
    ids=["crlf-value", "lf-value", "nul-value", "crlf-name", "space-in-name", "empty-name",
         "colon-in-name", "transfer-encoding", "content-length", "host", "connection",
         "x-forwarded-for", "x-forwarded-for-underscored", "assertion", "number-value",
         "null-value", "array-value"],
)  # fmt: skip
async def test_policy_headers_that_would_break_or_forge_the_upstream_request_are_a_deny(
    aiohttp_server: ServerFactory, tmp_path: Path, headers: str
) -> None:
    """A decision's `headers` go to the upstream as they are, so one that isn't a
    header (CR/LF, NUL, not a token) or that frames or addresses the message
    (Transfer-Encoding, Content-Length, Host, hop-by-hop, X-Forwarded-*, the
    assertion) is a malformed decision: a deny, logged as such. (Before, the allow
    was logged and then a CRLF crashed the handler with a 500, a name with a space
    or colon reached the backend as a bad or injected header line, and
    Transfer-Encoding or Content-Length desynchronised the pooled upstream
    connection: the backend waited for a body that the next request's bytes fill.)"""
    odd = decision_policy(
        tmp_path, f'decision := {{"allow": true, "reasons": [], "headers": {headers}}}\n'
    )
    async with start_stack(aiohttp_server, tmp_path, policy=odd) as running:
        response = await running.get("/wms/stock", running.token("alice", **WAREHOUSE))
        assert response.status == 403
        body = await response.json()
        assert body["reasons"] == ["policy returned a malformed decision"]
        assert running.total_forwarded() == 0
        events = await running.events()
        assert [e["result"]["allow"] for e in events] == [False]
        assert events[0]["result"]["reasons"] == ["policy returned a malformed decision"]


async def test_policy_headers_a_backend_may_be_told_still_reach_it(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """What a policy may add: its own headers, the shipped X-Portcullis-App and
    -Classification, and identity headers for a backend behind it (X-Remote-User)."""
    odd = decision_policy(
        tmp_path,
        'decision := {"allow": true, "reasons": [], "headers": {"x-portcullis-app": "wms", '
        '"X-Remote-User": "alice", "x-note": "caf\\u00e9 \\tok"}}\n',
    )
    async with start_stack(aiohttp_server, tmp_path, policy=odd) as running:
        response = await running.get("/wms/stock", running.token("alice", **WAREHOUSE))
        assert response.status == 200
        seen = running.forwarded("wms")[0].headers
        assert seen["x-portcullis-app"] == "wms" and seen["x-remote-user"] == "alice"
        assert seen["x-note"] == "caf\u00e9 \tok"


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_hot_reload_applies_a_good_policy_and_rejects_a_bad_one(
    aiohttp_server: ServerFactory, tmp_path: Path, policy_copy: Path
) -> None:
    async with start_stack(aiohttp_server, tmp_path, policy=policy_copy) as running:
        token = running.token("alice", **WAREHOUSE)
        assert (await running.get("/wms/stock", token)).status == 200
        reloads = running.gateway.metrics.policy_reloads
        apps = policy_copy / "data/apps.yaml"
        apps.write_text(
            apps.read_text().replace("groups: [warehouse]", "groups: [warehouse-leads]")
        )
        await wait_for(lambda: reloads.labels("ok")._value.get() >= 2)
        assert (await running.get("/wms/stock", token)).status == 403

        (policy_copy / "gateway/broken.rego").write_text("package portcullis.gateway\nx if {\n")
        await wait_for(lambda: reloads.labels("rejected")._value.get() >= 1)
        assert "broken.rego" in (running.gateway.policy.last_error or "")
        assert (await running.get("/wms/stock", token)).status == 403  # last good policy
        assert (await running.get("/readyz")).status == 200


async def test_a_reload_to_a_policy_without_the_decision_rule_keeps_the_last_good_one(
    aiohttp_server: ServerFactory, tmp_path: Path, policy_copy: Path
) -> None:
    """A policy written for another package (`package gateway`): the set loaded, and
    every request was denied ("policy evaluation failed") until someone noticed."""
    async with start_stack(aiohttp_server, tmp_path, policy=policy_copy) as running:
        token = running.token("alice", **WAREHOUSE)
        reloads = running.gateway.metrics.policy_reloads
        for module in (policy_copy / "gateway").glob("*.rego"):
            module.unlink()
        (policy_copy / "gateway/decision.rego").write_text(
            'package gateway\n\nimport rego.v1\n\ndecision := {"allow": true}\n'
        )
        expected = (
            f"{policy_copy}: no rule portcullis.gateway.decision: the gateway asks every "
            "request of it (package portcullis.gateway, rule decision)"
        )
        # A reload may have seen the files half replaced first: wait for the last one.
        await wait_for(lambda: running.gateway.policy.last_error == expected)
        assert reloads.labels("ok")._value.get() == 1  # the start's, no other
        assert (await running.get("/wms/stock", token)).status == 200  # last good policy


async def test_a_reload_rejecting_a_rule_that_clashes_with_data_logs_where_both_are(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    policy_copy: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with start_stack(aiohttp_server, tmp_path, policy=policy_copy) as running:
        reloads = running.gateway.metrics.policy_reloads
        rule = policy_copy / "gateway/catalogue_override.rego"
        rule.write_text("package portcullis.catalogue\n\nimport rego.v1\n\napps := {}\n")
        await wait_for(lambda: reloads.labels("rejected")._value.get() >= 1)
        problem = (
            f"{rule}:5:1: conflicting data keys: rule apps and data.portcullis.catalogue.apps "
            f"from {policy_copy}/data/apps.yaml"
        )
        assert running.gateway.policy.last_error == problem
        (logged,) = [r for r in caplog.records if "keeping the last good one" in r.getMessage()]
        assert logged.getMessage().endswith(f"keeping the last good one:\n{problem}")


@pytest.mark.parametrize(
    ("fixture", "name", "error"),
    [("yaml_date/extra.yaml", "extra.yaml", ":3:10: data.extra.since"),
     ("too_deep/deep.json", "deep.json", ": nested too deeply")],
    ids=["yaml-date", "nested-too-deep"],
)  # fmt: skip
async def test_a_data_file_that_does_not_load_is_rejected_and_hot_reload_goes_on(
    aiohttp_server: ServerFactory, tmp_path: Path, policy_copy: Path, fixture: str, name: str,
    error: str,
) -> None:  # fmt: skip
    """A YAML date raised TypeError, and 3,000 nested arrays RecursionError, which
    the reload let through: the watcher died with no log line and no `rejected`,
    and no later change ever loaded."""
    async with start_stack(aiohttp_server, tmp_path, policy=policy_copy) as running:
        token = running.token("alice", **WAREHOUSE)
        reloads = running.gateway.metrics.policy_reloads
        bad = policy_copy / "data" / name
        shutil.copy(FIXTURES / "policies" / fixture, bad)
        await wait_for(lambda: reloads.labels("rejected")._value.get() >= 1)
        assert f"{bad}{error}" in (running.gateway.policy.last_error or "")
        assert (await running.get("/wms/stock", token)).status == 200  # last good policy

        bad.unlink()
        apps = policy_copy / "data/apps.yaml"
        apps.write_text(
            apps.read_text().replace("groups: [warehouse]", "groups: [warehouse-leads]")
        )
        await wait_for(lambda: reloads.labels("ok")._value.get() >= 2)
        assert (await running.get("/wms/stock", token)).status == 403


async def test_a_directory_removed_while_the_watcher_scans_does_not_stop_hot_reload(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    policy_copy: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Kubernetes ConfigMap update swaps `..<timestamp>` directories; one removed
    between the scan listing it and reading it raised FileNotFoundError out of the
    watcher, and no change loaded again. The removal is made to land in that gap."""
    swapped = policy_copy / "..2026_01_01_00_00_00.000000001"
    swapped.mkdir()
    (swapped / "apps.yaml").write_text("# the previous ConfigMap's contents\n")
    scandir = os.scandir
    removed = asyncio.Event()
    loop = asyncio.get_running_loop()

    def scandir_racing_the_kubelet(path: Any = ".") -> Any:
        if isinstance(path, str | os.PathLike) and Path(path) == swapped and swapped.exists():
            shutil.rmtree(swapped)  # between listing the directory and reading it
            loop.call_soon_threadsafe(removed.set)
        return scandir(path)

    async with start_stack(aiohttp_server, tmp_path, policy=policy_copy) as running:
        token = running.token("alice", **WAREHOUSE)
        holder = running.gateway.policy
        assert holder.engine is not None
        started = holder.engine.revision
        monkeypatch.setattr(os, "scandir", scandir_racing_the_kubelet)
        await asyncio.wait_for(removed.wait(), 5)  # the watcher's next scan (every 0.05 s)
        monkeypatch.undo()
        apps = policy_copy / "data/apps.yaml"
        apps.write_text(
            apps.read_text().replace("groups: [warehouse]", "groups: [warehouse-leads]")
        )
        await wait_for(lambda: holder.engine is not None and holder.engine.revision != started)
        assert (await running.get("/wms/stock", token)).status == 403


def _configmap(root: Path, versions: dict[str, dict[str, str]], live: str) -> None:
    """A policy directory laid out as the kubelet mounts a ConfigMap: each version
    in its own `..<name>` directory, `..data` linking to the live one, and each
    file a link through `..data`."""
    root.mkdir()
    for version, files in versions.items():
        (root / f"..{version}").mkdir()
        for name, text in files.items():
            (root / f"..{version}" / name).write_text(text)
    (root / "..data").symlink_to(f"..{live}")
    for name in versions[live]:
        (root / name).symlink_to(f"..data/{name}")


def _swap_configmap(root: Path, version: str) -> None:
    """What the kubelet does on an update: one atomic rename of `..data`."""
    (root / "..data_tmp").symlink_to(f"..{version}")
    os.replace(root / "..data_tmp", root / "..data")


async def test_a_configmap_swapped_mid_read_never_serves_a_mix_of_both_versions(
    aiohttp_server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each file of a ConfigMap mount is read through `..data`: a kubelet swap
    between two reads gave a policy set of old and new files that neither version
    is. Here the update moves a block from b.rego into a.rego; read as a.rego
    before the swap and b.rego after, the block was in neither, and the gateway
    served that set (mallory allowed) until the next poll noticed the change."""
    head = "package portcullis.gateway\nimport rego.v1\n"
    decision = (
        'decision := {"allow": allow, "reasons": []}\ndefault allow := false\n'
        "allow if {\n\tinput.identity.authenticated == true\n\tnot blocked\n}\n"
        "default blocked := false\n"
    )
    block = 'blocked if input.identity.subject == "mallory"\n'
    versions = {
        "v1": {"a.rego": head + decision, "b.rego": head + block},
        "v2": {"a.rego": head + decision + block, "b.rego": head + 'note := "moved"\n'},
    }
    mount = tmp_path / "configmap"
    _configmap(mount, versions, "v1")
    read_file = policy_set._read_file
    swapped = []

    def read_racing_the_kubelet(file: Path, *args: Any) -> None:
        read_file(file, *args)
        if file.name == "a.rego" and not swapped:
            _swap_configmap(mount, "v2")  # between reading a.rego and b.rego
            swapped.append(file)

    async with start_stack(
        aiohttp_server, tmp_path, policy=mount, policy_options={"watch": False}
    ) as running:
        mallory = running.token("mallory", **WAREHOUSE)
        assert (await running.get("/wms/stock", mallory)).status == 403
        monkeypatch.setattr(policy_set, "_read_file", read_racing_the_kubelet)
        await running.gateway.policy.reload("files changed")
        assert swapped
        assert (await running.get("/wms/stock", mallory)).status == 403
        engine = running.gateway.policy.engine
        assert engine is not None
        assert engine.revision == load_policy_set(mount / "..v2").revision
        assert (await running.get("/wms/stock", running.token("alice", **WAREHOUSE))).status == 200


async def test_sighup_reloads(
    aiohttp_server: ServerFactory, tmp_path: Path, policy_copy: Path
) -> None:
    async with start_stack(aiohttp_server, tmp_path, policy=policy_copy) as running:
        before = running.gateway.metrics.policy_reloads.labels("ok")._value.get()
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(
            lambda: running.gateway.metrics.policy_reloads.labels("ok")._value.get() > before
        )


async def test_twenty_reloads_under_load_fail_no_request(
    aiohttp_server: ServerFactory, tmp_path: Path, policy_copy: Path
) -> None:
    async with start_stack(aiohttp_server, tmp_path, policy=policy_copy) as running:
        token = running.token("alice", **WAREHOUSE)
        statuses: list[int] = []
        stop = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                response = await running.get("/wms/stock", token)
                await response.read()
                statuses.append(response.status)

        clients = [asyncio.ensure_future(client()) for _ in range(8)]
        for index in range(20):  # each swaps the engine under 8 clients' requests
            ok = await running.gateway.policy.reload(f"test {index}")
            assert ok
        stop.set()
        await asyncio.gather(*clients)
        assert len(statuses) > 100
        assert set(statuses) == {200}


async def test_a_replaced_policy_is_freed_while_the_heap_is_frozen(
    aiohttp_server: ServerFactory, tmp_path: Path, policy_copy: Path
) -> None:
    """The runner freezes the heap after the start and again after each swap
    (gateway/heap.py): the engine a reload replaced must still be freed, or every
    reload would leak one; a rejected policy swaps nothing."""
    async with start_stack(aiohttp_server, tmp_path, policy=policy_copy) as running:
        holder = running.gateway.policy
        swaps: list[str] = []

        def swapped() -> None:
            swaps.append(holder.engine.revision if holder.engine else "")
            heap.freeze()

        holder.on_swap = swapped
        try:
            heap.freeze()
            assert holder.engine is not None
            replaced = weakref.ref(holder.engine)
            assert await holder.reload("test")
            assert len(swaps) == 1
            assert replaced() is None
            (policy_copy / "gateway/broken.rego").write_text("package portcullis.gateway\nx if {\n")
            assert not await holder.reload("test: broken")
            assert len(swaps) == 1
            token = running.token("alice", **WAREHOUSE)
            assert (await running.get("/wms/stock", token)).status == 200
        finally:
            gc.unfreeze()


def test_invalid_config_is_refused_with_the_key_path(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "issuers:\n  - issuer: https://idp.example\n    audiences: [portcullis]\n"
        "    jwks_url: https://idp.example/jwks\n    algorithms: [RS256, none]\n"
    )
    with pytest.raises(ConfigError, match=r"issuers\[0\]\.algorithms\[1\]: 'none' not allowed"):
        load_config(config)
    result = subprocess.run(
        [sys.executable, "-m", "portcullis", "gateway", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "issuers[0].algorithms[1]: 'none' not allowed" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "routes: [{app: wms, upstream: 'ftp://x'}]\nauth: false\n",
            "routes[0].upstream: must be an http(s) URL",
        ),
        (
            "routes: [{app: wms, upstream: 'http://x', path_prefix: wms}]\nauth: false\n",
            "routes[0].path_prefix: must start and end with '/'",
        ),
        ("listeners: [{port: 99999}]\nauth: false\n", "listeners[0].port: must be 0-65535"),
        ("policy: {timeout_ms: 0}\nauth: false\n", "policy.timeout_ms: must be greater than 0"),
        ("auth: true\n", "issuers: at least one token issuer is required"),
        ("rotues: []\n", "rotues: unknown key"),
        ("routes: [\n", "invalid YAML"),
        ("admin_listener: {port: 8080}\nauth: false\n",
         "admin_listener.port: 8080 is also listeners[0]'s port"),
        ("admin_listener: {port: -1}\nauth: false\n", "admin_listener.port: must be 0-65535"),
        ("admin_listener: {path: /metrics}\nauth: false\n", "admin_listener.path: unknown key"),
        ('decision_log: {path: d.log, name: "a\\nb"}\nauth: false\n',
         "decision_log.name: 1 to 200 printable characters, got 'a\\nb'"),
        ("decision_log: {path: d.log, name: ''}\nauth: false\n",
         "decision_log.name: 1 to 200 printable characters, got ''"),
    ],
)  # fmt: skip
def test_config_errors_name_what_is_wrong(tmp_path: Path, yaml_text: str, message: str) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert message in str(raised.value)


@pytest.mark.parametrize("key", ["source", "shadow"])
def test_an_opa_url_with_credentials_is_refused_without_echoing_them(
    tmp_path: Path, key: str
) -> None:
    """They were never sent (OPA's client takes no user:password), and the URL is
    the policy's revision: the password went into every decision event, the
    shadow's divergence events, /metrics and the SIEM."""
    config = tmp_path / "gateway.yaml"
    config.write_text(f"auth: false\npolicy: {{{key}: 'http://svc:s3cr3t@127.0.0.1:8181'}}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert f"policy.{key}: an OPA URL with credentials" in str(raised.value)
    assert "s3cr3t" not in str(raised.value)
    replayed = portcullis("policy", "replay", "--log", str(config), "--no-verify",
                          "--policy", "http://svc:s3cr3t@127.0.0.1:8181")  # fmt: skip
    assert replayed.returncode == 2 and "with credentials" in replayed.stderr
    assert "s3cr3t" not in replayed.stderr + replayed.stdout


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


def portcullis(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portcullis", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


async def fetch(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def wait_http(url: str, process: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"exited {process.returncode}: {process.stderr.read() if process.stderr else ''}"
            )
        try:
            status, _ = await fetch(url)
            if status == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} not ready")


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    process.send_signal(signal.SIGTERM)
    return process.communicate(timeout=30)


async def test_demo_end_to_end_as_a_user_runs_it(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    demo = subprocess.Popen(
        [sys.executable, "-m", "portcullis", "demo", "--port", str(port), "--base-port", "0",
         "--state-dir", str(state)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz", demo)
        alice = portcullis("demo", "token", "--state-dir", str(state), "--sub", "alice",
                           "--groups", "warehouse", "--amr", "pwd,otp").stdout.strip()  # fmt: skip
        status, seen = await fetch(f"http://127.0.0.1:{port}/wms/stock", alice)
        assert status == 200 and seen["assertion"]["verified"] is True
        bob = portcullis("demo", "token", "--state-dir", str(state), "--sub", "bob",
                         "--groups", "store", "--amr", "pwd,otp").stdout.strip()  # fmt: skip
        status, body = await fetch(f"http://127.0.0.1:{port}/pos/refunds/1", bob)
        assert status == 403 and body["step_up"] == {"acr": "phr", "max_age": 900}
        bob_hwk = portcullis("demo", "token", "--state-dir", str(state), "--sub", "bob",
                             "--groups", "store", "--amr", "pwd,hwk").stdout.strip()  # fmt: skip
        status, _ = await fetch(f"http://127.0.0.1:{port}/pos/refunds/1", bob_hwk)
        assert status == 200
    finally:
        out, err = stop(demo)
    assert demo.returncode == 0, err
    assert "portcullis demo token" in out
    lines = (state / "decisions.log").read_text().splitlines()
    decisions = [json.loads(line) for line in lines if '"decision_id"' in line]
    assert [d["result"]["allow"] for d in decisions] == [True, False, True]
    verified = portcullis("audit", "verify", str(state / "decisions.log"), "--key",
                          str(state / "assertion-key.pem"))  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_demo_token_without_a_demo_state_is_a_clear_error(tmp_path: Path) -> None:
    result = portcullis("demo", "token", "--state-dir", str(tmp_path / "none"), "--sub", "x")
    assert result.returncode == 2
    assert "start `portcullis demo` first" in result.stderr


@pytest.mark.parametrize("ttl", ["-5", "0", "31622401"])
def test_demo_token_refuses_a_ttl_that_makes_a_token_expired_at_birth_or_one_no_gateway_accepts(
    tmp_path: Path, ttl: str
) -> None:
    """`--ttl -5` printed a token already expired, without a word."""
    DevIssuer(tmp_path, "http://127.0.0.1:8080/dev-oidc")
    result = portcullis("demo", "token", "--state-dir", str(tmp_path), "--sub", "x", "--ttl", ttl)
    assert result.returncode == 2 and result.stdout == ""
    assert f"error: argument --ttl: {ttl}: must be 1 to 31622400 seconds" in result.stderr


@pytest.mark.parametrize("age", ["-5", "-1"])
def test_demo_token_refuses_a_negative_auth_age_that_puts_the_sign_in_in_the_future(
    tmp_path: Path, age: str
) -> None:
    """`--auth-age -5` printed a token whose auth_time was 5 s from now, without a word."""
    DevIssuer(tmp_path, "http://127.0.0.1:8080/dev-oidc")
    result = portcullis(
        "demo", "token", "--state-dir", str(tmp_path), "--sub", "x", "--auth-age", age
    )
    assert result.returncode == 2 and result.stdout == ""
    assert f"error: argument --auth-age: {age}: must be 0 or more seconds" in result.stderr


def test_demo_token_run_outside_the_demos_directory_says_where_it_looked_and_how_to_point_at_it(
    tmp_path: Path,
) -> None:
    """`make demo` keeps its keys in .portcullis-demo/ of the checkout: a second terminal
    in another directory finds none there while the demo runs."""
    result = subprocess.run(
        [sys.executable, "-m", "portcullis", "demo", "token", "--sub", "alice"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert str(tmp_path / ".portcullis-demo") in result.stderr
    assert "--state-dir" in result.stderr


@pytest.mark.parametrize("taken", ["listeners[0]", "admin_listener"])
def test_a_gateway_whose_port_is_taken_says_which_listener_and_leaves_a_log_that_verifies(
    tmp_path: Path, taken: str
) -> None:
    """A second gateway started on the demo's port stopped with a bare `[Errno 98]`,
    an `Unclosed client session` error after it, and a decision log without its end
    signed: `audit verify` then called the log INCOMPLETE, as after a crash."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        port = busy if taken == "listeners[0]" else free_port()
        admin_port = busy if taken == "admin_listener" else free_port()
        config = tmp_path / "gateway.yaml"
        config.write_text(
            f"listeners: [{{address: 127.0.0.1, port: {port}}}]\nauth: false\n"
            f"admin_listener: {{address: 127.0.0.1, port: {admin_port}}}\n"
            f"policy: {{source: {POLICIES}}}\n"
            f"decision_log: {{path: {tmp_path / 'decisions.log'}}}\n"
        )
        result = portcullis("gateway", "--config", str(config))
    assert result.returncode == 1
    assert (
        f"gateway failed to start: {taken}: 127.0.0.1:{busy} is already in use (another "
        "gateway, or the demo?); stop it or give this listener another port"
    ) in result.stderr
    assert "Unclosed" not in result.stderr
    verified = portcullis("audit", "verify", str(tmp_path / "decisions.log"), "--key",
                          str(tmp_path / "assertion-key.pem"))  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("OK: 0 events")


async def test_two_workers_share_the_port_and_shut_down_cleanly(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"listeners: [{{address: 127.0.0.1, port: {port}}}]\nauth: false\n"
        f"admin_listener: {{address: 127.0.0.1, port: {admin_port}}}\n"
        f"policy: {{source: {POLICIES}}}\n"
        "routes: [{app: wms, upstream: 'http://127.0.0.1:9', path_prefix: /wms/}]\n"
        f"decision_log: {{path: {tmp_path / 'decisions.log'}, name: store-gw}}\n"
    )
    gateway = subprocess.Popen(
        [sys.executable, "-m", "portcullis", "gateway", "--config", str(config), "--workers", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz", gateway)
        instances = set()
        assert await fetch(f"http://127.0.0.1:{port}/healthz") == (200, {"status": "ok"})
        assert (await fetch(f"http://127.0.0.1:{port}/metrics"))[0] == 404
        # The admin listener names the worker that answered. The first one up let
        # wait_http through; the other may start seconds later on a loaded machine
        # (200 tries, about 5 s, were not always enough).
        deadline = time.monotonic() + 30
        while len(instances) < 2 and time.monotonic() < deadline:
            status, body = await fetch(f"http://127.0.0.1:{admin_port}/healthz")
            assert status == 200
            instances.add(body["instance"])
            await asyncio.sleep(0.02)
        assert instances == {"worker-0", "worker-1"}
    finally:
        _, err = stop(gateway)
    assert gateway.returncode == 0, err
    assert err.count("gateway listening on") == 2
    assert err.count("draining connections") == 2
    # One chain per worker, each with a name of its own in its signed heads (a SIEM
    # holding both workers' heads tells them apart: README "Anchoring").
    for index in (0, 1):
        lines = (tmp_path / f"decisions.worker-{index}.log").read_text().splitlines()
        names = {json.loads(line).get("log") for line in lines if '"chain_signature"' in line}
        assert names == {f"store-gw/worker-{index}"}


def test_a_log_is_named_after_its_host_and_file_unless_configured(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"auth: false\ndecision_log: {{path: {tmp_path / 'audit.log'}}}\n")
    assert load_config(config).decision_log.log_name() == f"{socket.gethostname()}:audit.log"
    config.write_text(f"auth: false\ndecision_log: {{path: {tmp_path / 'a.log'}, name: pos-0}}\n")
    assert load_config(config).decision_log.log_name() == "pos-0"


async def test_a_decision_log_in_use_stops_the_start_with_one_line(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with start_stack(aiohttp_server, tmp_path) as running:
        config = tmp_path / "second.yaml"
        config.write_text(
            f"listeners: [{{address: 127.0.0.1, port: {free_port()}}}]\nauth: false\n"
            f"policy: {{source: {POLICIES}}}\ndecision_log: {{path: {running.log_path}}}\n"
        )
        result = await asyncio.to_thread(portcullis, "gateway", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.strip().endswith("is in use by another process (one writer per file: "
                                          "give each worker its own path)")  # fmt: skip
    assert "gateway failed to start: decision log" in result.stderr
    assert "Traceback" not in result.stderr
