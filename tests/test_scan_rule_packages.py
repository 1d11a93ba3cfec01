"""Custom `portcullis.terraform.*` rule packages beside the shipped ones: one
package's mistake is that package's (or an error naming it), never a scan
that silently finds nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from portcullis.cli import main
from tests.conftest import FIXTURES, POLICIES
from tests.test_policy_cli import portcullis

POS_APP = FIXTURES / "terraform/pos_app"

METADATA = '{"id": "ACME-TF-1", "title": "t", "severity": "low", "remediation": "r"}'


def with_package(tmp_path: Path, rego: str, name: str = "extra") -> Path:
    """The shipped policy set plus one custom package in extra/<name>.rego."""
    policy = shutil.copytree(POLICIES, tmp_path / f"policy-{name}")
    (policy / "extra").mkdir(exist_ok=True)
    (policy / "extra" / f"{name}.rego").write_text(
        f"package portcullis.terraform.{name}\n\nimport rego.v1\n\n{rego}"
    )
    return policy


def scan(capsys: pytest.CaptureFixture[str], policy: Path) -> tuple[int, dict[str, Any], str]:
    code = main(["scan", str(POS_APP), "--no-cache", "--output", "json", "--policy", str(policy)])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out else {}, err


@pytest.fixture(scope="module")
def shipped_findings() -> set[tuple[str, str]]:
    """(rule id, resource) of what the shipped policy set finds in pos_app."""
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        main(["scan", str(POS_APP), "--no-cache", "--output", "json", "--policy", str(POLICIES)])
    found = {(f["rule_id"], f["resource"]) for f in json.loads(out.getvalue())["findings"]}
    assert len(found) >= 10
    return found


def found(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(f["rule_id"], f["resource"]) for f in report["findings"]}


@pytest.mark.parametrize(
    "rules",
    [
        pytest.param(
            'deny := {{"resource": r.address, "message": "m"} | some r in input.resources} '
            "if input.strict\n",
            id="deny",
        ),
        pytest.param(
            'deny contains {"resource": r.address, "message": "m"} if {\n'
            "\tsome r in input.resources\n"
            '\tr.type == "aws_instance"\n'
            "}\n\n"
            'not_judged := {{"resource": r.address, "path": "ami"} | some r in input.resources} '
            "if input.strict\n",
            id="not_judged",
        ),
    ],
)
def test_a_package_whose_deny_or_not_judged_is_undefined_silences_no_other_rule(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    shipped_findings: set[tuple[str, str]],
    rules: str,
) -> None:
    # OPA and conftest: an undefined deny (or not_judged) is no results, for that
    # package only; the custom deny finds nothing on this input either.
    policy = with_package(tmp_path, f"metadata := {METADATA}\n\n" + rules)
    code, report, err = scan(capsys, policy)
    assert err == ""
    assert found(report) == shipped_findings
    assert code == 1


def test_a_deny_that_is_undefined_for_one_package_keeps_its_findings_in_another(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shipped_findings: set[tuple[str, str]]
) -> None:
    policy = with_package(
        tmp_path,
        f"metadata := {METADATA}\n\n"
        'deny contains {"resource": "aws_lb.pos", "message": "m"} if { true }\n',
        name="always",
    )
    (policy / "extra" / "never.rego").write_text(
        "package portcullis.terraform.never\n\nimport rego.v1\n\n"
        f"metadata := {METADATA.replace('ACME-TF-1', 'ACME-TF-2')}\n\n"
        'deny := {{"resource": "aws_lb.pos", "message": "m"}} if input.strict\n'
    )
    code, report, err = scan(capsys, policy)
    assert err == "" and code == 1
    assert found(report) == shipped_findings | {("ACME-TF-1", "aws_lb.pos")}


def test_policy_diff_with_a_candidate_whose_deny_is_undefined_loses_no_shipped_finding(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    candidate = with_package(
        tmp_path,
        f"metadata := {METADATA}\n\n"
        'deny := {{"resource": r.address, "message": "m"} | some r in input.resources} '
        "if input.strict\n",
    )
    code = main(["policy", "diff", str(POS_APP), "--output", "json", "--policy", str(candidate)])
    report = json.loads(capsys.readouterr().out)
    assert report["disappeared"] == [] and report["appeared"] == []
    assert report["unchanged"] >= 10
    assert code == 0


@pytest.mark.parametrize(
    ("deny", "kind"),
    [
        ("deny := 5", "a number"),
        ('deny := "m"', "a string"),
        ('deny := {"resource": "aws_lb.pos", "message": "m"}', "an object"),
        ("deny := null", "null"),
    ],
)
def test_a_deny_that_is_not_a_set_is_an_error_naming_the_package(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, deny: str, kind: str
) -> None:
    policy = with_package(tmp_path, f"metadata := {METADATA}\n\n{deny}\n")
    code, _, err = scan(capsys, policy)
    assert code == 2
    assert f"data.portcullis.terraform.extra.deny: must be a set, got {kind}" in err


def test_a_rule_that_fails_to_evaluate_is_an_error_never_a_pass(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = with_package(
        tmp_path,
        f"metadata := {METADATA}\n\n"
        'deny contains {"resource": r.address, "message": m} if {\n'
        "\tsome r in input.resources\n"
        '\tm := sprintf("%s", [to_number("x")])\n'
        "}\n",
    )
    code, _, err = scan(capsys, policy)
    assert code == 2
    assert f"policy evaluation failed: {policy}/extra/extra.rego:" in err


DENY_EVERY_RESOURCE = (
    'deny contains {"resource": r.address, "message": "m"} if {\n\tsome r in input.resources\n}\n'
)


def test_a_rule_package_without_metadata_is_an_error_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = with_package(tmp_path, DENY_EVERY_RESOURCE)
    code, report, err = scan(capsys, policy)
    assert code == 2 and report == {}
    assert err == (
        f"portcullis scan: {policy}/extra/extra.rego:5:1: package portcullis.terraform.extra "
        "has deny but no metadata: a rule package declares both (metadata := "
        '{"id", "title", "severity", "remediation"})\n'
    )


def test_a_rule_package_with_metadata_but_no_deny_is_an_error_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # conftest's other rule names (violation, warn) are not the scanner's.
    policy = with_package(
        tmp_path, f"metadata := {METADATA}\n\n" + DENY_EVERY_RESOURCE.replace("deny", "violation")
    )
    code, _, err = scan(capsys, policy)
    assert code == 2
    where = f"{policy}/extra/extra.rego:5:1"
    assert f"{where}: package portcullis.terraform.extra has metadata but no deny" in err


def test_a_helper_package_with_no_rule_parts_is_not_a_rule(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shipped_findings: set[tuple[str, str]]
) -> None:
    policy = with_package(tmp_path, 'is_db(r) if r.type == "aws_db_instance"\n', name="helpers")
    code, report, err = scan(capsys, policy)
    assert err == "" and code == 1
    assert found(report) == shipped_findings


def test_policy_diff_with_a_candidate_rule_without_metadata_is_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    candidate = with_package(tmp_path, DENY_EVERY_RESOURCE)
    code = main(["policy", "diff", str(POS_APP), "--policy", str(candidate)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "package portcullis.terraform.extra has deny but no metadata" in err


def test_two_packages_with_one_rule_id_is_an_error_naming_both(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Merged, they were one SARIF rule whose findings had two severities, and a
    # suppression or baseline entry for the id covered both.
    policy = with_package(
        tmp_path,
        f"metadata := {METADATA.replace('ACME-TF-1', 'PC-TF-006')}\n\n" + DENY_EVERY_RESOURCE,
    )
    code, report, err = scan(capsys, policy)
    assert code == 2 and report == {}
    assert err == (
        f"portcullis scan: {policy}/extra/extra.rego:5:1: packages portcullis.terraform.extra "
        f"and portcullis.terraform.public_s3 ({policy}/terraform/public_s3.rego:10:1) both "
        "declare rule id PC-TF-006: a rule id names one rule\n"
    )


def test_policy_diff_with_a_candidate_that_reuses_a_rule_id_is_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    candidate = with_package(
        tmp_path,
        f"metadata := {METADATA.replace('ACME-TF-1', 'PC-TF-006')}\n\n" + DENY_EVERY_RESOURCE,
    )
    code = main(["policy", "diff", str(POS_APP), "--policy", str(candidate)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "extra and portcullis.terraform.public_s3 (" in err
    assert "both declare rule id PC-TF-006" in err


def test_results_the_engine_gives_that_cannot_be_read_are_an_error_not_no_findings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from iac_scanner.findings import Rule
    from iac_scanner.policy import RuleSet

    # As if the engine answered undefined (or null) for every query.
    monkeypatch.setattr(RuleSet, "_eval", lambda self, ref: None)
    monkeypatch.setattr(
        RuleSet, "_metadata", lambda self, ref: Rule(id=ref, title="t", severity="low")
    )
    code, _, err = scan(capsys, POLICIES)
    assert code == 2
    assert "policy evaluation failed: the rule packages gave no readable results (null)" in err


# --- policy check and policy test refuse what scan refuses ------------------------------

SEVERE = METADATA.replace('"low"', '"severe"')


@pytest.mark.parametrize(
    "rules",
    [
        pytest.param(f"metadata := {SEVERE}\n\n{DENY_EVERY_RESOURCE}", id="unknown-severity"),
        pytest.param(
            f"metadata := {METADATA.replace('ACME-TF-1', 'PC-TF-006')}\n\n{DENY_EVERY_RESOURCE}",
            id="reused-id",
        ),
        pytest.param(DENY_EVERY_RESOURCE, id="deny-without-metadata"),
    ],
)
def test_policy_check_and_test_refuse_a_rule_package_scan_refuses_with_its_message(
    tmp_path: Path, rules: str
) -> None:
    policy = with_package(tmp_path, rules)
    scanned = portcullis("scan", str(POS_APP), "--no-cache", "--policy", str(policy))
    assert scanned.returncode == 2 and scanned.stdout == ""
    refused = [line.removeprefix("portcullis scan: ") for line in scanned.stderr.splitlines()]
    assert refused and all(refused)
    for command in ("check", "test"):
        result = portcullis("policy", command, str(policy))
        assert (result.returncode, result.stdout, result.stderr.splitlines()) == (2, "", refused)


def test_an_unknown_severity_is_refused_at_the_metadata_that_declares_it(tmp_path: Path) -> None:
    policy = with_package(tmp_path, f"metadata := {SEVERE}\n\n{DENY_EVERY_RESOURCE}")
    result = portcullis("policy", "check", str(policy))
    assert result.stderr == (
        f"{policy}/extra/extra.rego:5:1: data.portcullis.terraform.extra.metadata: "
        "severity 'severe' is not one of low, medium, high, critical\n"
    )


def test_a_deny_item_without_a_message_is_a_finding_with_the_rule_title_in_check_and_scan(
    tmp_path: Path,
) -> None:
    """Documented: a message left out is the rule's title; nothing refuses it."""
    policy = with_package(
        tmp_path,
        f"metadata := {METADATA}\n\n"
        'deny contains {"resource": r.address} if {\n'
        "\tsome r in input.resources\n"
        '\tr.type == "aws_lb"\n'
        "}\n",
    )
    checked = portcullis("policy", "check", str(policy))
    assert (checked.returncode, checked.stderr) == (0, "")
    scanned = portcullis(
        "scan", str(POS_APP), "--no-cache", "--output", "json", "--policy", str(policy)
    )
    assert scanned.returncode == 1
    ours = [f for f in json.loads(scanned.stdout)["findings"] if f["rule_id"] == "ACME-TF-1"]
    assert ours and {f["message"] for f in ours} == {"t"}
