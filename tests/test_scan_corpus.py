"""The scanner on real Terraform nobody here wrote (../shared/corpus/terraform)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from iac_scanner.loader import LoadOptions, load
from iac_scanner.scan import ScanOptions, scan
from tests.conftest import FIXTURES, POLICIES, SHARED

CORPUS = SHARED / "corpus/terraform"
TERRAGOAT = CORPUS / "terragoat"
EXPECTED = json.loads((FIXTURES / "terragoat_expected.json").read_text())
CATALOGUE_RULES = {"PC-TF-001", "PC-TF-002", "PC-TF-003", "PC-TF-008"}


def findings(path: Path, policy: Path = POLICIES) -> list[tuple[str, str, str, int]]:
    result = scan(ScanOptions(paths=[str(path)], policy=str(policy)))
    assert result.problems == []
    return [(f.rule.id, f.resource, f.file, f.line) for f in result.findings]


def test_terragoat_with_the_shipped_catalogue() -> None:
    found = findings(TERRAGOAT)
    expected = [
        (e["rule"], e["resource"], str(TERRAGOAT / e["file"]), e["line"])
        for e in EXPECTED["shipped_catalogue"]
    ]
    assert found == expected


def pos_tagged_policies(tmp_path: Path) -> Path:
    """The shipped policies with a catalogue whose pos app is tagged git_repo =
    terragoat (every terragoat resource has that tag), so the catalogue rules
    apply to the corpus too."""
    policy = tmp_path / "policies"
    shutil.copytree(POLICIES, policy)
    apps = policy / "data/apps.yaml"
    catalogue = yaml.safe_load(apps.read_text())
    catalogue["portcullis"]["catalogue"]["apps"]["pos"]["terraform_tags"] = {
        "git_repo": "terragoat"
    }
    apps.write_text(yaml.safe_dump(catalogue))
    return policy


def test_terragoat_tagged_as_the_pos_app_trips_every_aws_rule(tmp_path: Path) -> None:
    policy = pos_tagged_policies(tmp_path)
    found = {(rule, resource, line) for rule, resource, _, line in findings(TERRAGOAT, policy)}
    expected = {(e["rule"], e["resource"], e["line"]) for e in EXPECTED["tagged_as_pos"]}
    assert found == expected
    assert {rule for rule, _, _ in found} == {f"PC-TF-00{i}" for i in range(1, 9)} - {
        "PC-TF-006",
        "PC-TF-007",
    }


@pytest.mark.parametrize("module", ["terraform-aws-vpc", "terraform-aws-s3-bucket"])
def test_module_heavy_trees_parse_and_raise_no_catalogue_findings(module: str) -> None:
    result = scan(ScanOptions(paths=[str(CORPUS / module)], policy=str(POLICIES), jobs=2))
    assert result.problems == []
    assert result.files == len(list((CORPUS / module).rglob("*.tf")))
    assert not [f for f in result.findings if f.rule.id in CATALOGUE_RULES]


def test_module_heavy_trees_have_no_finding_based_on_an_unresolved_value() -> None:
    """The one finding on these trees is examples/complete's website bucket,
    whose website map the example spells out (index and error documents)."""
    tree = CORPUS / "terraform-aws-s3-bucket"
    result = scan(ScanOptions(paths=[str(tree)], policy=str(POLICIES)))
    assert [(f.rule.id, f.resource) for f in result.findings] == [
        ("PC-TF-006", "module.s3_bucket.aws_s3_bucket_website_configuration.this[0]")
    ]
    loaded = load([str(tree / "examples/complete")], LoadOptions())
    [website] = [
        r.entry
        for d in loaded.documents
        for r in d.resources
        if r.entry["address"] == "module.s3_bucket.aws_s3_bucket_website_configuration.this[0]"
    ]
    assert website["config"]["index_document"] == [{"suffix": "index.html"}]
    assert not [u for u in website["unknown"] if u.startswith("redirect_all_requests_to")]
    assert website["config"].get("redirect_all_requests_to", []) == []


def _plans() -> list[Path]:
    return sorted(
        [*(CORPUS / "checkov-plans").rglob("*.json"), *(CORPUS / "regula-plans").rglob("*.json")]
    )


def test_every_corpus_plan_loads() -> None:
    plans = _plans()
    assert len(plans) == 57
    result = load([str(p) for p in plans], LoadOptions())
    assert result.problems == []
    assert len(result.documents) == len(plans)
    assert sum(len(d.resources) for d in result.documents) > 300


def test_plans_from_terraform_0_12_to_0_15_give_the_same_findings() -> None:
    data = CORPUS / "regula-plans/pkg/loader/test_inputs/data"
    per_version: dict[str, Any] = {}
    for version in ("0.12", "0.13", "0.14", "0.15"):
        result = scan(
            ScanOptions(paths=[str(data / f"tfplan.{version}.json")], policy=str(POLICIES))
        )
        per_version[version] = {(f.rule.id, f.resource) for f in result.findings}
    assert per_version["0.12"] == {
        ("PC-TF-005", "aws_security_group.invalid_sg_1"),  # 22 from 0.0.0.0/0
        ("PC-TF-005", "aws_security_group.invalid_sg_2"),  # 20-25 from 0.0.0.0/0
    }
    assert all(found == per_version["0.12"] for found in per_version.values())


def test_terragoat_as_a_plan_matches_its_hcl_where_the_code_agrees() -> None:
    plan = CORPUS / "checkov-plans/tests/terraform/runner/tfplan2.json"
    result = scan(ScanOptions(paths=[str(plan)], policy=str(POLICIES)))
    assert {(f.rule.id, f.resource) for f in result.findings} == {
        ("PC-TF-005", "aws_security_group.web-node"),
        # This older terragoat still had acl = "public-read" on the data bucket.
        ("PC-TF-006", "aws_s3_bucket.data"),
    }
    for finding in result.findings:
        assert finding.file.endswith("tfplan2.json") and finding.line > 1
