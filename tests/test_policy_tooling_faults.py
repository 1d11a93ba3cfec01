"""`portcullis policy test|check|eval|bundle` where they used to part from OPA."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import FIXTURES, ROOT

BAD = FIXTURES / "policies"


def portcullis(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "portcullis", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_policy_eval_prints_a_set_as_a_json_array_in_rego_order() -> None:
    sets = str(BAD / "set_results")
    printed = {
        rule: portcullis("policy", "eval", "--policy", sets, f"data.sets.{rule}")
        for rule in ("numbers", "mixed", "nested", "ports")
    }
    assert all(result.returncode == 0 for result in printed.values()), printed
    values = {rule: json.loads(result.stdout) for rule, result in printed.items()}
    assert values == {
        "numbers": [1, 2, 3],
        "mixed": [None, True, 1.5, 2, "a", "b"],
        "nested": {"count": 3, "open": [80, 443]},
        "ports": [22],
    }


def test_policy_eval_prints_the_shipped_world_ingress_set_when_empty() -> None:
    result = portcullis(
        "policy", "eval", "--input", str(FIXTURES / "inputs/pos_refund_otp.json"),
        "data.portcullis.lib.network.world_ingress",
    )  # fmt: skip
    assert (result.returncode, json.loads(result.stdout)) == (0, [])


def test_policy_test_fails_a_test_whose_value_is_a_set_naming_it() -> None:
    result = portcullis("policy", "test", str(BAD / "set_results"))
    assert result.returncode == 1
    assert "data.sets_test.test_ports: FAIL" in result.stdout
    assert "sets_test.rego:10: evaluated to [22]" in result.stdout
