"""Attack review of the policy decision path and policy hot reload (gateway/policy/,
policy_engine/), read as a hostile client and as a security engineer having a bad
day. One test per attack, named for it. What they hold to (README "Decision
contract", "Operations: Hot reload", "The policy engine"): any error on the
decision path is a deny, and a logged one; a policy that doesn't load is rejected,
logged and counted, and the last good one stays; nothing hangs."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from aiohttp import web

from gateway.policy import load_probe
from tests.gateway_stack import ServerFactory, logged, start_stack
from tests.test_gateway_ops import WAREHOUSE, decision_policy, wait_for

# A rule the interpreter takes ~6 s of CPU over when the load evaluates it once
# (16 million iterations, no allocation): a policy edited to a very slow one.
SLOW_RULE = (
    "package portcullis.gateway\nimport rego.v1\n"
    "slow_rule if {\n\tsome i in numbers.range(1, 4000)\n"
    "\tsome j in numbers.range(1, 4000)\n\ti + j < 0\n}\n"
)


async def test_a_reload_to_a_policy_with_a_very_slow_rule_neither_stalls_the_gateway_nor_loads(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    policy_copy: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A load evaluates every rule once; regorus holds the GIL while it evaluates,
    so a rule that takes seconds, built on the reload's thread, stopped the event
    loop for as long: no request, /healthz included, was answered meanwhile, and a
    rule that never ends hung the gateway for good. The load is bounded, off the
    gateway's process, and such a policy is rejected (the last good one stays)."""
    monkeypatch.setattr(load_probe, "LOAD_PROBE_TIMEOUT", 3.0)
    async with start_stack(aiohttp_server, tmp_path, policy=policy_copy) as running:
        token = running.token("alice", **WAREHOUSE)
        reloads = running.gateway.metrics.policy_reloads
        (policy_copy / "gateway/slow.rego").write_text(SLOW_RULE)
        slowest = 0.0
        deadline = time.monotonic() + 20
        while not reloads.labels("rejected")._value.get() and time.monotonic() < deadline:
            started = time.monotonic()
            assert (await running.get("/healthz")).status == 200
            slowest = max(slowest, time.monotonic() - started)
            await asyncio.sleep(0.02)
        assert slowest < 1.0, f"/healthz waited {slowest:.1f} s on the reload"
        assert reloads.labels("rejected")._value.get() == 1
        assert "took over 3 s" in (running.gateway.policy.last_error or "")
        assert (await running.get("/wms/stock", token)).status == 200  # last good policy

        # Hot reload goes on: the slow rule fixed, the next edit loads.
        (policy_copy / "gateway/slow.rego").write_text(SLOW_RULE.replace("4000", "4"))
        await wait_for(lambda: reloads.labels("ok")._value.get() >= 2, timeout=30)
        assert running.gateway.policy.last_error is None


def opa_answering(body: bytes) -> web.Application:
    """An OPA server that answers every decision with ``body`` (application/json):
    a broken or hostile one, in place of the stand-in of tests/opa_standin.py."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/data/{path:.*}", answer)
    return app


@pytest.mark.parametrize(
    "body",
    [b'{"result": {"allow": true, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
     b'{"result": {"allow": true, "reasons": ["ok"], "x": "\\ud800"}}' + b" " * 3 + b"\xff"],
    ids=["nested-100000-deep", "not-utf8"],
)  # fmt: skip
async def test_an_opa_answer_python_cannot_read_is_a_logged_deny_not_a_500(
    aiohttp_server: ServerFactory, tmp_path: Path, body: bytes
) -> None:
    """An OPA server's answer nested 100,000 deep raised RecursionError from the JSON
    parser, which no handler expected: aiohttp answered 500 and the request left no
    decision event (and no deny counted). Any failure to read the answer is an
    engine error: a deny with its reason, logged."""
    opa = await aiohttp_server(opa_answering(body))
    async with start_stack(
        aiohttp_server, tmp_path, policy_options={"watch": False, "timeout_ms": 5000}
    ) as running:
        running.gateway.policy.source = f"http://127.0.0.1:{opa.port}"
        assert await running.gateway.policy.reload("an OPA server")
        response = await running.get("/wms/stock", running.token("alice", **WAREHOUSE))
        assert response.status == 403, await response.text()
        decision = await response.json()
        assert decision["reasons"] == ["policy evaluation failed"]
        assert running.total_forwarded() == 0
        (event,) = await logged(running, decision["decision_id"])
        assert event["result"]["allow"] is False


async def test_a_policy_scanning_a_long_list_in_data_decides_as_its_tests_and_opa_do(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The compiled VM stops after 25,000 instructions, a limit of its own that the
    interpreter (`policy test`, `policy check`) and OPA don't have: a policy that
    loaded and passed its tests, allowing subjects listed in a 30,000-entry data
    list, denied every request ("policy evaluation failed", an engine error per
    request). Such a decision is made on the interpreter, under the same timeout."""
    policy = tmp_path / "listed"
    policy.mkdir()
    (policy / "decision.rego").write_text(
        "package portcullis.gateway\nimport rego.v1\n"
        'decision := {"allow": allow, "reasons": []}\ndefault allow := false\n'
        "allow if {\n\tsome subject in data.allowed_subjects\n"
        "\tsubject == input.identity.subject\n}\n"
    )
    subjects = [f"user-{n}" for n in range(30_000)] + ["alice"]
    (policy / "data.json").write_text(json.dumps({"allowed_subjects": subjects}))
    async with start_stack(
        aiohttp_server, tmp_path, policy=policy, policy_options={"timeout_ms": 5000}
    ) as running:
        response = await running.get("/wms/stock", running.token("alice", **WAREHOUSE))
        assert response.status == 200, await response.text()
        response = await running.get("/wms/stock", running.token("mallory", **WAREHOUSE))
        assert response.status == 403
        assert (await response.json())["reasons"] == []


async def test_a_decision_whose_reasons_are_a_set_allows_as_on_opa(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """`reasons contains msg if ...` is how Rego collects messages, and OPA answers a
    set as a JSON array. The compiled VM did too, but an allow is decided again on
    the interpreter, whose answer held a Python set: "not a list", a malformed
    decision, so every request such a policy allowed was denied, while its denies
    went through with their reasons."""
    policy = tmp_path / "set_reasons"
    policy.mkdir()
    (policy / "decision.rego").write_text(
        "package portcullis.gateway\nimport rego.v1\n"
        'reasons contains "the subject was checked" if input.identity.subject\n'
        'decision := {"allow": input.identity.subject == "alice", "reasons": reasons}\n'
    )
    async with start_stack(aiohttp_server, tmp_path, policy=policy) as running:
        response = await running.get("/wms/stock", running.token("alice", **WAREHOUSE))
        assert response.status == 200, await response.text()
        response = await running.get("/wms/stock", running.token("mallory", **WAREHOUSE))
        assert response.status == 403
        denied = await response.json()
        assert denied["reasons"] == ["the subject was checked"]
        events = await logged(running, denied["decision_id"])
        assert len(events) == 1
        allowed = [e for e in await running.events(at_least=2) if e["result"]["allow"]]
        assert [e["result"]["reasons"] for e in allowed] == [["the subject was checked"]]


@pytest.mark.parametrize(
    "answer",
    ['{"allow": false, "reasons": [sprintf("reason %d %s", [n, pad]) | some n in many]}',
     '{"allow": true, "reasons": [], "headers": {"x-note": concat("", [pad | some _ in many])}}',
     '{"allow": false, "reasons": ["no"], "step_up": {"acr": "phr", "x": [pad | some _ in many]}}'],
    ids=["deny-with-4MB-of-reasons", "allow-with-a-4MB-header", "deny-with-a-4MB-step-up"],
)  # fmt: skip
async def test_a_decision_megabytes_long_is_a_deny_and_its_event_stays_small(
    aiohttp_server: ServerFactory, tmp_path: Path, answer: str
) -> None:
    """A policy having a bad day (a reason listing a data set, a header built in a
    loop) answered megabytes per decision: each went whole into the client's deny
    body, the upstream request or the decision log and its sinks, so every denied
    request an anonymous client sent wrote megabytes to disk. An answer over 64 KiB
    (the shadow's limit) is a malformed decision."""
    rules = f'pad := "{"p" * 90}"\nmany := numbers.range(1, 40000)\ndecision := {answer}\n'
    odd = decision_policy(tmp_path, rules)
    async with start_stack(aiohttp_server, tmp_path, policy=odd) as running:
        response = await running.get("/wms/stock", running.token("alice", **WAREHOUSE))
        body = await response.read()
        assert response.status == 403 and len(body) < 1024
        assert json.loads(body)["reasons"] == ["policy returned a malformed decision"]
        assert running.total_forwarded() == 0
        (event,) = await logged(running, json.loads(body)["decision_id"])
        assert len(json.dumps(event)) < 16 * 1024


def test_a_module_planted_in_the_working_directory_is_not_what_checks_a_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reload's child process imports the gateway's own code: a gateway started
    in a directory others can write to (``python -m`` and ``-c`` put it first on
    the path) must not run their ``gateway/policy/load_probe.py``."""
    planted = tmp_path / "cwd"
    (planted / "gateway/policy").mkdir(parents=True)
    marker = tmp_path / "planted-code-ran"
    for package in ("gateway", "gateway/policy"):
        (planted / package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (planted / "gateway/policy/load_probe.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef main(argv): return 0\n"
    )
    monkeypatch.chdir(planted)
    source = str(Path(__file__).resolve().parent.parent / "policies")
    assert load_probe.probe(source, timeout_ms=50) is None
    assert not marker.exists()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/bad.rego").write_text("package portcullis.gateway\nthis is not rego\n")
    assert load_probe.probe(str(tmp_path / "broken"), timeout_ms=50) is not None
    assert not marker.exists()
