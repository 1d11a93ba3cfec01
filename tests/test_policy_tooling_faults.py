"""`portcullis policy test|check|eval|bundle` where they used to part from OPA."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from gateway.policy.reload import build_or_reason
from policy_engine import PolicyLoadError, compile_policy, load_policy_set
from policy_engine.opa_golib import GoOpaEngine, available
from policy_engine.testing import run_tests
from tests.conftest import FIXTURES
from tests.test_scan_cli import portcullis

BAD = FIXTURES / "policies"


def make_bundle(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            content = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return path


def load_problems(path: Path) -> list[str]:
    with pytest.raises(PolicyLoadError) as raised:
        compile_policy(load_policy_set(path))
    return [str(problem) for problem in raised.value.problems]


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


# What OPA's compiler refuses and regorus would load, each with where it is.
REFUSED_AS_ON_OPA = [
    (
        "two_default_rules",
        "two_default_rules/limits.rego:8:1: multiple default rules data.limits.max_age "
        f"(the first at {BAD}/two_default_rules/limits.rego:6)",
    ),
    (
        "rule_over_package",
        "rule_over_package/acme.rego:6:1: rule data.acme.rules conflicts with package "
        f"acme.rules ({BAD}/rule_over_package/rules.rego)",
    ),
    (
        "rule_over_rules",
        "rule_over_rules/acme.rego:7:1: rule data.acme.rules conflicts with rule "
        f"data.acme.rules.extra.max ({BAD}/rule_over_rules/extra.rego:5)",
    ),
]


@pytest.mark.parametrize(("fixture", "expected"), REFUSED_AS_ON_OPA)
def test_policy_check_refuses_what_opa_refuses_to_load(fixture: str, expected: str) -> None:
    result = portcullis("policy", "check", str(BAD / fixture))
    assert (result.returncode, result.stderr) == (2, f"{BAD}/{expected}\n")


@pytest.mark.parametrize(("fixture", "expected"), REFUSED_AS_ON_OPA)
def test_policy_bundle_refuses_what_opa_refuses_to_load(
    fixture: str, expected: str, tmp_path: Path
) -> None:
    bundle = tmp_path / "b.tar.gz"
    result = portcullis("policy", "bundle", str(BAD / fixture), "-o", str(bundle))
    assert (result.returncode, result.stderr) == (2, f"{BAD}/{expected}\n")
    assert not bundle.exists()


@pytest.mark.parametrize(("fixture", "expected"), REFUSED_AS_ON_OPA)
def test_gateway_reload_rejects_a_policy_opa_refuses_to_load(fixture: str, expected: str) -> None:
    engine, reason = build_or_reason(str(BAD / fixture), timeout_ms=250)
    assert (engine, reason) == (None, f"{BAD}/{expected}")


@pytest.mark.skipif(not available(), reason="OPA's Go evaluator is not installed")
@pytest.mark.parametrize(("fixture", "expected"), REFUSED_AS_ON_OPA)
def test_opa_itself_refuses_what_policy_check_refuses(fixture: str, expected: str) -> None:
    with pytest.raises(PolicyLoadError):
        GoOpaEngine(load_policy_set(BAD / fixture))


def test_policy_check_accepts_a_rule_beside_a_package_as_opa_does() -> None:
    fixture = BAD / "rule_beside_package"
    result = portcullis("policy", "check", str(fixture))
    assert result.returncode == 0, result.stderr
    if available():
        GoOpaEngine(load_policy_set(fixture))


def test_policy_bundle_roots_hold_each_package_and_data_key_outside_portcullis(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "acme.tar.gz"
    made = portcullis("policy", "bundle", str(BAD / "outside_portcullis"), "-o", str(bundle))
    assert made.returncode == 0, made.stderr
    with tarfile.open(bundle) as archive:
        manifest = json.loads(archive.extractfile(".manifest").read())  # type: ignore[union-attr]
    assert manifest["roots"] == ["acme/rules", "limits"]
    result = portcullis("policy", "eval", "--policy", str(bundle), "data.limits.max")
    assert (result.returncode, result.stdout.strip()) == (0, "3")


def test_policy_bundle_of_the_shipped_policies_claims_portcullis_only(tmp_path: Path) -> None:
    bundle = tmp_path / "policies.tar.gz"
    assert portcullis("policy", "bundle", "policies", "-o", str(bundle)).returncode == 0
    with tarfile.open(bundle) as archive:
        manifest = json.loads(archive.extractfile(".manifest").read())  # type: ignore[union-attr]
    assert manifest["roots"] == ["portcullis"]


def test_bundle_whose_roots_do_not_hold_a_package_is_refused_as_on_opa(tmp_path: Path) -> None:
    bundle = make_bundle(
        tmp_path / "b.tar.gz",
        {
            ".manifest": '{"revision": "r1", "roots": ["limits", "portcullis"]}',
            "acme/rules.rego": "package acme.rules\nimport rego.v1\nallow if input.n < 3\n",
        },
    )
    assert load_problems(bundle) == [
        f"{bundle}:acme/rules.rego:1:1: package acme.rules is outside the manifest roots "
        '["limits", "portcullis"]'
    ]


def test_bundle_with_data_outside_its_roots_is_refused_as_on_opa(tmp_path: Path) -> None:
    bundle = make_bundle(
        tmp_path / "b.tar.gz",
        {
            ".manifest": '{"roots": ["acme/rules"]}',
            "acme/rules.rego": "package acme.rules\nimport rego.v1\nallow := true\n",
            "acme/rules/limits/data.json": '{"max": 3}',
            "other/data.json": '{"max": 3}',
        },
    )
    assert load_problems(bundle) == [
        f'{bundle}:other/data.json: data.other is outside the manifest roots ["acme/rules"] '
        f"({bundle}:.manifest)"
    ]


def test_bundle_with_overlapping_roots_is_refused_as_on_opa(tmp_path: Path) -> None:
    bundle = make_bundle(
        tmp_path / "b.tar.gz",
        {
            ".manifest": '{"roots": ["acme", "/acme/rules/"]}',
            "acme/rules.rego": "package acme.rules\nimport rego.v1\nallow := true\n",
        },
    )
    assert load_problems(bundle) == [f"{bundle}:.manifest: roots 'acme' and 'acme/rules' overlap"]


def test_bundle_without_roots_or_with_the_empty_root_holds_everything(tmp_path: Path) -> None:
    for manifest in ('{"revision": "r1"}', '{"roots": [""]}'):
        bundle = make_bundle(
            tmp_path / "b.tar.gz",
            {
                ".manifest": manifest,
                "acme/rules.rego": "package acme.rules\nimport rego.v1\nallow := true\n",
                "other/data.json": '{"max": 3}',
            },
        )
        compile_policy(load_policy_set(bundle))


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ('["acme"]', "a manifest must be an object"),
        ('{"roots": "acme"}', "roots must be a list of strings"),
    ],
)
def test_bundle_with_a_manifest_opa_cannot_read_is_refused(
    manifest: str, expected: str, tmp_path: Path
) -> None:
    bundle = make_bundle(
        tmp_path / "b.tar.gz",
        {".manifest": manifest, "acme.rego": "package acme\nimport rego.v1\nallow := true\n"},
    )
    assert load_problems(bundle) == [f"{bundle}:.manifest: {expected}"]


# `policy test --engine`: each case on the embedded engine and on OPA's own.
BOTH_ENGINES = [
    "regorus",
    pytest.param(
        "opa", marks=pytest.mark.skipif(not available(), reason="OPA's Go evaluator not installed")
    ),
]
DUPLICATES = BAD / "duplicate_test_names"
DUPLICATES_TEST = f"{DUPLICATES}/acme_test.rego"


@pytest.mark.parametrize("engine", BOTH_ENGINES)
def test_policy_test_runs_each_definition_of_a_test_name_alone_as_opa_does(engine: str) -> None:
    result = portcullis("policy", "test", "-v", "--engine", engine, str(DUPLICATES))
    assert result.returncode == 1, result.stdout
    outcomes = [line.split(" (")[0] for line in result.stdout.splitlines() if "ms)" in line]
    assert outcomes == [
        "data.acme_test.test_allow: PASS",
        "data.acme_test.test_allow#01: FAIL",
        "data.acme_test.test_allow#02: PASS",
    ]
    assert f"  {DUPLICATES_TEST}:10: undefined" in result.stdout
    assert result.stdout.strip().splitlines()[-2:] == ["PASS: 2/3", "FAIL: 1/3"]


def test_a_test_run_alone_prints_and_fails_at_its_own_lines() -> None:
    result = portcullis("policy", "test", "--run", "test_allow#01", str(DUPLICATES))
    assert result.returncode == 1
    assert result.stdout.splitlines()[2:4] == [
        f"  {DUPLICATES_TEST}:10: undefined",
        f"  {DUPLICATES_TEST}:11: as guest ✓",
    ]
    assert result.stdout.strip().splitlines()[-1] == "FAIL: 1/1"


def test_coverage_counts_the_lines_of_tests_run_alone() -> None:
    report = run_tests(load_policy_set(DUPLICATES), coverage=True)
    (tests,) = [f for f in report.coverage if f.file == DUPLICATES_TEST]
    assert {7, 11, 12, 15} <= set(tests.covered)
    assert not set(tests.covered) & set(tests.not_covered)


CASES = BAD / "test_cases"
CASES_TEST = f"{CASES}/amounts_test.rego"


@pytest.mark.parametrize("engine", BOTH_ENGINES)
def test_policy_test_reports_cases_nested_and_todo_tests_as_opa_test_does(engine: str) -> None:
    # What `opa test` reports for this file (tester/runner.go): a test whose name has
    # a computed part is one test with a result per case, and a failing case, which
    # leaves no key behind, is still named; a test below a name (checks.test_limit)
    # is found; todo_test_ rules are SKIPPED, not run, and fail nothing.
    result = portcullis("policy", "test", "--engine", engine, str(CASES))
    assert result.returncode == 1, result.stdout + result.stderr
    assert [line.split(" (")[0] for line in result.stdout.splitlines()] == [
        f"{CASES_TEST}:",
        "data.amounts_test.test_within: FAIL",
        "  over the limit: FAIL",
        f"  {CASES_TEST}:6: 1 of 3 cases failed",
        "data.amounts_test.todo_test_refund_limit: SKIPPED",
        "-" * 80,
        # Cases count one each: 2 of test_within, 4 of test_grid, checks.test_limit.
        "PASS: 7/9",
        "FAIL: 1/9",
        "SKIPPED: 1/9",
    ]


def test_policy_test_verbose_lists_every_case_under_its_test() -> None:
    result = portcullis("policy", "test", "-v", "--run", "test_grid", str(CASES))
    assert result.returncode == 0, result.stdout
    assert [line.split(" (")[0] for line in result.stdout.splitlines()[1:8]] == [
        "data.amounts_test.test_grid: PASS",
        "  EUR: PASS",
        "    1: PASS",
        "    100: PASS",
        "  USD: PASS",
        "    1: PASS",
        "    100: PASS",
    ]


def test_policy_test_of_skipped_tests_only_passes() -> None:
    result = portcullis("policy", "test", "--run", "todo_test_", str(CASES))
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().splitlines()[-1] == "SKIPPED: 1/1"
