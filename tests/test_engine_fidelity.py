"""One policy set, two engines, the same answers: OPA itself as the oracle.

The gateway and the scanner run the policy set on regorus (the decision on its
compiled VM, `policy test` and `policy eval` on its interpreter); a real OPA
(the Helm chart's `policy.mode: opa`, or a central OPA) must answer the same.
OPA v1.20.2's own Go evaluator (PyPI opa-golib-python-bindings, installed by
the Makefile as a test oracle, never a runtime dependency) is the reference:
the policy set's tests, a generated sample of gateway decisions and every
document the scanner builds from the shared Terraform corpus must agree.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest
import regorus
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from iac_scanner.loader import LoadOptions, load
from iac_scanner.policy import RuleSet
from policy_engine import (
    EmbeddedEngine,
    EvaluationError,
    PolicyLoadError,
    PolicySet,
    compile_policy,
    load_policy_set,
)
from policy_engine.embedded import new_engine
from policy_engine.opa_golib import UNDEFINED, GoOpaEngine
from policy_engine.policy_set import Module
from policy_engine.portability import portability_warnings
from policy_engine.testing import run_tests
from tests.conftest import FIXTURES, POLICIES, ROOT, SHARED
from tests.test_scan_corpus import pos_tagged_policies

DECISION = "data.portcullis.gateway.decision"
NOW = 1_700_000_000
CORPUS = SHARED / "corpus/terraform"


@pytest.fixture(scope="module")
def shipped() -> PolicySet:
    return load_policy_set(POLICIES)


# A front end on another host (the catalogue's allowed_origins): POS and WMS trust
# it in the generated decisions (analytics trusts none), so the opt-out is held to
# OPA's answers too.
FRONT_END = "https://ui.corp.example"


@pytest.fixture(scope="module")
def trusting_front_end(shipped: PolicySet) -> PolicySet:
    """The shipped policy set, with FRONT_END in POS's and WMS's allowed_origins."""
    data = copy.deepcopy(shipped.data)
    for app in ("pos", "wms"):
        data["portcullis"]["catalogue"]["apps"][app]["allowed_origins"] = [FRONT_END]
    return dataclasses.replace(shipped, data=data)


@pytest.fixture(scope="module")
def opa(trusting_front_end: PolicySet) -> GoOpaEngine:
    return GoOpaEngine(trusting_front_end)


# --- the policy set's own tests -------------------------------------------------------


def test_every_policy_test_passes_on_opa_as_on_regorus(shipped: PolicySet) -> None:
    on_regorus = run_tests(shipped)
    on_opa = run_tests(shipped, engine="opa")
    assert [r.ref for r in on_opa.results] == [r.ref for r in on_regorus.results]
    assert len(on_opa.results) > 150
    assert [f"{r.ref}: {r.message}" for r in on_opa.failed] == []
    assert on_regorus.failed == []


def test_a_test_that_passes_only_on_regorus_fails_on_opa(tmp_path: Path) -> None:
    """The runner can fail: the construct that diverged in the shipped policy."""
    (tmp_path / "p.rego").write_text(
        "package p\nimport rego.v1\n"
        "no_auth_time if not is_number(input.identity.auth_time)\n"
        "test_missing_auth_time_is_noticed if no_auth_time with input as {}\n"
    )
    policy_set = load_policy_set(tmp_path)
    assert run_tests(policy_set).failed == []
    (failed,) = run_tests(policy_set, engine="opa").failed
    assert failed.ref == "data.p.test_missing_auth_time_is_noticed"
    assert failed.message == "undefined"


# --- gateway decisions ----------------------------------------------------------------

GROUPS = ["warehouse", "wms-admin", "store", "analyst", "other", "WAREHOUSE", ""]
AMR = ["pwd", "otp", "hwk", "fido", "swk", "mfa", "sms", "HWK", ""]
ACR = ["pwd", "mfa", "phr", "phrh", "", None, 2, "PHR"]
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get", "Post", ""]
# Ages around every max_age boundary (900 s for refunds), the clock-skew margin
# (60 s into the future) and far off.
AGES = [0, 1, 10, 59, 60, 61, 899, 900, 901, 5000, -1, -59, -60, -61, -3600, 10**9]


def catalogue_paths(policy_set: PolicySet) -> list[str]:
    """Every app prefix and override prefix of the catalogue, and look-alikes of each."""
    apps = policy_set.data["portcullis"]["catalogue"]["apps"]
    prefixes = {app["path_prefix"] for app in apps.values()}
    prefixes |= {o["prefix"] for app in apps.values() for o in app.get("paths", [])}
    paths = []
    for prefix in sorted(prefixes):
        bare = prefix.rstrip("/")
        paths += [prefix, bare, prefix + "x/1", bare + "x", prefix.upper(), bare.title() + "/Y"]
        paths += [prefix + "/", "/" + prefix.strip("/").replace("/", "//") + "/", prefix + "%2e"]
    return [*paths, "/", "/payroll/x", "/wmsadmin/", ""]


def random_claim(rng: random.Random, good: list[Any]) -> Any:
    """A claim value: usually a list of good values, sometimes the wrong type."""
    roll = rng.random()
    if roll < 0.80:
        return rng.sample(good, rng.randint(0, 3))
    return rng.choice([None, good[0], 1, True, {"a": 1}, [1, None], [good[0], 2]])


def random_identity(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.04:
        return None
    if roll < 0.08:
        return {"authenticated": rng.choice([False, "true", 1, None])}
    identity: dict[str, Any] = {
        "authenticated": True if rng.random() < 0.95 else rng.choice(["true", 1]),
        "subject": rng.choice(["alice", "", None, 7]),
        "groups": random_claim(rng, GROUPS),
        "amr": random_claim(rng, AMR),
        "acr": rng.choice(ACR),
        "auth_time": NOW - rng.choice(AGES),
        "method": rng.choice(["bearer", "session", "mtls"]),
    }
    roll = rng.random()
    if roll < 0.06:
        del identity["auth_time"]
    elif roll < 0.12:
        identity["auth_time"] = rng.choice(["1700000000", None, True, [NOW], 1.7e9 + 0.5, -1])
    for claim in ("groups", "amr", "acr", "subject"):
        if rng.random() < 0.03:
            del identity[claim]
    return identity


# What a browser says of who made a request (Fetch Metadata's Sec-Fetch-Site) and
# from where (Origin): the four values, none, a header sent twice (the gateway joins
# the copies with ","), and values no browser sends.
SEC_FETCH_SITES = ["same-origin", "same-site", "cross-site", "none", "same-origin,cross-site",
                   "same-origin,same-origin", "Cross-Site", ""]  # fmt: skip
ORIGINS = [FRONT_END, "https://shop.corp.example", "https://gateway.example", "null",
           f"{FRONT_END}.evil.example", "https://UI.corp.example", "http://ui.corp.example",
           f"{FRONT_END},https://shop.corp.example", f"{FRONT_END}/", ""]  # fmt: skip


SAFE = ("GET", "HEAD", "OPTIONS")


def random_browser_headers(rng: random.Random) -> dict[str, str]:
    headers = {}
    if rng.random() < 0.8:
        headers["sec-fetch-site"] = rng.choice(SEC_FETCH_SITES)
    if rng.random() < 0.7:
        headers["origin"] = FRONT_END if rng.random() < 0.4 else rng.choice(ORIGINS)
    return headers


def random_input(
    rng: random.Random,
    paths: list[str],
    signals_rng: random.Random | None = None,
    headers_rng: random.Random | None = None,
) -> dict[str, Any]:
    path = rng.choice(paths)
    segments = path.strip("/").split("/") if path.strip("/") else []
    app = segments[0].lower() if segments else ""
    document: dict[str, Any] = {
        "attributes": {
            "request": {
                "http": {
                    "method": rng.choice(METHODS),
                    "host": "gateway.example",
                    "path": path,
                    "scheme": "https",
                    "headers": rng.choice([{}, {}, {}, {"upgrade": "WebSocket"}]),
                    "id": "x",
                }
            }
        },
        "parsed_path": segments,
        "parsed_query": {},
        "route": {"app": app},
        "now_ns": NOW * 1_000_000_000,
    }
    roll = rng.random()
    if roll < 0.03:
        del document["route"]
    elif roll < 0.06:
        document["route"] = {"app": rng.choice(["payroll", "", None, 3])}
    elif roll < 0.08:
        del document["attributes"]["request"]["http"]["method"]
    elif roll < 0.10:
        document["now_ns"] = rng.choice([None, "1700000000000000000", NOW * 1_000_000_000 + 1])
    identity = random_identity(rng)
    if identity is not None:
        document["identity"] = identity
    # Their own generator: the rest of each document stays what it was before signals.
    signals = random_signals(signals_rng) if signals_rng is not None else None
    if signals is not None:
        document["signals"] = signals
    # Likewise the browser's headers (the Fetch Metadata rule's input).
    if headers_rng is not None:
        http = document["attributes"]["request"]["http"]
        http["headers"] = {**http["headers"], **random_browser_headers(headers_rng)}
    return document


def random_signals(rng: random.Random) -> Any:
    """input.signals as the shared state gives it (or none, or malformed)."""
    roll = rng.random()
    if roll < 0.35:
        return None  # no shared_state
    if roll < 0.42:
        return {"available": False, "reason": "redis down"}
    if roll < 0.46:
        return rng.choice([{}, [], "new", {"new_source_ip": None}, {"available": True}])
    return {
        "available": True,
        "new_source_ip": True if rng.random() < 0.5 else rng.choice([False, "true", 1]),
        "recent_denies": rng.randint(0, 20),
        "concurrent_sessions": rng.randint(0, 5),
    }


def oracle_answer(reference: Any) -> Any:
    if reference is UNDEFINED:
        return "undefined"
    if isinstance(reference, EvaluationError):
        return "error: EvaluationError"
    return reference


def regorus_answer(engine: EmbeddedEngine, document: Any) -> Any:
    try:
        return engine.evaluate_sync(DECISION, document)
    except EvaluationError as error:
        return f"error: {type(error).__name__}"


def test_5000_gateway_decisions_agree_on_opa_interpreter_and_compiled_vm(
    trusting_front_end: PolicySet, opa: GoOpaEngine
) -> None:
    # A generous timeout: this compares answers, not speed, on a shared machine.
    compiled = EmbeddedEngine(trusting_front_end, compiled_refs=(DECISION,), timeout=30)
    assert compiled.compiled_refs == {DECISION}, compiled.rvm_problem
    interpreter = EmbeddedEngine(trusting_front_end, timeout=30)
    rng = random.Random(20261202)
    paths = catalogue_paths(trusting_front_end)
    signals_rng, headers_rng = random.Random(20261203), random.Random(20261204)
    documents = [random_input(rng, paths, signals_rng, headers_rng) for _ in range(5000)]
    on_opa = opa.values(DECISION, documents)
    mismatches = []
    for document, reference in zip(documents, on_opa, strict=True):
        expected = oracle_answer(reference)
        answers = (regorus_answer(interpreter, document), regorus_answer(compiled, document))
        if answers != (expected, expected):
            mismatches.append((document, expected, *answers))
    assert not mismatches, f"{len(mismatches)} of 5000 differ; first: {mismatches[0]}"
    # The sample must exercise every outcome to mean anything.
    statuses = [answer["http_status"] for answer in on_opa if isinstance(answer, dict)]
    assert len(statuses) == 5000
    assert {200, 401, 403, 404} <= set(statuses)
    assert 150 < statuses.count(200) < 4500  # 193 at 20261202
    step_ups = [answer for answer in on_opa if answer["step_up"] is not None]
    assert len(step_ups) > 50
    # ...and the risk-signal rule (a new source address on pos) must fire too.
    new_address = [
        answer for answer in on_opa
        if any(reason.startswith("new source address") for reason in answer["reasons"])
    ]  # fmt: skip
    assert len(new_address) > 20
    # ...and the Fetch Metadata rule: refused from another site's page, and let
    # through from the app's allowed origin (the same request but for the Origin).
    from_another_site = [
        answer for answer in on_opa
        if any(reason.startswith("requires a request from the app's own pages")
               for reason in answer["reasons"])
    ]  # fmt: skip
    assert len(from_another_site) > 200
    assert all(answer["step_up"] is None for answer in from_another_site)
    let_through = [
        (document["route"]["app"], http["headers"].get("origin"))
        for document, answer in zip(documents, on_opa, strict=True)
        if answer["allow"] and document["identity"]["method"] in ("session", "mtls")
        and (http := document["attributes"]["request"]["http"]).get("method") not in SAFE
        and http["headers"].get("sec-fetch-site") not in (None, "same-origin", "none")
    ]  # fmt: skip
    assert len(let_through) >= 5, let_through
    assert {origin for _, origin in let_through} == {FRONT_END}
    assert {app for app, _ in let_through} <= {"pos", "wms"}
    # ...and without Sec-Fetch-Site (a browser from before Fetch Metadata), by the
    # Origin: refused from another host's page, never from the gateway's own.
    by_origin = [
        (document["route"]["app"], http["headers"]["origin"],
         any(reason.endswith("no Sec-Fetch-Site)") for reason in answer["reasons"]))
        for document, answer in zip(documents, on_opa, strict=True)
        if document.get("identity", {}).get("method") in ("session", "mtls")
        and answer["http_status"] in (200, 403)
        and (http := document["attributes"]["request"]["http"]).get("method") not in SAFE
        and "sec-fetch-site" not in http["headers"] and "origin" in http["headers"]
    ]  # fmt: skip
    refused = {(app, origin) for app, origin, for_origin in by_origin if for_origin}
    assert len({origin for _, origin in refused}) >= 5, by_origin
    assert "https://gateway.example" not in {origin for _, origin in refused}
    assert not {("pos", FRONT_END), ("wms", FRONT_END)} & refused
    assert ("analytics", FRONT_END) in refused
    assert any(origin == "https://gateway.example" for _, origin, _ in by_origin)


def test_compiled_decision_denies_what_the_interpreter_errors_on(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text(
        "package portcullis.gateway\nimport rego.v1\n"
        'decision := {"allow": true, "n": 1 / input.n}\n'
    )
    policy_set = load_policy_set(tmp_path)
    compiled = EmbeddedEngine(policy_set, compiled_refs=(DECISION,))
    for engine in (compiled, EmbeddedEngine(policy_set)):
        with pytest.raises(Exception) as raised:
            engine.evaluate_sync(DECISION, {"n": 0})
        assert "allow" not in str(raised.value)


# A gateway policy the compiled VM answers otherwise (policy_engine/vm_divergence.py):
# `o := input...` of a request without that header, then `not` over `o`.
RUNS_ON_PAST_UNDEFINED = """
package portcullis.gateway
import rego.v1
decision := {"allow": allow}
default allow := true
allow := false if {
    origin := input.attributes.request.http.headers.origin
    not startswith(origin, "https://")
}
"""


def test_a_gateway_policy_the_compiled_vm_would_deny_wrongly_is_decided_on_the_interpreter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On the compiled VM, `origin := <absent header>` didn't stop the body, and
    `not startswith(origin, ...)` held: every request without an Origin was
    denied, where OPA and regorus' interpreter (and so `policy test`) allow it.
    The gateway now sees the pattern when the policy loads, decides on the
    interpreter, and says so; `policy check` warns where."""
    (tmp_path / "decision.rego").write_text(RUNS_ON_PAST_UNDEFINED)
    no_origin = {"attributes": {"request": {"http": {"headers": {}}}}}
    from gateway.policy.reload import build_engine

    with caplog.at_level(logging.WARNING, logger="portcullis.policy"):
        engine = build_engine(str(tmp_path), timeout_ms=1000)
    assert isinstance(engine, EmbeddedEngine)
    assert engine.compiled_refs == frozenset(), engine.compiled_refs
    assert engine.evaluate_sync(DECISION, no_origin) == {"allow": True}
    assert engine.rvm_problem is not None and "decision.rego:7:5" in engine.rvm_problem
    assert "runs on the interpreter" in caplog.text and "`origin := ...`" in caplog.text
    # The decision OPA gives, on both engines of regorus and on OPA's own.
    assert GoOpaEngine(load_policy_set(tmp_path)).values(DECISION, [no_origin]) == [{"allow": True}]


# The same pattern in a library the gateway's decision reads: the VM compiles
# every module the decision reaches, not its package's alone.
DECISION_READING_A_LIBRARY = """
package portcullis.gateway
import rego.v1
decision := {"allow": allow}
default allow := true
allow := false if data.portcullis.lib.origin.plain
"""
LIBRARY_RUNNING_ON_PAST_UNDEFINED = """
package portcullis.lib.origin
import rego.v1
plain if {
    origin := input.attributes.request.http.headers.origin
    not startswith(origin, "https://")
}
"""


def test_a_library_the_compiled_vm_would_answer_wrongly_puts_the_decision_on_the_interpreter(
    tmp_path: Path,
) -> None:
    """Only the decision's own package was looked at: a helper package it calls,
    with `x := <absent>` then `not` over x, ran on the VM and denied every
    request without an Origin, which OPA and the interpreter allow."""
    (tmp_path / "decision.rego").write_text(DECISION_READING_A_LIBRARY)
    (tmp_path / "lib.rego").write_text(LIBRARY_RUNNING_ON_PAST_UNDEFINED)
    no_origin = {"attributes": {"request": {"http": {"headers": {}}}}}
    from gateway.policy.reload import build_engine

    engine = build_engine(str(tmp_path), timeout_ms=1000)
    assert isinstance(engine, EmbeddedEngine)
    assert engine.evaluate_sync(DECISION, no_origin) == {"allow": True}
    assert engine.rvm_problem is not None and "lib.rego:5:5" in engine.rvm_problem


# `o := <absent header>`, then a `not` over `o` inside a query nested in a later
# statement: the comprehension or `every` runs with `o` undefined on the VM.
NOT_IN_A_NESTED_QUERY = {
    "array comprehension": 'count([1 | not startswith(origin, "https://")]) == 1',
    "set comprehension": '{1 | not startswith(origin, "https://")} == {1}',
    "comprehension assigned": (
        'plain := [1 | not startswith(origin, "https://")]\n    count(plain) == 1'
    ),
    "every": 'every h in ["x"] { h != ""; not startswith(origin, "https://") }',
}


@pytest.mark.parametrize("nested", NOT_IN_A_NESTED_QUERY.values(), ids=NOT_IN_A_NESTED_QUERY)
def test_a_not_inside_a_comprehension_over_an_undefined_assignment_runs_on_the_interpreter(
    tmp_path: Path, nested: str
) -> None:
    """Only a `not` written as a statement of the body itself was seen: the same
    `not` inside a comprehension or an `every` slipped past, and the gateway
    decided on the VM, denying every request without an Origin that OPA, the
    interpreter and `policy test` allow."""
    policy = RUNS_ON_PAST_UNDEFINED.replace('not startswith(origin, "https://")', nested)
    (tmp_path / "decision.rego").write_text(policy)
    no_origin = {"attributes": {"request": {"http": {"headers": {}}}}}
    from gateway.policy.reload import build_engine

    engine = build_engine(str(tmp_path), timeout_ms=1000)
    assert isinstance(engine, EmbeddedEngine)
    assert engine.evaluate_sync(DECISION, no_origin) == {"allow": True}
    assert engine.rvm_problem is not None and "decision.rego:7:5" in engine.rvm_problem
    assert GoOpaEngine(load_policy_set(tmp_path)).values(DECISION, [no_origin]) == [{"allow": True}]


# The same, in the value the rule gives once its body holds (its head, an
# `else`'s value): the VM evaluates it with the body's `origin` undefined.
NOT_IN_A_RULES_VALUE = {
    "rule value": """
package portcullis.gateway
import rego.v1
decision := {"allow": allow}
default allow := true
allow := count([1 | not startswith(origin, "https://")]) == 0 if {
    origin := input.attributes.request.http.headers.origin
}
""",
    "else value": """
package portcullis.gateway
import rego.v1
decision := {"allow": allow}
default allow := true
allow := false if {
    input.attributes.request.http.method == "TRACE"
} else := count([1 | not startswith(origin, "https://")]) == 0 if {
    origin := input.attributes.request.http.headers.origin
}
""",
}


@pytest.mark.parametrize("policy", NOT_IN_A_RULES_VALUE.values(), ids=NOT_IN_A_RULES_VALUE)
def test_a_not_in_a_rules_value_over_an_undefined_assignment_runs_on_the_interpreter(
    tmp_path: Path, policy: str
) -> None:
    """Only the rule bodies were looked at: a comprehension in the value a rule
    gives (`allow := count([1 | not ...]) == 0 if { origin := ... }`) ran on the
    VM with `origin` undefined, and denied every request without an Origin that
    OPA, the interpreter and `policy test` allow (the default)."""
    (tmp_path / "decision.rego").write_text(policy)
    no_origin = {"attributes": {"request": {"http": {"method": "GET", "headers": {}}}}}
    from gateway.policy.reload import build_engine

    engine = build_engine(str(tmp_path), timeout_ms=1000)
    assert isinstance(engine, EmbeddedEngine)
    assert engine.evaluate_sync(DECISION, no_origin) == {"allow": True}
    assert engine.rvm_problem is not None and "decision.rego:" in engine.rvm_problem
    assert GoOpaEngine(load_policy_set(tmp_path)).values(DECISION, [no_origin]) == [{"allow": True}]


# A policy whose deny rules each call a builtin that fails on some values a
# client or an identity provider controls (a header, a claim of another type).
ERRING_DENY_RULES = """
package portcullis.gateway
import rego.v1
decision := {"allow": allow, "reasons": sort([r | some r in deny]), "http_status": 403,
             "headers": {}, "step_up": null}
default allow := false
allow if {
    input.identity.authenticated == true
    count(deny) == 0
}
deny contains "refunds over 500 need a manager" if {
    to_number(input.attributes.request.http.headers["x-refund-amount"]) > 500
    not "manager" in input.identity.groups
}
deny contains "blocked payload" if {
    base64.decode(input.attributes.request.http.headers["x-payload"]) == "evil"
}
deny contains "contractors" if lower(input.identity.department) == "contractors"
deny contains "risky" if max(input.identity.risk_scores) > 50
deny contains "token too old" if input.now_ns - (input.identity.iat * 1000000000) > 3600000000000
"""


def erring_input(headers: dict[str, Any], claims: dict[str, Any]) -> dict[str, Any]:
    return {
        "attributes": {"request": {"http": {"method": "POST", "path": "/pos/refunds",
                                            "headers": headers}}},
        "identity": {"authenticated": True, "subject": "mallory", "groups": ["store"],
                     **claims},
        "route": {"app": "pos"},
        "now_ns": NOW * 1_000_000_000,
    }  # fmt: skip


def gateway_decision(engine: Any, document: dict[str, Any]) -> Any:
    from gateway.policy.decision import decide

    return asyncio.run(decide(engine, document, "d"))


@pytest.fixture(scope="module")
def erring_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("erring")
    (directory / "p.rego").write_text(ERRING_DENY_RULES)
    return directory


@pytest.fixture(scope="module")
def erring_engines(erring_policy: Path) -> tuple[Any, EmbeddedEngine]:
    """The gateway's engine for the policy, and the interpreter alone."""
    from gateway.policy.reload import build_engine

    gateway = build_engine(str(erring_policy), timeout_ms=1000)
    return gateway, EmbeddedEngine(load_policy_set(erring_policy))


@pytest.mark.parametrize(
    ("headers", "claims"),
    [
        ({"x-refund-amount": "5000x"}, {}),  # to_number fails: the manager rule is skipped
        ({"x-refund-amount": "0x1388"}, {}),
        ({"x-payload": "!!!"}, {}),  # base64.decode fails
        ({}, {"department": ["Contractors"]}),  # lower() of a list claim
        ({}, {"risk_scores": "90"}),  # max() of a string claim
        ({}, {"iat": "1600000000"}),  # arithmetic on a string claim
    ],
)
def test_a_deny_rule_whose_builtin_fails_on_attacker_input_does_not_let_the_request_through(
    erring_policy: Path, headers: dict[str, Any], claims: dict[str, Any]
) -> None:
    """The compiled VM makes a failing builtin undefined, so its deny rule doesn't
    fire and the policy's answer is an allow; OPA and the interpreter fail the
    evaluation. The gateway's engine has the interpreter confirm every compiled
    allow: the request is denied as an evaluation error."""
    from gateway.policy.reload import build_engine

    document = erring_input(headers, claims)
    engine = build_engine(str(erring_policy), timeout_ms=1000)
    assert isinstance(engine, EmbeddedEngine) and engine.compiled_refs == {DECISION}
    # The attack: the compiled VM alone lets it through.
    vm_alone = EmbeddedEngine(load_policy_set(erring_policy), compiled_refs=(DECISION,))
    assert vm_alone.evaluate_sync(DECISION, document)["allow"] is True
    with pytest.raises(EvaluationError):
        GoOpaEngine(load_policy_set(erring_policy)).value(DECISION, document)
    decision = gateway_decision(engine, document)
    assert decision.allow is False
    assert decision.error is not None and decision.reasons == ["policy evaluation failed"]


def test_a_compiled_allow_with_nothing_failing_is_still_an_allow(erring_policy: Path) -> None:
    """The confirmation changes no answer that had no error: the same request
    with a well-formed amount under the limit is allowed, one over it denied."""
    from gateway.policy.reload import build_engine

    engine = build_engine(str(erring_policy), timeout_ms=1000)
    small = gateway_decision(engine, erring_input({"x-refund-amount": "20"}, {"iat": NOW}))
    large = gateway_decision(engine, erring_input({"x-refund-amount": "5000"}, {"iat": NOW}))
    assert (small.allow, small.error) == (True, None)
    assert (large.allow, large.reasons) == (False, ["refunds over 500 need a manager"])


claim_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.integers(10**9, 2 * 10**9)
    | st.sampled_from(["", "5000", "5000x", "20", " 12 ", "0x1f", "ZXZpbA==", "!!!", "evil",
                       "Contractors", "90", "1600000000", "manager"]),
    lambda children: st.lists(children, max_size=3),
    max_leaves=6,
)  # fmt: skip


@settings(max_examples=300, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    amount=claim_values, payload=claim_values, department=claim_values,
    risk=claim_values, iat=claim_values, groups=claim_values,
)  # fmt: skip
def test_the_gateway_allows_only_what_the_interpreter_allows_without_error(
    erring_engines: tuple[Any, EmbeddedEngine], amount: Any, payload: Any, department: Any,
    risk: Any, iat: Any, groups: Any,
) -> None:  # fmt: skip
    """Over hostile header and claim values: whenever the gateway's engine
    allows, the interpreter on the whole input gives the same allow (no error)."""
    engine, interpreter = erring_engines
    headers = {k: v for k, v in (("x-refund-amount", amount), ("x-payload", payload))
               if isinstance(v, str)}  # fmt: skip
    claims = {"department": department, "risk_scores": risk, "iat": iat, "groups": groups}
    decision = gateway_decision(engine, erring_input(headers, claims))
    if decision.allow:
        assert interpreter.evaluate_sync(DECISION, erring_input(headers, claims))["allow"] is True


# --- scanner documents ------------------------------------------------------------------


def test_every_corpus_document_gives_the_same_findings_on_both_engines(tmp_path: Path) -> None:
    assert CORPUS.is_dir(), f"the shared Terraform corpus is missing at {CORPUS}"
    loaded = load([str(CORPUS)], LoadOptions(jobs=2))
    documents = [document.as_input() for document in loaded.documents]
    assert len(documents) > 1000
    totals = []
    for policy in (POLICIES, pos_tagged_policies(tmp_path)):
        policy_set = load_policy_set(policy)
        rules = RuleSet(policy_set)
        oracle = GoOpaEngine(policy_set)
        # Findings and what each rule says it could not judge ("~" marks the latter).
        on_regorus = []
        for doc in documents:
            violations, not_judged = rules.evaluate(doc)
            found = [(v.rule.id, v.resource, v.message) for v in violations]
            found += [(n.rule.id, n.resource, f"~{n.path}") for n in not_judged]
            on_regorus.append(sorted(found))
        on_opa: list[list[tuple[str, str, str]]] = [[] for _ in documents]
        for package, rule in rules.rules.items():
            for index, denied in enumerate(oracle.values(f"{package}.deny", documents)):
                on_opa[index] += [(rule.id, d["resource"], d["message"]) for d in denied]
            for index, skipped in enumerate(oracle.values(f"{package}.not_judged", documents)):
                # Undefined for a package that declares no not_judged set.
                if isinstance(skipped, list):
                    on_opa[index] += [(rule.id, d["resource"], f"~{d['path']}") for d in skipped]
        differing = [
            (loaded.documents[i].name, on_regorus[i], sorted(on_opa[i]))
            for i in range(len(documents))
            if on_regorus[i] != sorted(on_opa[i])
        ]
        assert not differing, f"{len(differing)} documents differ; first: {differing[0]}"
        totals.append(sum(len(found) for found in on_regorus))
    shipped_total, tagged_total = totals
    assert 50 < shipped_total < tagged_total


# --- known engine differences -------------------------------------------------------------
# Each is worked around in the policy set (README "Engine fidelity"); these tests
# show the difference itself, so an engine upgrade that removes it is noticed.


def regorus_query(query: str) -> Any:
    engine = regorus.Engine()
    return engine.eval_query(query)["result"][0]["expressions"][0]["value"]


def oracle_query(query: str) -> Any:
    return GoOpaEngine(load_policy_set_from_text("package q\n")).query(query)


def load_policy_set_from_text(text: str) -> PolicySet:
    return PolicySet([Module("q.rego", text)], {}, "q.rego", "test")


def test_known_difference_not_over_a_call_with_an_undefined_argument() -> None:
    policy = "package q\nimport rego.v1\nmissing if not is_number(input.auth_time)\n"
    regorus_engine = regorus.Engine()
    regorus_engine.add_policy("q.rego", policy)
    regorus_engine.set_input({})
    assert regorus_engine.eval_rule("data.q.missing") is True
    assert GoOpaEngine(load_policy_set_from_text(policy)).value("data.q.missing", {}) is UNDEFINED


# Negations of an operator with `input` empty: whether OPA and regorus agree, and
# whether `policy check` warns. It warns exactly where they differ.
NEGATED_OPERATORS = [
    ('not "admin" in input.roles', False),
    ('not input.user in {"admin"}', False),
    ("not input.user in admins", False),
    ('not "k", "v" in input.attributes', False),
    ('some item in [{}]; not "a" in item.tags', False),
    ('not "admin" in [input.user]', False),
    ("not input.age >= 18", False),
    ("not input.age != 18", False),
    ("not input.age + 1 > 18", False),
    ("not input.groups | admins == admins", False),
    ("not [input.user] == [1]", False),
    ("not input.user == {input.group}", False),
    ('not "admin" in object.get(input, "roles", [])', True),
    ('not "root" in admins', True),
    ('not input.user == "admin"', True),
    ('not input.user = "admin"', True),
    ("not input.user == input.group", True),
    ('not "admin" in {role | some role in input.roles}', True),
]


@pytest.mark.parametrize(("negation", "engines_agree"), NEGATED_OPERATORS)
def test_not_over_an_operator_differs_where_policy_check_warns(
    negation: str, engines_agree: bool
) -> None:
    policy = f'package q\nimport rego.v1\nadmins := {{"admin"}}\nr if {{ {negation} }}\n'
    policy_set = load_policy_set_from_text(policy)
    assert EmbeddedEngine(policy_set).evaluate_sync("data.q.r", {}) is True
    on_opa = GoOpaEngine(policy_set).value("data.q.r", {})
    assert on_opa is (True if engines_agree else UNDEFINED)
    assert bool(portability_warnings(policy_set)) is not engines_agree


# Variables under `not`: whether OPA accepts the rule (it refuses an unsafe
# variable), and so whether `policy check` must stay quiet.
VARIABLES_UNDER_NOT = [
    ('not input.roles[_] == "admin"', False),
    ('not input.roles[x] == "admin"', False),
    ("not input.bad[_]", False),
    ("some y; not input.bad[y]", False),
    ('x := "a"; not input.roles[x] == "admin"', True),
    ("some k, _ in input.m; not input.bad[k]", True),
    ('not input.roles[x] == "admin"; input.roles[x]', True),
    ("every z in input.zs { not input.bad[z] }", True),
    ("xs := [w | some w in input.ws; not input.bad[w]]; count(xs) >= 0", True),
    ('not "admin" in object.get(input, "roles", [])', True),
    ("not admins[input.user]", True),
    ('not [x | some x in input.roles; x == "admin"][0]', True),
]


@pytest.mark.parametrize(("body", "opa_accepts"), VARIABLES_UNDER_NOT)
def test_a_variable_only_a_not_binds_is_refused_by_opa_where_policy_check_warns(
    body: str, opa_accepts: bool
) -> None:
    """`not input.roles[_] == "admin"` loads and evaluates on regorus (as "no role
    is admin"); OPA refuses the module. `policy check` said OK."""
    policy = f'package q\nimport rego.v1\nadmins := {{"admin"}}\nr if {{ {body} }}\n'
    policy_set = load_policy_set_from_text(policy)
    EmbeddedEngine(policy_set)  # loads on regorus
    try:
        GoOpaEngine(policy_set).value("data.q.r", {})
        accepted = True
    except PolicyLoadError as error:
        assert "rego_unsafe_var_error" in str(error)
        accepted = False
    assert accepted is opa_accepts
    unsafe = [w for w in portability_warnings(policy_set) if "is unsafe" in w.message]
    assert bool(unsafe) is not opa_accepts


# Where a variable `v` can be bound around a negation that mentions it: OPA's
# safety rules say which of these make the rule acceptable.
NEGATIONS = ['not input.roles[v] == "admin"', "not input.bad[v]", "not f(v)", "not v == 1",
             "not input.m[v].x", 'not input.bad[_] == v']  # fmt: skip
BINDINGS = ["", "some v; ", "v := 1; ", "some v in input.xs; ", "input.xs[v]; ",
            "xs := [v | some v in input.xs]; ", "some w in [v | some v in input.xs]; ",
            "every v in input.xs { v > 0 }; ", "count(input.xs) > v; "]  # fmt: skip


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(
    # Each negation once: OPA also refuses a body with one negated expression twice
    # (`not p[v]; not p[v]; q[v]`), a quirk of its reordering this check leaves be.
    st.lists(st.tuples(st.sampled_from(BINDINGS), st.sampled_from(NEGATIONS)), min_size=1,
             max_size=3, unique_by=lambda literal: literal[1]),
    st.booleans(),
)  # fmt: skip
def test_policy_check_warns_of_an_unsafe_variable_exactly_where_opa_refuses_the_rule(
    literals: list[tuple[str, str]], negation_first: bool
) -> None:
    body = "; ".join(
        (negation + "; " + binding if negation_first else binding + negation).strip("; ")
        for binding, negation in literals
    )
    policy = f"package q\nimport rego.v1\nf(x) if x == 1\nr if {{ {body} }}\n"
    policy_set = load_policy_set_from_text(policy)
    try:
        EmbeddedEngine(policy_set)
    except PolicyLoadError:
        return  # regorus refuses it too (`v := 1` after a use of v): nothing to warn of
    try:
        GoOpaEngine(policy_set).value("data.q.r", {})
        opa_refuses = False
    except PolicyLoadError as error:
        # Refused for another reason (`not p[v]; some v in xs`: "var v referenced
        # above"; `some v` twice: "declared above"): not what this check is about.
        assume("rego_unsafe_var_error" in str(error))
        opa_refuses = True
    unsafe = [w for w in portability_warnings(policy_set) if "is unsafe" in w.message]
    assert bool(unsafe) is opa_refuses, (body, unsafe)


@pytest.mark.parametrize(
    ("fixture", "engines_agree"), [("ref_head_overlap", False), ("ref_heads_apart", True)]
)
def test_a_ref_head_with_a_name_where_another_has_a_variable_differs_and_is_refused(
    fixture: str, engines_agree: bool
) -> None:
    """OPA's conformance case `refheads/general, set leaf, deep query`: with
    `groups[app].members` and `groups.pos.members`, regorus reads groups.pos.members
    from the second rule alone. compile_policy refuses that pair, and only it."""
    policy_set = load_policy_set(FIXTURES / "policies" / fixture)
    regorus_engine = new_engine(policy_set)
    on_regorus = regorus_engine.eval_query("data.access.groups.pos.members")["result"]
    on_opa = GoOpaEngine(policy_set).value("data.access.groups.pos.members")
    assert on_opa == ["pos-admin", "store"]
    if engines_agree:
        assert sorted(on_regorus[0]["expressions"][0]["value"]) == on_opa
        assert compile_policy(policy_set).policy_set is policy_set
    else:
        assert on_regorus[0]["expressions"][0]["value"] == {"pos-admin"}
        with pytest.raises(PolicyLoadError, match="has a name where the rule at"):
            compile_policy(policy_set)


def test_known_difference_sprintf_d_with_a_negative_number() -> None:
    assert regorus_query('sprintf("%d", [-3600])') == "--3600"
    assert oracle_query('sprintf("%d", [-3600])') == "-3600"
    assert regorus_query('sprintf("%v", [-3600])') == oracle_query('sprintf("%v", [-3600])')


def test_known_difference_sprintf_q_with_a_non_string() -> None:
    with pytest.raises(RuntimeError, match="%q"):
        regorus_query('sprintf("%q", [null])')
    assert oracle_query('sprintf("%q", [null])') == '"null"'
    assert regorus_query("json.marshal(null)") == oracle_query("json.marshal(null)") == "null"


def test_known_difference_compiled_vm_assigns_an_undefined_value() -> None:
    """regorus' compiled VM lets `g := o.groups` through when `o` has no groups;
    its interpreter and OPA fail the body. The engine refuses such a result."""
    policy = (
        "package q\nimport rego.v1\n"
        "named contains n if { some o in input.items; g := o.groups; n := count(g) }\n"
        'answer := {"named": named}\n'
    )
    policy_set = load_policy_set_from_text(policy)
    document = {"items": [{"name": "x"}]}
    assert not EmbeddedEngine(policy_set).evaluate_sync("data.q.answer", document)["named"]
    assert GoOpaEngine(policy_set).value("data.q.answer", document) == {"named": []}
    compiled = EmbeddedEngine(policy_set, compiled_refs=("data.q.answer",))
    with pytest.raises(EvaluationError, match="undefined value inside"):
        compiled.evaluate_sync("data.q.answer", document)


def test_known_difference_division_of_nanoseconds_is_rounded_on_regorus() -> None:
    query = "(1700000000000000001 / 1000000000) - 1699999100"
    assert regorus_query(query) == 900
    assert oracle_query(f"{query} > 900") is True
    exact = "(1700000000000000001 - (1699999100 * 1000000000)) > 900 * 1000000000"
    assert regorus_query(exact) is True
    assert oracle_query(exact) is True


ERROR = object()

# Builtin answers that differ, as the README's table shows them: the Rego
# expression, OPA's answer, regorus' answer (ERROR: the engine raises an error).
BUILTIN_DIFFERENCES = [
    ('upper("ß")', "ß", "SS"),
    ('regex.match("^\\\\w+$", "é")', False, True),
    ("0.1 + 0.2 == 0.3", True, False),
    ('to_number(" 12 ")', ERROR, 12),
    ('sprintf("%x", ["hi"])', "6869", ""),
    ("json.marshal(1.0)", "1.0", "1"),
    ('lower("ΑΣ")', "ασ", "ας"),  # noqa: RUF001 (Greek on purpose)
    ('net.cidr_contains("10.0.0.0/8", "::ffff:10.1.2.3")', True, False),
    ('time.parse_rfc3339_ns("2026-12-04t00:00:00z")', ERROR, 1796342400000000000),
]


def answer(query: str, engine: str) -> Any:
    try:
        return oracle_query(query) if engine == "opa" else regorus_query(query)
    except (EvaluationError, RuntimeError, ValueError):
        return ERROR


def table_cell(value: Any) -> str:
    return "an error" if value is ERROR else f"`{json.dumps(value, ensure_ascii=False)}`"


@pytest.mark.parametrize(("query", "on_opa", "on_regorus"), BUILTIN_DIFFERENCES)
def test_known_builtin_difference_is_in_the_readme_as_each_engine_answers(
    query: str, on_opa: Any, on_regorus: Any
) -> None:
    assert (answer(query, "opa"), answer(query, "regorus")) == (on_opa, on_regorus)
    row = f"| `{query}` | {table_cell(on_opa)} | {table_cell(on_regorus)} |"
    assert row in (ROOT / "README.md").read_text(encoding="utf-8")


def test_arithmetic_on_a_string_is_an_error_on_both_engines() -> None:
    """Measured, not a difference: OPA v1.20.2 (as bound here) raises a type error
    too, so the decision guards auth_time and now_ns with is_number first."""
    policy = "package q\nimport rego.v1\nage := 10 - input.auth_time\n"
    regorus_engine = regorus.Engine()
    regorus_engine.add_policy("q.rego", policy)
    regorus_engine.set_input({"auth_time": "5"})
    with pytest.raises(RuntimeError, match="numeric"):
        regorus_engine.eval_rule("data.q.age")
    oracle = GoOpaEngine(load_policy_set_from_text(policy))
    with pytest.raises(EvaluationError, match="eval_type_error"):
        oracle.value("data.q.age", {"auth_time": "5"})
