"""checkov merged into the same findings, run for real from .venv-checkov
(the Makefile builds it; python-hcl2 and checkov can't share a venv)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import POLICIES, ROOT, SHARED

CHECKOV = ROOT / ".venv-checkov/bin/checkov"
TERRAGOAT_AWS = SHARED / "corpus/terraform/terragoat/terraform/aws"
SKIP_FIXTURE = "tests/fixtures/terraform/checkov_skip"


@pytest.fixture(scope="module")
def merged() -> dict[str, Any]:
    assert CHECKOV.exists(), "run `make test` (or `make .venv-checkov`) to install checkov"
    result = subprocess.run(
        [
            sys.executable, "-m", "portcullis", "scan", "--no-cache",
            str(TERRAGOAT_AWS), SKIP_FIXTURE,
            "--checkov", str(CHECKOV), "--output", "json",
        ],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_checkov_findings_join_the_policy_findings(merged: dict[str, Any]) -> None:
    sources = Counter(f["source"] for f in merged["findings"])
    assert sources["portcullis"] >= 2 and sources["checkov"] > 100
    found = {(f["rule_id"], f["resource"]) for f in merged["findings"]}
    # The same open SSH port, by our rule and by checkov's.
    assert ("PC-TF-005", "aws_security_group.web-node") in found
    assert ("CKV_AWS_24", "aws_security_group.web-node") in found
    assert ("CKV_AWS_16", "aws_db_instance.default") in found  # RDS not encrypted


def test_checkov_findings_carry_file_line_and_a_severity(merged: dict[str, Any]) -> None:
    [rds] = [
        f for f in merged["findings"]
        if (f["rule_id"], f["resource"]) == ("CKV_AWS_16", "aws_db_instance.default")
    ]  # fmt: skip
    assert rds["file"] == f"{TERRAGOAT_AWS}/db-app.tf"
    assert (rds["line"], rds["end_line"]) == (1, 42)
    # checkov without a platform key reports null severities: medium.
    assert rds["severity"] == "medium"
    rules = {r["id"]: r for r in merged["rules"]}
    assert rules["CKV_AWS_16"]["source"] == "checkov"
    assert (
        rules["CKV_AWS_16"]["title"]
        == "Ensure all data stored in the RDS is securely encrypted at rest"
    )


def test_duplicates_per_resource_and_rule_are_collapsed(merged: dict[str, Any]) -> None:
    keys = Counter((f["rule_id"], f["resource"], f["file"]) for f in merged["findings"])
    assert [k for k, n in keys.items() if n > 1 and not k[0].startswith("PC-TF-")] == []


def test_checkov_skip_comments_are_honoured(merged: dict[str, Any]) -> None:
    skipped = [
        f for f in merged["findings"]
        if f["resource"] == "aws_s3_bucket.public" and f["rule_id"] == "CKV_AWS_18"
    ]  # fmt: skip
    assert [f["suppressed"] for f in skipped] == ["access logs go to the central logging account"]


def test_portcullis_ignore_applies_to_checkov_rules_too(merged: dict[str, Any]) -> None:
    [versioning] = [
        f for f in merged["findings"]
        if f["resource"] == "aws_s3_bucket.public" and f["rule_id"] == "CKV_AWS_21"
    ]  # fmt: skip
    assert versioning["suppressed"] == "versioning is handled by the backup job"
    [public] = [
        f for f in merged["findings"]
        if f["resource"] == "aws_s3_bucket.public" and f["rule_id"] == "PC-TF-006"
    ]  # fmt: skip
    assert public["suppressed"] is None


def _scan(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "portcullis", "scan", "--no-cache", "--output", "json", *args],
        capture_output=True, text=True, cwd=cwd, timeout=300,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_a_rule_that_takes_a_checkov_id_is_refused_before_checkov_runs(tmp_path: Path) -> None:
    policy = shutil.copytree(POLICIES, tmp_path / "policy")
    (policy / "acme").mkdir()
    (policy / "acme/logging.rego").write_text(
        "package portcullis.terraform.acme_logging\n\nimport rego.v1\n\n"
        'metadata := {"id": "CKV_AWS_20", "title": "acme bucket logging", '
        '"severity": "high", "remediation": "r"}\n\n'
        'deny contains {"resource": r.address, "message": "no logging"} if {\n'
        "\tsome r in input.resources\n"
        '\tr.type == "aws_s3_bucket"\n'
        "}\n"
    )
    refused = _scan(SKIP_FIXTURE, "--policy", str(policy), "--checkov", str(CHECKOV))
    assert refused.returncode == 2
    assert refused.stdout == ""  # no report: checkov never ran
    assert refused.stderr.splitlines() == [
        f"portcullis scan: {policy}/acme/logging.rego:5:1: package "
        "portcullis.terraform.acme_logging declares rule id CKV_AWS_20, an id in checkov's "
        "space (CKV_*, CKV2_*, ...): with --checkov its findings would be merged with "
        "checkov's check of that id; give the rule an id of your own"
    ]
    # Without checkov there is nothing to clash with: the rule runs.
    alone = _scan(SKIP_FIXTURE, "--policy", str(policy))
    assert alone.returncode == 1
    found = {(f["rule_id"], f["source"]) for f in json.loads(alone.stdout)["findings"]}
    assert ("CKV_AWS_20", "portcullis") in found


def test_a_checkov_custom_check_that_takes_a_policy_rule_id_is_an_error(tmp_path: Path) -> None:
    # checkov reads .checkov.yaml in the directory it runs in: an external
    # check there may take any id, a shipped rule's too.
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks/public_acl.yaml").write_text(
        'metadata:\n  name: "bucket ACL is not public-read"\n  id: "PC-TF-006"\n'
        '  category: "GENERAL_SECURITY"\n'
        'definition:\n  cond_type: "attribute"\n  resource_types: ["aws_s3_bucket"]\n'
        '  attribute: "acl"\n  operator: "not_equals"\n  value: "public-read"\n'
    )
    (tmp_path / ".checkov.yaml").write_text("external-checks-dir:\n  - checks\n")
    shutil.copytree(ROOT / SKIP_FIXTURE, tmp_path / "tree")
    result = _scan("tree", "--policy", str(POLICIES), "--checkov", str(CHECKOV), cwd=tmp_path)
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert [(e["file"], e["message"]) for e in report["errors"]] == [
        (
            None,
            "checkov reported check PC-TF-006, the id of a policy rule: the two checks' "
            "findings can't be told apart; give one of them another id",
        )
    ]
    # Nothing is dropped: both checks' findings are in the report.
    sources = sorted(f["source"] for f in report["findings"] if f["rule_id"] == "PC-TF-006")
    assert sources == ["checkov", "portcullis"]


@pytest.mark.parametrize("where", ["scanned directory", "working directory"])
def test_a_checkov_config_in_the_change_cannot_skip_checkov_checks(
    tmp_path: Path, where: str
) -> None:
    # checkov reads .checkov.yaml/.yml from the directory it scans and the one
    # it runs in: a pull request that adds one with `skip-check` (or
    # `skip-path`, `check`, `baseline`, ...) made checkov's findings vanish,
    # not even reported as suppressed, and the scan passed.
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "main.tf").write_text(
        'resource "aws_instance" "web" {\n  ami           = "ami-123"\n'
        '  instance_type = "t3.micro"\n}\n'
    )
    config = (tree if where == "scanned directory" else tmp_path) / ".checkov.yml"
    config.write_text("skip-check:\n  - CKV_AWS_8\n  - CKV_AWS_79\n")
    result = _scan("tree", "--policy", str(POLICIES), "--checkov", str(CHECKOV), cwd=tmp_path)
    found = [f["rule_id"] for f in json.loads(result.stdout or '{"findings": []}')["findings"]]
    assert "CKV_AWS_8" in found or result.returncode == 2, (result.returncode, found)
    assert result.returncode == 2
    shown = config.relative_to(tmp_path)
    assert result.stderr.splitlines() == [
        f"portcullis scan: checkov: {shown}: `skip-check` would change which of checkov's "
        "checks run or what they report, and this file is read from the scanned tree or "
        "the working directory, which the change under review can edit; remove it (the "
        "scan runs checkov with its own settings; .checkov.yaml may only add checks: "
        "compact, external-checks-dir, external-checks-git, quiet, run-all-external-checks, "
        "skip-download)"
    ]


def test_checkov_skip_text_in_a_string_or_heredoc_or_without_a_reason_suppresses_nothing(
    tmp_path: Path,
) -> None:
    # checkov takes any line of a resource holding `checkov:skip=ID` as a skip,
    # a string's or a heredoc's too, and without a reason: the scan reported
    # those checks as suppressed ("No comment provided") and passed, where the
    # README says such text suppresses nothing and a suppression needs a reason.
    (tmp_path / "main.tf").write_text(
        'resource "aws_s3_bucket" "logs" {\n'
        '  bucket = "logs"\n'
        "  tags = {\n"
        '    note = "checkov:skip=CKV_AWS_18:a tag, not a comment"\n'
        "  }\n"
        "  # checkov:skip=CKV_AWS_21\n"
        "  # bridgecrew:skip=CKV_AWS_144:not our comment syntax\n"
        "  # checkov:skip=CKV_AWS_145:the bucket holds no data yet\n"
        "}\n\n"
        'resource "aws_instance" "web" {\n'
        '  ami           = "ami-123"\n'
        '  instance_type = "t3.micro"\n'
        "  user_data     = <<-EOT\n"
        "    #!/bin/sh\n"
        "    # checkov:skip=CKV_AWS_8:a shell comment in user data\n"
        "    echo hi\n"
        "  EOT\n"
        "}\n"
    )
    result = _scan(".", "--policy", str(POLICIES), "--checkov", str(CHECKOV), cwd=tmp_path)
    report = json.loads(result.stdout)
    suppressed = {
        f["rule_id"]: f["suppressed"]
        for f in report["findings"]
        if f["rule_id"] in {"CKV_AWS_18", "CKV_AWS_21", "CKV_AWS_144", "CKV_AWS_145", "CKV_AWS_8"}
    }
    assert suppressed == {
        "CKV_AWS_18": None,
        "CKV_AWS_21": None,
        "CKV_AWS_144": None,
        "CKV_AWS_145": "the bucket holds no data yet",
        "CKV_AWS_8": None,
    }
    assert result.returncode == 1
    assert (
        "main.tf:6: checkov:skip=CKV_AWS_21 has no reason, so it suppresses nothing; "
        "say why after the id (checkov:skip=ID:reason)" in report["notes"]
    )
