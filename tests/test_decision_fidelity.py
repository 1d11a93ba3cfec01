"""The gateway's compiled decision (regorus RVM) agrees with the interpreter.

The gateway evaluates data.portcullis.gateway.decision on the compiled VM for
speed; `policy test` and `policy eval` use the interpreter. Over a fixed-seed
sample of requests, well-formed and hostile, both must give the same answer.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from policy_engine import EmbeddedEngine, PolicySet, UndefinedResult, load_policy_set
from tests.conftest import POLICIES

DECISION = "data.portcullis.gateway.decision"
NOW = 1_700_000_000

PATHS = [
    "/wms/stock", "/wms/admin/users", "/WMS/Admin/x", "/wms/admin", "/wms/",
    "/pos/sales", "/pos/refunds/1", "/pos/refunds", "/POS/REFUNDS/2", "/pos/refundsx",
    "/analytics/dash", "/analytics/", "/payroll/x", "/", "/pos//refunds/3",
]  # fmt: skip
GROUPS = ["warehouse", "wms-admin", "store", "analyst", "other"]
AMR = ["pwd", "otp", "hwk", "fido", "swk", "mfa", "sms"]
ACR = ["pwd", "mfa", "phr", "phrh", "", None]


def random_identity(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.05:
        return None
    if roll < 0.10:
        return {"authenticated": rng.choice([False, "true", 1, None])}
    identity: dict[str, Any] = {
        "authenticated": True,
        "subject": "alice",
        "groups": rng.sample(GROUPS, rng.randint(0, 3)),
        "amr": rng.sample(AMR, rng.randint(0, 3)),
        "acr": rng.choice(ACR),
        "auth_time": NOW - rng.choice([0, 10, 899, 900, 901, 5000, -30, -3600]),
        "method": rng.choice(["bearer", "session"]),
    }
    if rng.random() < 0.05:
        identity["groups"] = "warehouse"  # a claim of the wrong type
    if rng.random() < 0.05:
        del identity["auth_time"]
    return identity


def random_input(rng: random.Random) -> dict[str, Any]:
    path = rng.choice(PATHS)
    segments = path.strip("/").split("/")
    document: dict[str, Any] = {
        "attributes": {
            "request": {
                "http": {
                    "method": rng.choice(["GET", "HEAD", "POST", "DELETE", "get"]),
                    "host": "gateway.example",
                    "path": path,
                    "scheme": "https",
                    "headers": {},
                    "id": "x",
                }
            }
        },
        "parsed_path": segments,
        "parsed_query": {},
        "route": {"app": segments[0].lower()},
        "now_ns": NOW * 1_000_000_000,
    }
    identity = random_identity(rng)
    if identity is not None:
        document["identity"] = identity
    return document


def answer(engine: EmbeddedEngine, document: Any) -> Any:
    try:
        return engine.evaluate_sync(DECISION, document)
    except UndefinedResult:
        return "undefined"


@pytest.fixture(scope="module")
def shipped() -> PolicySet:
    return load_policy_set(POLICIES)


def test_compiled_decision_matches_interpreter_on_2000_requests(shipped: PolicySet) -> None:
    compiled = EmbeddedEngine(shipped, compiled_refs=(DECISION,))
    assert compiled.compiled_refs == {DECISION}, compiled.rvm_problem
    interpreter = EmbeddedEngine(shipped)
    rng = random.Random(20261128)
    mismatches = []
    allows = 0
    for _ in range(2000):
        document = random_input(rng)
        expected, got = answer(interpreter, document), answer(compiled, document)
        allows += isinstance(expected, dict) and expected.get("allow") is True
        if expected != got:
            mismatches.append((document, expected, got))
    assert not mismatches, f"{len(mismatches)} differ; first: {mismatches[0]}"
    # The sample must exercise both outcomes to mean anything.
    assert 100 < allows < 1900


def test_compiled_decision_denies_what_the_interpreter_errors_on(tmp_path: Any) -> None:
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
