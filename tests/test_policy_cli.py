"""`portcullis policy ...` as a user runs it: output, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, ROOT

BAD = FIXTURES / "policies"
REFUND = FIXTURES / "inputs/pos_refund_otp.json"


def portcullis(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "portcullis", *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=ROOT,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_policy_test_passes_the_shipped_policies_with_an_opa_style_summary() -> None:
    result = portcullis("policy", "test", "policies/")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    passed, total = summary.removeprefix("PASS: ").split("/")
    assert passed == total and int(total) >= 40


def test_policy_test_verbose_lists_each_test() -> None:
    result = portcullis("policy", "test", "-v", "policies/")
    assert "data.portcullis.gateway_test.test_pos_refund_requires_fresh_mfa: PASS" in result.stdout


def test_policy_test_failure_names_file_and_line_and_exits_1() -> None:
    result = portcullis("policy", "test", str(BAD / "failing_test"))
    assert result.returncode == 1
    test_file = BAD / "failing_test/limits_test.rego"
    assert f"  {test_file}:9: undefined" in result.stdout
    assert "data.limits_test.test_large_amount_is_allowed: FAIL" in result.stdout
    assert "amount under test: 500" in result.stdout  # prints of failing tests
    assert "data.limits_test.test_type_error_is_reported: ERROR" in result.stdout
    assert result.stdout.strip().endswith("PASS: 1/3\nFAIL: 2/3")


def test_policy_test_of_a_policy_that_does_not_load_exits_2_with_one_line() -> None:
    result = portcullis("policy", "test", str(BAD / "yaml_date"))
    assert (result.returncode, result.stderr) == (
        2,
        f"{BAD}/yaml_date/extra.yaml:3:10: data.extra.since: a YAML date/time (2026-11-01) "
        "is not a JSON value; quote it to keep it as a string\n",
    )


def test_policy_test_coverage_prints_per_file_percentages() -> None:
    result = portcullis("policy", "test", "--coverage", "policies/")
    assert result.returncode == 0
    coverage_lines = [line for line in result.stdout.splitlines() if line.endswith("decision.rego")]
    assert coverage_lines, result.stdout
    percent = float(coverage_lines[0].split("%")[0])
    assert 80.0 <= percent <= 100.0


def test_policy_test_run_filter_selects_tests() -> None:
    result = portcullis("policy", "test", "-v", "--run", "pos_refund", "policies/")
    assert result.returncode == 0
    listed = [line for line in result.stdout.splitlines() if ": PASS" in line]
    assert listed and all("pos_refund" in line for line in listed)


def test_a_run_filter_that_matches_no_test_fails_saying_it_matched_none_of_how_many() -> None:
    """`--run refnud` said "no tests found", as if the policies had none."""
    every = portcullis("policy", "test", "policies/")
    total = int(every.stdout.strip().splitlines()[-1].split("/")[1])
    result = portcullis("policy", "test", "--run", "refnud", "policies/")
    assert result.returncode == 1
    assert result.stderr == (
        f"no tests found: --run 'refnud' matched none of the {total} tests "
        "(it is looked for in names as -v prints them)\n"
    )


def test_policy_test_prints_no_separator_rule_with_nothing_listed_above_it_as_opa_test() -> None:
    """With no test run, stdout was a bare 80-dash line, and a run of passing tests
    started with one: `opa test` prints the rule only below listed tests."""
    none_ran = portcullis("policy", "test", "--run", "refnud", "policies/")
    assert none_ran.returncode == 1 and none_ran.stdout == ""
    all_passed = portcullis("policy", "test", "policies/")
    assert all_passed.returncode == 0
    assert all_passed.stdout.startswith("PASS: ") and all_passed.stdout.count("\n") == 1
    listed = portcullis("policy", "test", "-v", "--run", "pos_refund", "policies/")
    assert "-" * 80 + "\nPASS: " in listed.stdout


def test_policy_check_accepts_the_shipped_policies() -> None:
    result = portcullis("policy", "check", "policies")
    assert result.returncode == 0
    assert result.stdout.startswith("policies: OK")
    assert "warning" not in result.stdout + result.stderr


def test_policy_check_of_one_module_with_one_rule_counts_them_in_the_singular(
    tmp_path: Path,
) -> None:
    (tmp_path / "only.rego").write_text("package only\n\nimport rego.v1\n\nallow if input.ok\n")
    result = portcullis("policy", "check", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path}: OK (1 module, 1 rule evaluated)\n"


def test_policy_check_warns_on_not_over_an_argument_that_may_be_undefined() -> None:
    result = portcullis("policy", "check", str(BAD / "not_over_undefined"))
    assert result.returncode == 0
    assert "1 modules" not in result.stdout and "2 portability warnings" in result.stdout
    rego = BAD / "not_over_undefined/fresh.rego"
    warnings = result.stderr.strip().splitlines()
    assert warnings[0].startswith(f"{rego}:7:31: warning: `not` over an argument of is_number(")
    assert warnings[1].startswith(f"{rego}:11:17: warning: `not` over the result of known_tls(")
    assert all("OPA treats the whole `not` as undefined" in w for w in warnings)


# A gateway decision that allows unless the rule after it says otherwise.
GATEWAY_ALLOWING_UNLESS = (
    "package portcullis.gateway\nimport rego.v1\n"
    'decision := {"allow": allow}\ndefault allow := true\n'
)
# A helper package the compiled VM would answer otherwise (`o` at 4:5).
LIBRARY_ON_PAST_UNDEFINED = (
    "package portcullis.lib.origin\nimport rego.v1\n"
    "plain if {\n    o := input.attributes.request.http.headers.origin\n"
    '    not startswith(o, "h")\n}\n'
)


def test_policy_check_warns_where_the_gateways_compiled_vm_would_answer_otherwise(
    tmp_path: Path,
) -> None:
    """`x := <maybe undefined>` then `not` over x, in the gateway's package: the
    gateway decides on the interpreter (tests/test_engine_fidelity.py), and says
    where. In a package the decision doesn't read (never on the gateway's VM):
    no warning."""
    (tmp_path / "gateway.rego").write_text(
        GATEWAY_ALLOWING_UNLESS
        + "allow := false if {\n    origin := input.attributes.request.http.headers.origin\n"
        '    not startswith(origin, "https://")\n}\n'
    )
    (tmp_path / "library.rego").write_text(LIBRARY_ON_PAST_UNDEFINED)
    result = portcullis("policy", "check", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "1 compiled-VM warning)" in result.stdout
    [warning] = [line for line in result.stderr.splitlines() if "compiled VM" in line]
    assert warning.startswith(f"{tmp_path / 'gateway.rego'}:6:5: warning: `origin := ...`")


def test_policy_check_warns_where_a_library_the_gateway_reads_would_answer_otherwise(
    tmp_path: Path,
) -> None:
    """The VM compiles what the decision calls: a library's rule is on it too."""
    (tmp_path / "gateway.rego").write_text(
        GATEWAY_ALLOWING_UNLESS + "allow := false if data.portcullis.lib.origin.plain\n"
    )
    (tmp_path / "library.rego").write_text(LIBRARY_ON_PAST_UNDEFINED)
    result = portcullis("policy", "check", str(tmp_path))
    assert result.returncode == 0, result.stderr
    [warning] = [line for line in result.stderr.splitlines() if "compiled VM" in line]
    assert warning.startswith(f"{tmp_path / 'library.rego'}:4:5: warning: `o := ...`")


def test_policy_check_warns_on_not_over_in_or_a_comparison_with_an_undefined_operand() -> None:
    result = portcullis("policy", "check", str(BAD / "not_in_undefined"))
    assert result.returncode == 0
    assert "3 portability warnings" in result.stdout
    rego = BAD / "not_in_undefined/roles.rego"
    warnings = [line.split(": if it is undefined")[0] for line in result.stderr.splitlines()]
    assert warnings == [
        f"{rego}:10:38: warning: `not` over an operand of `in` that may be undefined",
        f"{rego}:12:26: warning: `not` over an operand of `in` that may be undefined",
        f"{rego}:14:23: warning: `not` over an operand of `>=` that may be undefined",
    ]


def test_what_check_warns_on_under_not_in_fails_on_opa_and_nothing_else() -> None:
    fixture = str(BAD / "not_in_undefined")
    on_regorus = portcullis("policy", "test", fixture)
    assert on_regorus.returncode == 0 and on_regorus.stdout.endswith("PASS: 6/6\n")
    result = portcullis("policy", "test", "--engine", "opa", fixture)
    assert result.returncode == 1
    failed = [line.split(":")[0] for line in result.stdout.splitlines() if ": FAIL" in line]
    assert failed == [
        "data.roles_test.test_missing_roles_is_denied",
        "data.roles_test.test_missing_user_is_denied",
        "data.roles_test.test_missing_age_is_denied",
    ]
    assert result.stdout.endswith("PASS: 3/6\nFAIL: 3/6\n")


@pytest.mark.parametrize("command", [("check",), ("test",), ("test", "--engine", "opa")])
def test_a_ref_head_with_a_name_where_another_has_a_variable_is_refused(
    command: tuple[str, ...],
) -> None:
    result = portcullis("policy", *command, str(BAD / "ref_head_overlap"))
    rego = BAD / "ref_head_overlap/access.rego"
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"{rego}:15:1: rule data.access.groups.pos.members has a name where the rule at "
        f"{rego}:10 has a variable (after data.access.groups): OPA reads "
        "data.access.groups.pos from both rules, regorus from this one alone; write this "
        'one with a variable too (groups[key]... if key := "pos") or give the two different '
        "names\n"
    )


@pytest.mark.parametrize("engine", ["regorus", "opa"])
def test_ref_heads_with_a_variable_beside_names_elsewhere_pass_on_both_engines(
    engine: str,
) -> None:
    fixture = str(BAD / "ref_heads_apart")
    assert portcullis("policy", "check", fixture).returncode == 0
    result = portcullis("policy", "test", "--engine", engine, fixture)
    assert (result.returncode, result.stdout.splitlines()[-1]) == (0, "PASS: 1/1")


def test_policy_test_on_opa_passes_the_shipped_policies() -> None:
    result = portcullis("policy", "test", "--engine", "opa", "policies/")
    assert result.returncode == 0, result.stdout + result.stderr
    regorus = portcullis("policy", "test", "policies/").stdout.strip().splitlines()[-1]
    assert result.stdout.strip().splitlines()[-1] == regorus


def test_policy_test_on_opa_fails_what_passes_only_on_regorus() -> None:
    fixture = str(BAD / "not_over_undefined")
    assert portcullis("policy", "test", fixture).returncode == 0
    result = portcullis("policy", "test", "--engine", "opa", fixture)
    assert result.returncode == 1
    assert "data.fresh_test.test_missing_auth_time_is_noticed: FAIL" in result.stdout
    assert "data.fresh_test.test_unknown_policy_is_weak: FAIL" in result.stdout


def test_policy_test_on_opa_without_the_oracle_says_how_to_install_it(tmp_path: Path) -> None:
    hidden = tmp_path / "opa_bindings"
    hidden.mkdir()
    (hidden / "__init__.py").write_text("raise ImportError('not installed')\n")
    result = subprocess.run(
        [sys.executable, "-m", "portcullis", "policy", "test", "--engine", "opa", "policies/"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "OPA's Go evaluator is not installed; install it with: pip install --no-deps "
        "--ignore-requires-python opa-golib-python-bindings==0.4.4"
    )


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("syntax_error", "syntax_error/broken.rego:7:1: "),
        (
            "unsafe_variable",
            "unsafe_variable/unsafe.rego:7:2: use of undefined variable `x` is unsafe",
        ),
        ("unknown_function", "unknown_function/jwt.rego:8:2: unknown function io.jwt.decode"),
        ("conflicting_data", "conflicting_data/two.yaml: conflicting data keys: "),
        ("bad_yaml", "bad_yaml/apps.yaml:4:6: invalid YAML"),
        ("bad_json", "bad_json/apps.json:3:12: invalid JSON"),
        ("yaml_date", "yaml_date/extra.yaml:3:10: data.extra.since: a YAML date/time"),
        ("too_deep", "too_deep/deep.json: nested too deeply to read"),
        (
            "shadowed_alias",
            "shadowed_alias/lib.rego:5:1: import shadows following import defined earlier at "
            f"{BAD}/shadowed_alias/lib.rego:4:1: this import is shadowed",
        ),
        (
            "shadowed_import",
            "shadowed_import/lib.rego:5:8: import must not shadow import input.identity",
        ),
    ],
)
def test_policy_check_names_each_problem_and_exits_2(fixture: str, expected: str) -> None:
    result = portcullis("policy", "check", str(BAD / fixture))
    assert result.returncode == 2
    assert f"{BAD}/{expected}" in result.stderr


@pytest.mark.parametrize("command", ["check", "test"])
def test_a_rule_clashing_with_data_names_the_rule_and_the_data_file(command: str) -> None:
    result = portcullis("policy", command, str(BAD / "rule_data_conflict"))
    assert (result.returncode, result.stderr) == (
        2,
        f"{BAD}/rule_data_conflict/catalogue.rego:5:1: conflicting data keys: rule apps and "
        f"data.portcullis.catalogue.apps from {BAD}/rule_data_conflict/apps.yaml\n",
    )


def test_a_rule_clashing_with_a_bundles_data_names_both_inside_the_bundle(tmp_path: Path) -> None:
    """A bundle's data.yaml is mounted at its directory: the problem names that file."""
    bundle = tmp_path / "b.tar.gz"
    with tarfile.open(bundle, "w:gz") as archive:
        archive.add(BAD / "rule_data_conflict/catalogue.rego", "catalogue.rego")
        data = tmp_path / "data.yaml"
        data.write_text("apps:\n  pos: {}\n")
        archive.add(data, "portcullis/catalogue/data.yaml")
    result = portcullis("policy", "check", str(bundle))
    assert (result.returncode, result.stderr) == (
        2,
        f"{bundle}:catalogue.rego:5:1: conflicting data keys: rule apps and "
        f"data.portcullis.catalogue.apps from {bundle}:portcullis/catalogue/data.yaml\n",
    )


GATEWAY_FILES = (
    "policies/gateway/decision_test.rego",
    "policies/gateway/decision.rego",
    "policies/gateway/memo.rego",
    "policies/data/apps.yaml",
)


def test_policy_test_of_files_loads_them_as_one_set_as_opa_test_does() -> None:
    """`opa test decision.rego decision_test.rego apps.yaml` is how an OPA user
    tests one policy; it was refused as "not a policy directory"."""
    result = portcullis("policy", "test", "-v", *GATEWAY_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "data.portcullis.gateway_test.test_pos_refund_requires_fresh_mfa: PASS" in result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    passed, total = summary.removeprefix("PASS: ").split("/")
    assert passed == total and int(total) >= 30
    # Together: without the catalogue the policy's tests fail, as on OPA.
    alone = portcullis("policy", "test", *GATEWAY_FILES[:3])
    assert alone.returncode == 1 and "FAIL: " in alone.stdout


def test_files_named_beside_a_directory_are_one_set_and_the_directory_another() -> None:
    test_file = BAD / "failing_test/limits_test.rego"
    result = portcullis("policy", "test", *GATEWAY_FILES, str(BAD / "failing_test"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"  {test_file}:9: undefined" in result.stdout
    assert result.stdout.count("PASS: ") == 2  # one summary per set
    check = portcullis("policy", "check", str(BAD / "failing_test"), *GATEWAY_FILES)
    assert check.returncode == 0, check.stderr
    assert f"{' '.join(GATEWAY_FILES)}: OK (3 modules," in check.stdout


def test_policy_files_that_cant_be_loaded_are_each_named_and_nothing_runs(
    tmp_path: Path,
) -> None:
    dangling = tmp_path / "gone.rego"
    dangling.symlink_to(tmp_path / "nowhere.rego")
    notes = tmp_path / "notes.txt"
    notes.write_text("not policy")
    missing = tmp_path / "missing_test.rego"
    for command in ("test", "check"):
        result = portcullis(
            "policy", command, *GATEWAY_FILES, str(missing), str(notes), str(dangling)
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stdout == ""
        assert result.stderr.splitlines() == [
            f"{missing}: no such file",
            f"{notes}: not a .rego file, a data file (.json, .yaml, .yml), a policy "
            "directory or an OPA bundle (.tar.gz)",
            f"{dangling}: a link that leads nowhere (or loops)",
        ]


def test_policy_check_of_a_missing_directory_exits_2() -> None:
    result = portcullis("policy", "check", "no/such/dir")
    assert (result.returncode, result.stderr) == (
        2,
        "no/such/dir: no such policy directory or bundle\n",
    )


def test_policy_eval_prints_the_decision_as_json() -> None:
    result = portcullis("policy", "eval", "--policy", "policies", "--input", str(REFUND))
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision == {
        "allow": False,
        "headers": {},
        "http_status": 403,
        "reasons": ["requires MFA with one of: fido, hwk"],
        "step_up": {"acr": "phr", "max_age": 900},
        "valid_until_ns": None,
    }


def test_policy_eval_reads_input_from_stdin_and_takes_a_query() -> None:
    result = portcullis(
        "policy", "eval", "--policy", "policies", "--input", "-",
        "data.portcullis.gateway.http_status", stdin=REFUND.read_text(),
    )  # fmt: skip
    assert (result.returncode, result.stdout.strip()) == (0, "403")


def test_policy_eval_with_invalid_json_input_exits_2_with_line_and_column() -> None:
    result = portcullis("policy", "eval", "--input", str(FIXTURES / "inputs/not_json.json"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{FIXTURES}/inputs/not_json.json:3:1: invalid JSON")


def test_policy_eval_with_missing_input_file_exits_2() -> None:
    result = portcullis("policy", "eval", "--input", "nope.json")
    assert (result.returncode, result.stderr) == (2, "nope.json: no such input file\n")


def test_policy_eval_of_an_unknown_query_path_exits_2() -> None:
    result = portcullis("policy", "eval", "--input", str(REFUND), "data.portcullis.nope")
    assert result.returncode == 2
    assert (
        result.stderr == "data.portcullis.nope: no such rule, package or data in the policy set\n"
    )


def test_policy_eval_of_an_undefined_value_exits_1() -> None:
    result = portcullis("policy", "eval", "data.portcullis.gateway.app")
    assert result.returncode == 1
    assert "undefined" in result.stderr


def test_policy_eval_with_a_broken_policy_exits_2() -> None:
    result = portcullis("policy", "eval", "--policy", str(BAD / "syntax_error"))
    assert result.returncode == 2
    assert "broken.rego:7:1" in result.stderr


def test_policy_bundle_round_trips_through_eval(tmp_path: Path) -> None:
    bundle = tmp_path / "policies.tar.gz"
    made = portcullis("policy", "bundle", "policies", "-o", str(bundle), "--revision", "v7")
    assert made.returncode == 0, made.stderr
    assert "revision v7" in made.stdout
    from_bundle = portcullis("policy", "eval", "--policy", str(bundle), "--input", str(REFUND))
    from_dir = portcullis("policy", "eval", "--policy", "policies", "--input", str(REFUND))
    assert from_bundle.stdout == from_dir.stdout
    tests = portcullis("policy", "test", str(bundle))
    assert tests.returncode == 0


def test_policy_bundle_refuses_a_broken_policy(tmp_path: Path) -> None:
    result = portcullis(
        "policy", "bundle", str(BAD / "unsafe_variable"), "-o", str(tmp_path / "b.tar.gz")
    )
    assert result.returncode == 2
    assert not (tmp_path / "b.tar.gz").exists()


@pytest.mark.parametrize("where", ["missing/dir/b.tar.gz", "."], ids=["no-such-dir", "a-dir"])
def test_policy_bundle_to_a_path_it_cannot_write_is_one_line_and_exit_2(
    tmp_path: Path, where: str
) -> None:
    """A mistyped -o says so in one line (no traceback), and leaves no half bundle."""
    result = portcullis("policy", "bundle", "policies", "-o", str(tmp_path / where))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert str(tmp_path / where) in result.stderr
    assert list(tmp_path.rglob("*partial*")) == []


def test_version() -> None:
    result = portcullis("--version")
    assert result.stdout.startswith("portcullis ")


PRINTS = BAD / "prints"


def test_policy_check_prints_nothing_of_the_policys_print_calls() -> None:
    # `opa check` parses and compiles: its only output is errors.
    result = portcullis("policy", "check", str(PRINTS))
    assert result.returncode == 0
    assert (result.stdout, result.stderr) == (f"{PRINTS}: OK (2 modules, 3 rules evaluated)\n", "")


def test_policy_eval_writes_prints_to_stderr_and_only_the_answer_to_stdout() -> None:
    # As `opa eval`: stdout stays parseable JSON.
    result = portcullis(
        "policy",
        "eval",
        "--policy",
        str(PRINTS),
        "--input",
        "-",
        "data.p.allow",
        stdin='{"user": "alice"}',
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) is True
    assert result.stderr == f"{PRINTS}/p.rego:4: checking alice\n"


@pytest.mark.parametrize("engine", ["regorus", "opa"])
def test_policy_test_verbose_shows_each_tests_own_prints(engine: str) -> None:
    result = portcullis("policy", "test", "-v", "--engine", engine, str(PRINTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert [line.split(" (")[0] for line in result.stdout.splitlines()[1:7]] == [
        "data.p_test.test_alice: PASS",
        f"  {PRINTS}/p_test.rego:6: as alice",
        f"  {PRINTS}/p.rego:4: checking alice",
        "data.p_test.test_bob: PASS",
        f"  {PRINTS}/p_test.rego:11: as bob",
        f"  {PRINTS}/p.rego:4: checking bob",
    ]


@pytest.mark.parametrize(
    "broken",
    ["data/apps.yaml", "terraform/public_s3.rego", "gateway/loop.rego", "gateway/queue.rego"],
    ids=["data-link-to-nowhere", "module-link-to-nowhere", "link-loop", "fifo"],
)
def test_a_policy_file_that_cant_be_read_as_one_fails_check_test_and_scan(
    tmp_path: Path, broken: str
) -> None:
    """A dangling link was skipped without a word: the catalogue gone, `policy check`
    said OK and `scan` PASSed with the critical findings missing (a ConfigMap mount
    is made of links)."""
    policies = tmp_path / "policies"
    subprocess.run(["cp", "-r", str(ROOT / "policies"), str(policies)], check=True)
    target = policies / broken
    target.unlink(missing_ok=True)
    if broken.endswith("queue.rego"):
        os.mkfifo(target)
        expected = "not a regular file"
    else:
        target.symlink_to(target if "loop" in broken else tmp_path / "nowhere" / target.name)
        expected = "a link that leads nowhere (or loops)"
    for command in (["policy", "check"], ["policy", "test"]):
        result = portcullis(*command, str(policies))
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"{target}: {expected}" in result.stderr
    result = portcullis(
        "scan", str(ROOT / "examples/terraform"), "--no-cache", "--policy", str(policies)
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{target}: {expected}" in result.stderr
