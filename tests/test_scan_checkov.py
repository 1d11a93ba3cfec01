"""checkov merged into the same findings, run for real from .venv-checkov
(the Makefile builds it; python-hcl2 and checkov can't share a venv)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from tests.conftest import ROOT, SHARED

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
