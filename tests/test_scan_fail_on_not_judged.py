"""`portcullis scan --fail-on-not-judged`: a resource a rule could not judge
(a value it reads is unknown at scan time) fails the run as a finding does,
unless a suppression of that rule on the resource or the baseline accepts it;
every report says why the run failed."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema

from tests.test_scan_cli import SARIF_SCHEMA, TERRAFORM, portcullis, scan_json

# var.encrypted and var.internal have no value: PC-TF-002 can't judge the
# database and the cluster, PC-TF-003 the load balancer. Its only finding is
# PC-TF-008 (medium), so `--fail-on high` passes it without the flag.
TREE = "tests/fixtures/terraform/not_judged"
# A plan whose database's storage_encrypted is known only after apply.
PLAN = "tests/fixtures/terraform/not_judged_plan/plan.json"
UNJUDGED = [
    ("PC-TF-002", "aws_db_instance.pos"),
    ("PC-TF-002", "aws_rds_cluster.pos"),
    ("PC-TF-003", "aws_lb.pos"),
]


def unjudged(report: dict[str, object], *, failing: bool) -> list[tuple[str, str]]:
    entries = report["not_judged_resources"]
    assert isinstance(entries, list)
    return [
        (e["rule_id"], e["resource"])
        for e in entries
        if (e["suppressed"] is None and not e["baselined"]) == failing
    ]


def copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(TERRAFORM / "not_judged", tree)
    return tree


def test_a_resource_no_rule_could_judge_fails_the_scan_only_with_fail_on_not_judged() -> None:
    passing = portcullis("scan", "--no-cache", TREE, "--fail-on", "high")
    assert passing.returncode == 0
    assert passing.stdout.rstrip().endswith("3 not judged; PASS")
    failing = portcullis("scan", "--no-cache", TREE, "--fail-on", "high", "--fail-on-not-judged")
    assert failing.returncode == 1
    # The text report names each resource that failed the run, and why it failed.
    assert (
        "not judged: PC-TF-002: 2 resources not judged: `storage_encrypted` is unknown "
        "(var.encrypted has no value)\n"
        f"  {TREE}/main.tf:9  aws_db_instance.pos\n"
        f"  {TREE}/main.tf:16  aws_rds_cluster.pos\n"
    ) in failing.stdout
    assert failing.stdout.rstrip().endswith(
        "3 not judged; 3 not judged with --fail-on-not-judged: FAIL"
    )
    # Given the values, every resource is judged: the flag has nothing to fail on.
    judged = portcullis(
        "scan", "--no-cache", TREE, "--fail-on", "high", "--fail-on-not-judged",
        "--var", "encrypted=true", "--var", "internal=true",
    )  # fmt: skip
    assert judged.returncode == 0, judged.stdout
    assert judged.stdout.rstrip().endswith("PASS")


def test_a_plan_value_known_only_after_apply_fails_the_scan_with_fail_on_not_judged() -> None:
    code, report = scan_json(PLAN)
    assert code == 0
    assert report["summary"]["failing_not_judged"] == 0
    code, report = scan_json(PLAN, "--fail-on-not-judged")
    assert code == 1
    assert report["summary"]["exit_code"] == 1
    assert report["summary"]["fail_on_not_judged"] is True
    assert report["summary"]["failing_not_judged"] == 1
    [entry] = report["not_judged_resources"]
    assert (entry["rule_id"], entry["resource"], entry["reasons"]) == (
        "PC-TF-002",
        "aws_db_instance.pos",
        ["`storage_encrypted` is unknown (known only after apply)"],
    )


def test_junit_and_sarif_say_a_resource_not_judged_failed_the_run(tmp_path: Path) -> None:
    junit, sarif = tmp_path / "scan.xml", tmp_path / "scan.sarif"
    result = portcullis(
        "scan", "--no-cache", TREE, "--fail-on", "high", "--fail-on-not-judged",
        "--output", "junit", "--output-file", str(junit),
        "--output", "sarif", "--output-file", str(sarif),
    )  # fmt: skip
    assert result.returncode == 1
    root = ET.parse(junit).getroot()
    failures = [
        (case.get("classname"), case.get("name"), failure.get("type"))
        for case in root.iter("testcase")
        for failure in case.findall("failure")
        if failure.get("type") == "not judged"
    ]
    assert failures == [
        ("PC-TF-002", f"aws_db_instance.pos ({TREE}/main.tf): not judged", "not judged"),
        ("PC-TF-002", f"aws_rds_cluster.pos ({TREE}/main.tf): not judged", "not judged"),
        ("PC-TF-003", f"aws_lb.pos ({TREE}/main.tf): not judged", "not judged"),
    ]
    [lb] = [c for c in root.iter("testcase") if c.get("classname") == "PC-TF-003"]
    assert "`internal` is unknown (var.internal has no value)" in (lb.find("failure").text or "")
    assert "--fail-on-not-judged" in (lb.find("failure").text or "")
    assert root.get("skipped") == "0"

    document = json.loads(sarif.read_text())
    jsonschema.validate(document, json.loads(SARIF_SCHEMA.read_text()))
    [run] = document["runs"]
    assert run["invocations"][0]["exitCode"] == 1
    assert run["invocations"][0]["executionSuccessful"] is True
    not_judged = [r for r in run["results"] if r.get("properties", {}).get("notJudged")]
    assert [(r["ruleId"], r["level"]) for r in not_judged] == [
        ("PC-TF-002", "error"),
        ("PC-TF-002", "error"),
        ("PC-TF-003", "error"),
    ]
    lines = [r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in not_judged]
    assert lines == [9, 16, 22]
    fingerprints = {r["partialFingerprints"]["portcullisFingerprint/v2"] for r in run["results"]}
    assert len(fingerprints) == len(run["results"])  # the LB's finding and its not-judged too


def test_without_the_flag_sarif_and_junit_are_as_before() -> None:
    sarif = json.loads(portcullis("scan", "--no-cache", TREE, "--output", "sarif").stdout)
    assert [r["ruleId"] for r in sarif["runs"][0]["results"]] == ["PC-TF-008"]
    root = ET.fromstring(portcullis("scan", "--no-cache", TREE, "--output", "junit").stdout)
    assert (root.get("failures"), root.get("skipped")) == ("1", "3")


def test_a_suppression_of_the_rule_on_the_resource_accepts_it_not_judged(tmp_path: Path) -> None:
    """`portcullis:ignore=PC-TF-002 reason` says the rule doesn't apply to the
    resource: judged or not. One without a reason accepts nothing."""
    tree = copy_tree(tmp_path)
    main = tree / "main.tf"
    text = main.read_text()
    text = text.replace(
        'resource "aws_db_instance" "pos" {',
        "# portcullis:ignore=PC-TF-002 encrypted by the account default key (SEC-7)\n"
        'resource "aws_db_instance" "pos" {',
    )
    text = text.replace(
        'resource "aws_rds_cluster" "pos" {',
        '# portcullis:ignore=PC-TF-002\nresource "aws_rds_cluster" "pos" {',
    )
    main.write_text(text)
    code, report = scan_json(str(tree), "--fail-on", "high", "--fail-on-not-judged")
    assert code == 1
    assert unjudged(report, failing=False) == [("PC-TF-002", "aws_db_instance.pos")]
    assert unjudged(report, failing=True) == [
        ("PC-TF-002", "aws_rds_cluster.pos"),
        ("PC-TF-003", "aws_lb.pos"),
    ]
    [db] = [e for e in report["not_judged_resources"] if e["resource"] == "aws_db_instance.pos"]
    assert db["suppressed"] == "encrypted by the account default key (SEC-7)"
    assert report["summary"]["failing_not_judged"] == 2
    assert any("portcullis:ignore=PC-TF-002 has no reason" in n for n in report["notes"])
    # Another rule's suppression accepts nothing of PC-TF-003's.
    lb = 'resource "aws_lb" "pos" {'
    ignore_008 = "# portcullis:ignore=PC-TF-008 logs go to the vendor (SEC-9)\n"
    main.write_text(main.read_text().replace(lb, ignore_008 + lb))
    code, report = scan_json(str(tree), "--fail-on", "high", "--fail-on-not-judged")
    assert code == 1
    assert ("PC-TF-003", "aws_lb.pos") in unjudged(report, failing=True)
    # Each suppressed with a reason: the run passes, and JUnit says why each was skipped.
    text = main.read_text().replace(
        "# portcullis:ignore=PC-TF-002\n", "# portcullis:ignore=PC-TF-002 SEC-7\n"
    )
    main.write_text(text.replace("=PC-TF-008 logs", "=PC-TF-003,PC-TF-008 logs"))
    result = portcullis(
        "scan", "--no-cache", str(tree), "--fail-on-not-judged", "--output", "junit"
    )
    assert result.returncode == 0, result.stdout
    skipped = [s.text for s in ET.fromstring(result.stdout).iter("skipped")]
    assert (
        "not judged: `internal` is unknown (var.internal has no value); "
        "suppressed: logs go to the vendor (SEC-9)"
    ) in skipped


def test_a_baseline_written_with_fail_on_not_judged_accepts_todays_and_fails_on_a_new_one(
    tmp_path: Path,
) -> None:
    tree = copy_tree(tmp_path)
    plain, gated = tmp_path / "plain.json", tmp_path / "gated.json"
    portcullis("scan", "--no-cache", str(tree), "--create-baseline", str(plain))
    created = portcullis(
        "scan", "--no-cache", str(tree), "--fail-on-not-judged", "--create-baseline", str(gated)
    )
    assert created.returncode == 0
    assert f"wrote a baseline of 1 finding and 3 not judged to {gated}" in created.stderr
    entries = json.loads(gated.read_text())["findings"]
    assert [(e["rule_id"], e["resource"]) for e in entries if e.get("not_judged")] == UNJUDGED
    # A baseline written without the flag accepts the findings only.
    code, report = scan_json(str(tree), "--fail-on-not-judged", "--baseline", str(plain))
    assert code == 1
    assert unjudged(report, failing=True) == UNJUDGED
    code, report = scan_json(str(tree), "--fail-on-not-judged", "--baseline", str(gated))
    assert code == 0
    assert unjudged(report, failing=False) == UNJUDGED
    # A new resource the rules can't judge fails, and only it.
    with (tree / "main.tf").open("a") as main:
        main.write('\nresource "aws_lb" "kiosk" {\n  internal = var.internal\n'
                   '  tags     = { app = "pos" }\n  access_logs {\n    bucket  = "logs"\n'
                   "    enabled = true\n  }\n}\n")  # fmt: skip
    code, report = scan_json(str(tree), "--fail-on-not-judged", "--baseline", str(gated))
    assert code == 1
    assert unjudged(report, failing=True) == [("PC-TF-003", "aws_lb.kiosk")]


def test_a_resource_baselined_as_not_judged_that_becomes_judged_and_fails_is_a_new_finding(
    tmp_path: Path,
) -> None:
    """The baseline accepted "PC-TF-002 could not judge the database", not a
    finding on it: once var.encrypted says false, the finding fails the run."""
    tree = copy_tree(tmp_path)
    gated = tmp_path / "gated.json"
    portcullis(
        "scan", "--no-cache", str(tree), "--fail-on-not-judged", "--create-baseline", str(gated)
    )
    code, report = scan_json(
        str(tree), "--fail-on-not-judged", "--baseline", str(gated), "--var", "encrypted=false"
    )
    assert code == 1
    failing = [(f["rule_id"], f["resource"]) for f in report["findings"] if not f["baselined"]]
    assert failing == [("PC-TF-002", "aws_db_instance.pos"), ("PC-TF-002", "aws_rds_cluster.pos")]
    # A not-judged entry relabelled as the finding it isn't accepts nothing.
    document = json.loads(gated.read_text())
    for entry in document["findings"]:
        entry.pop("not_judged", None)
    gated.write_text(json.dumps(document))
    code, report = scan_json(str(tree), "--fail-on-not-judged", "--baseline", str(gated))
    assert code == 1
    assert unjudged(report, failing=True) == UNJUDGED
    assert any("accepts nothing" in note for note in report["notes"])
