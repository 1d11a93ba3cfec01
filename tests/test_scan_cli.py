"""`portcullis scan` as a CI job runs it: exit codes, every output format,
suppressions, baselines, the cache, and an error line (never a traceback)
for every bad input."""

from __future__ import annotations

import json
import os
import pty
import resource
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.conftest import FIXTURES, ROOT, SHARED

TERRAFORM = FIXTURES / "terraform"
POS_APP = "tests/fixtures/terraform/pos_app"
SARIF_SCHEMA = SHARED / "schemas/sarif-schema-2.1.0.json"

# What pos_app/ deploys wrong, read off its .tf files: every shipped rule fires.
POS_APP_FINDINGS = {
    ("PC-TF-001", "aws_security_group.pos_backend"),  # ingress block 1: 8443 from 0.0.0.0/0
    ("PC-TF-002", "aws_db_instance.pos"),  # storage_encrypted = false
    ("PC-TF-002", 'aws_ebs_volume.data["journal"]'),  # encrypted = false, for_each
    ("PC-TF-002", 'aws_ebs_volume.data["receipts"]'),
    ("PC-TF-002", "module.receipts.aws_s3_bucket.this"),  # no SSE configuration
    ("PC-TF-003", "aws_lb.pos"),  # internal = false
    ("PC-TF-004", "aws_lb_listener.pos_http"),  # HTTP listener forwards plaintext
    ("PC-TF-004", "aws_lb_listener.pos_https"),  # ELBSecurityPolicy-2016-08 allows TLS 1.0
    ("PC-TF-005", "aws_security_group_rule.bastion_ssh"),  # 22 from 0.0.0.0/0
    ("PC-TF-006", "aws_s3_bucket.marketing"),  # public-read (suppressed, with a reason)
    ("PC-TF-006", "aws_s3_bucket.downloads"),  # public-read (suppression has no reason)
    ("PC-TF-006", "aws_s3_bucket.exports[0]"),  # authenticated-read, count = 2
    ("PC-TF-006", "aws_s3_bucket.exports[1]"),
    ("PC-TF-007", "aws_iam_policy.break_glass"),  # Action "*" on Resource "*"
    ("PC-TF-008", "aws_lb.pos"),  # no access_logs
    ("PC-TF-008", "module.receipts.aws_s3_bucket.this"),  # no access logging
    ("PC-TF-008", "aws_db_instance.pos"),  # no aws_cloudtrail: on the first pci address
}


def portcullis(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "portcullis", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def scan_json(*args: str, cwd: Path = ROOT) -> tuple[int, dict[str, Any]]:
    result = portcullis("scan", "--no-cache", "--output", "json", *args, cwd=cwd)
    return result.returncode, json.loads(result.stdout)


@pytest.fixture(scope="module")
def pos_report() -> dict[str, Any]:
    code, report = scan_json(POS_APP)
    assert code == 1
    return report


def test_every_shipped_rule_fires_where_pos_app_breaks_it(pos_report: dict[str, Any]) -> None:
    found = {(f["rule_id"], f["resource"]) for f in pos_report["findings"]}
    assert found == POS_APP_FINDINGS
    assert {r["id"] for r in pos_report["rules"]} == {f"PC-TF-00{i}" for i in range(1, 9)}


def test_findings_carry_rule_metadata_file_and_line(pos_report: dict[str, Any]) -> None:
    [finding] = [f for f in pos_report["findings"] if f["resource"] == "aws_iam_policy.break_glass"]
    assert finding["severity"] == "critical"
    assert finding["title"] == 'IAM policies must not allow "*" on "*"'
    assert (finding["file"], finding["line"]) == (f"{POS_APP}/iam.tf", 1)
    assert finding["source"] == "portcullis"


def test_a_rule_never_fires_on_an_unresolved_value(pos_report: dict[str, Any]) -> None:
    # admin_ssh opens 22 to var.admin_cidr, which nothing sets: not judged, and said so.
    assert "aws_security_group_rule.admin_ssh" not in {
        f["resource"] for f in pos_report["findings"]
    }
    assert pos_report["not_judged"]["PC-TF-005"] == {
        "resources": 1,
        "reasons": {"`cidr_blocks.0` is unknown (var.admin_cidr has no value)": 1},
    }


def test_suppression_with_a_reason_suppresses_and_without_one_is_reported(
    pos_report: dict[str, Any],
) -> None:
    by_resource = {f["resource"]: f for f in pos_report["findings"] if f["rule_id"] == "PC-TF-006"}
    marketing = by_resource["aws_s3_bucket.marketing"]
    assert marketing["suppressed"] == "the marketing site is public by design (ticket SEC-42)"
    assert by_resource["aws_s3_bucket.downloads"]["suppressed"] is None
    assert any(
        "buckets.tf:8: portcullis:ignore=PC-TF-006 has no reason" in n for n in pos_report["notes"]
    )
    assert pos_report["summary"]["suppressed"] == 1
    assert pos_report["summary"]["findings"] == len(POS_APP_FINDINGS) - 1


def test_a_suppression_naming_no_rule_is_reported_not_silently_ignored(tmp_path: Path) -> None:
    """A mistyped id (PC-TF-05) suppresses nothing: the scan says so, with the id it
    likely meant, instead of leaving the author to wonder why the finding stays."""
    (tmp_path / "main.tf").write_text(
        "# portcullis:ignore=PC-TF-05,CKV_AWS_24 bastion host, reviewed in SEC-7\n"
        'resource "aws_security_group" "bastion" {\n'
        "  ingress {\n"
        '    from_port   = 22\n    to_port     = 22\n    protocol    = "tcp"\n'
        '    cidr_blocks = ["0.0.0.0/0"]\n'
        "  }\n}\n"
    )
    code, report = scan_json(str(tmp_path))
    assert code == 1
    [finding] = report["findings"]
    assert (finding["rule_id"], finding["suppressed"]) == ("PC-TF-005", None)
    # CKV_AWS_24 is checkov's (run or not): no note for it.
    assert report["notes"] == [
        f"{tmp_path}/main.tf:1: portcullis:ignore=PC-TF-05 names no rule of the policy set, "
        "so it suppresses nothing; did you mean PC-TF-005?"
    ]


def test_a_policies_directory_without_terraform_rules_fails_the_scan_instead_of_passing(
    tmp_path: Path,
) -> None:
    """With no --policy the scan takes ./policies when there is one: in a repository
    whose policies/ holds other Rego (conftest's Kubernetes rules), it used to find no
    Terraform rule and pass an internet-facing POS backend with exit 0."""
    (tmp_path / "policies" / "k8s").mkdir(parents=True)
    (tmp_path / "policies" / "k8s" / "deployment.rego").write_text(
        'package main\n\ndeny contains "no privileged pods" if input.kind == "Pod"\n'
    )
    (tmp_path / "infra").mkdir()
    shutil.copy(ROOT / "examples" / "terraform" / "main.tf", tmp_path / "infra" / "main.tf")
    result = portcullis(
        "scan", "--no-cache", "infra", "--output", "sarif", "--output-file", "out.sarif",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert errors(result) == [
        "portcullis scan: policies: no Terraform rules in this policy set (no package under "
        "portcullis.terraform declares metadata and deny), so the scan would pass anything; "
        "give --policy the set that holds them (without --policy, ./policies is used when "
        "the current directory has one)"
    ]
    run = json.loads((tmp_path / "out.sarif").read_text())["runs"][0]
    assert run["invocations"][0]["executionSuccessful"] is False
    assert run["results"] == []
    shipped = portcullis("scan", "--no-cache", "infra", "--policy", str(ROOT / "policies"),
                         cwd=tmp_path)  # fmt: skip
    assert shipped.returncode == 1 and "3 findings" in shipped.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["scan", "--bogus"], "portcullis scan: error: unrecognized arguments: --bogus (and the "
         "following arguments are required: PATH)"),
        (["scan", "--fail-on-new", "-x", "--no-c"], "portcullis scan: error: unrecognized "
         "arguments: --fail-on-new -x (and the following arguments are required: PATH)"),
        (["policy", "--bogus"], "portcullis policy: error: unrecognized arguments: --bogus (and "
         "the following arguments are required: ACTION)"),
        # an abbreviation argparse takes is not called unknown, nor is a missing PATH alone
        (["scan", "--no-c"], "portcullis scan: error: the following arguments are required: PATH"),
    ],
)  # fmt: skip
def test_an_unknown_option_is_named_even_when_a_required_argument_is_missing_too(
    argv: list[str], expected: str
) -> None:
    """`portcullis scan --bogus` said only that PATH is required."""
    result = portcullis(*argv)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == expected


@pytest.mark.parametrize("command", ["scan", "demo"])
def test_the_help_says_policy_defaults_to_a_policies_directory_before_the_shipped_set(
    command: str,
) -> None:
    """Both take ./policies when the current directory has one (the scan test above
    shows what that does to a repository with its own policies/); --help said "the
    shipped one", so nobody reading it would look for that."""
    result = portcullis(command, "--help")
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    assert "(default: ./policies when the current directory has one, else the shipped set)" in (
        help_text
    )


def test_exit_codes_follow_fail_on() -> None:
    assert portcullis("scan", "--no-cache", POS_APP, "--fail-on", "critical").returncode == 1
    clean = portcullis("scan", "--no-cache", "tests/fixtures/terraform/clean")
    assert clean.returncode == 0
    assert clean.stdout.strip().endswith("PASS")
    # Only medium and high findings: --fail-on critical passes.
    only_high = portcullis("scan", "--no-cache", "tests/fixtures/terraform/broken/ok.tf")
    assert only_high.returncode == 1
    passing = portcullis(
        "scan", "--no-cache", "tests/fixtures/terraform/broken/ok.tf", "--fail-on", "critical"
    )
    assert passing.returncode == 0
    assert "1 finding (1 high)" in passing.stdout


def test_text_report_groups_by_file_with_a_summary_line() -> None:
    result = portcullis("scan", "--no-cache", POS_APP)
    lines = result.stdout.splitlines()
    assert f"{POS_APP}/iam.tf" in lines
    assert any(line.strip().startswith("1  CRITICAL PC-TF-007") for line in lines)
    assert lines[-1] == (
        "16 findings (2 critical, 11 high, 3 medium) in 6 files, 18 resources; "
        "1 suppressed; 2 not judged; 16 at or above low: FAIL"
    )
    # The policy of aws_iam_policy.read_receipts embeds the bucket's ARN,
    # known only after apply: PC-TF-007 says it could not judge it, and why.
    assert (
        "not judged: PC-TF-007: 1 resource not judged: `policy` is unknown "
        "(module.receipts.arn is unknown)"
    ) in lines
    assert "\033[" not in result.stdout  # no colour when stdout is not a terminal


def test_sarif_is_valid_and_github_ready(tmp_path: Path) -> None:
    out = tmp_path / "scan.sarif"
    result = portcullis(
        "scan", "--no-cache", POS_APP, "--output", "sarif", "--output-file", str(out)
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "16 findings" in result.stderr  # the summary still reaches the CI log
    sarif = json.loads(out.read_text())
    jsonschema.validate(sarif, json.loads(SARIF_SCHEMA.read_text()))
    [run] = sarif["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == sorted(r["id"] for r in rules)
    assert all(float(r["properties"]["security-severity"]) > 0 for r in rules)
    for item in run["results"]:
        location = item["locations"][0]["physicalLocation"]
        assert location["artifactLocation"]["uriBaseId"] == "%SRCROOT%"
        assert location["artifactLocation"]["uri"].startswith(f"{POS_APP}/")
        assert location["region"]["startLine"] >= 1
        assert rules[item["ruleIndex"]]["id"] == item["ruleId"]
        assert len(item["partialFingerprints"]["portcullisFingerprint/v2"]) == 32
    suppressed = [r for r in run["results"] if r.get("suppressions")]
    assert [s["suppressions"][0]["kind"] for s in suppressed] == ["inSource"]


def test_sarif_fingerprints_survive_moving_a_resource(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(TERRAFORM / "broken", tree)
    (tree / "main.tf").unlink()
    first = portcullis("scan", "--no-cache", "tree", "--output", "sarif", cwd=tmp_path)
    (tree / "ok.tf").write_text("\n\n# moved down\n" + (tree / "ok.tf").read_text())
    second = portcullis("scan", "--no-cache", "tree", "--output", "sarif", cwd=tmp_path)
    [before] = json.loads(first.stdout)["runs"][0]["results"]
    [after] = json.loads(second.stdout)["runs"][0]["results"]
    assert before["locations"][0]["physicalLocation"]["region"]["startLine"] == 1
    assert after["locations"][0]["physicalLocation"]["region"]["startLine"] == 4
    assert before["partialFingerprints"] == after["partialFingerprints"]


def test_junit_parses_with_a_suite_per_rule(tmp_path: Path) -> None:
    out = tmp_path / "scan.xml"
    portcullis("scan", "--no-cache", POS_APP, "--output", "junit", "--output-file", str(out))
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites"
    suites = {s.get("name", "").split()[0]: s for s in root.findall("testsuite")}
    assert set(suites) == {f"PC-TF-00{i}" for i in range(1, 9)}
    assert int(root.get("failures", "0")) == len(POS_APP_FINDINGS) - 1
    # The suppressed bucket, and what PC-TF-005 and PC-TF-007 could not judge.
    assert int(root.get("skipped", "0")) == 1 + 2
    iam = suites["PC-TF-007"].findall("testcase")
    [failure] = iam[0].iter("failure")
    assert [c.get("name") for c in iam] == [
        f"aws_iam_policy.break_glass ({POS_APP}/iam.tf): {failure.get('message')}",
        f"aws_iam_policy.read_receipts ({POS_APP}/iam.tf): not judged",
    ]


def _junit_cases(*args: str, cwd: Path = ROOT) -> list[ET.Element]:
    """The test cases of findings (not the passing "no violations" ones)."""
    result = portcullis("scan", "--no-cache", *args, "--output", "junit", cwd=cwd)
    assert result.returncode == 1, result.stderr
    cases = ET.fromstring(result.stdout).iter("testcase")
    return [c for c in cases if c.get("name") != "no violations"]


def test_junit_keeps_both_holes_of_one_security_group_apart_for_gitlab() -> None:
    """GitLab keeps the first test case of a name and drops the rest: checkov's own
    example group fail4 opens SSH and RDP, two findings, and must be two test cases."""
    example = SHARED / (
        "corpus/terraform/checkov/tests/terraform/checks/resource/aws/"
        "example_SecurityGroupUnrestrictedIngress22"
    )
    cases = _junit_cases(".", cwd=example)
    names = [(c.get("classname"), c.get("name")) for c in cases]
    assert len(names) == len(set(names))
    fail4 = sorted(
        c.find("failure").get("message", "")  # type: ignore[union-attr]
        for c in cases
        if c.get("classname") == "PC-TF-005" and "aws_security_group.fail4 " in c.get("name", "")
    )
    assert [m.split(" to ")[0] for m in fail4] == [
        "aws_security_group.fail4 opens RDP (port 3389)",
        "aws_security_group.fail4 opens SSH (port 22)",
    ]


def test_junit_test_names_survive_lines_added_above_a_finding(tmp_path: Path) -> None:
    """A merge request that adds lines above a finding must not show it as one
    test fixed and one newly failing: the name is the finding's, not its line's."""
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(TERRAFORM / "broken/ok.tf", tree / "ok.tf")
    [before] = _junit_cases("tree", cwd=tmp_path)
    (tree / "ok.tf").write_text("# moved down\n\n" + (tree / "ok.tf").read_text())
    [after] = _junit_cases("tree", cwd=tmp_path)
    assert (before.get("line"), after.get("line")) == ("1", "3")
    assert before.get("name") == after.get("name")


def test_junit_test_names_do_not_depend_on_where_the_scan_ran() -> None:
    """GitLab compares test cases by name: a job that scans from the module's own
    directory, or names it by an absolute path (another runner's build directory),
    must name every finding and not-judged resource as its fingerprint does, by
    the file relative to the repository root."""
    pos_app = ROOT / POS_APP

    def names(path: str, cwd: Path) -> list[str]:
        result = portcullis("scan", "--no-cache", path, "--output", "junit", cwd=cwd)
        assert result.returncode == 1, result.stderr
        return sorted(c.get("name", "") for c in ET.fromstring(result.stdout).iter("testcase"))

    from_root = names(POS_APP, ROOT)
    assert any(f"({POS_APP}/main.tf)" in name for name in from_root)
    assert names(".", pos_app) == from_root
    assert names(str(pos_app), ROOT / "tests") == from_root


def test_junit_says_why_a_finding_was_skipped_in_the_text_gitlab_shows(tmp_path: Path) -> None:
    """GitLab shows a skipped test case's text, not its message attribute: a
    suppressed finding's reason and a baselined one's must be in the text."""
    baseline = tmp_path / "baseline.json"
    portcullis("scan", "--no-cache", "tests/fixtures/terraform/broken/ok.tf",
               "--create-baseline", str(baseline))  # fmt: skip
    for args, reason in (
        ((POS_APP,), "suppressed: the marketing site is public by design (ticket SEC-42)"),
        (("tests/fixtures/terraform/broken/ok.tf", "--baseline", str(baseline)), "in baseline"),
    ):
        result = portcullis("scan", "--no-cache", *args, "--output", "junit")
        skipped = [
            (s.get("message"), s.text)
            for s in ET.fromstring(result.stdout).iter("skipped")
            if not (s.text or "").startswith("not judged")
        ]
        assert skipped == [(reason, reason)]


def test_junit_shows_a_resource_no_rule_could_judge_as_skipped_not_no_violations() -> None:
    """var.internal has no value: PC-TF-003 could not judge aws_lb.pos, and the
    test report must not show the rule green with "no violations"."""
    tree = "tests/fixtures/terraform/not_judged"
    result = portcullis("scan", "--no-cache", tree, "--output", "junit")
    root = ET.fromstring(result.stdout)
    suites = {s.get("name", "").split()[0]: s for s in root.findall("testsuite")}
    [case] = suites["PC-TF-003"].findall("testcase")
    assert case.get("name") == f"aws_lb.pos ({tree}/main.tf): not judged"
    [skipped] = case.findall("skipped")
    assert skipped.text == "not judged: `internal` is unknown (var.internal has no value)"
    assert suites["PC-TF-003"].get("skipped") == "1"
    assert len(suites["PC-TF-002"].findall("testcase/skipped")) == 2  # db instance and cluster
    assert (root.get("failures"), root.get("skipped")) == ("1", "3")


def test_several_outputs_in_one_run(tmp_path: Path) -> None:
    sarif, junit = tmp_path / "a.sarif", tmp_path / "a.xml"
    result = portcullis(
        "scan", "--no-cache", POS_APP,
        "--output", "sarif", "--output-file", str(sarif),
        "--output", "junit", "--output-file", str(junit),
        "--output", "text",
    )  # fmt: skip
    assert result.returncode == 1
    assert "16 findings" in result.stdout
    assert json.loads(sarif.read_text())["version"] == "2.1.0"
    assert ET.parse(junit).getroot().tag == "testsuites"


def test_an_output_file_that_cannot_be_written_is_exit_2_and_named(tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "a.sarif"
    result = portcullis(
        "scan", "--no-cache", POS_APP, "--output", "sarif", "--output-file", str(target)
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        f"portcullis scan: {target}: the report can't be written: No such file or directory"
        in result.stderr
    )
    assert "findings" not in result.stderr  # no summary for a report that wasn't written


def test_a_baseline_that_cannot_be_written_says_it_is_the_baseline(tmp_path: Path) -> None:
    """`nodir/baseline.json: No such file or directory` read as a missing input file."""
    target = tmp_path / "no-such-dir" / "baseline.json"
    result = portcullis("scan", "--no-cache", POS_APP, "--create-baseline", str(target))
    assert result.returncode == 2
    assert errors(result) == [
        f"portcullis scan: {target}: the baseline can't be written: No such file or directory"
    ]


def test_baseline_accepts_known_findings_and_fails_on_new_ones(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(TERRAFORM / "pos_app", tree)
    baseline = tmp_path / "baseline.json"
    created = portcullis("scan", "--no-cache", str(tree), "--create-baseline", str(baseline))
    assert created.returncode == 0
    assert f"wrote a baseline of 16 findings to {baseline}" in created.stderr
    code, report = scan_json(str(tree), "--baseline", str(baseline))
    assert code == 0
    assert report["summary"]["baselined"] == 16 and report["summary"]["failing"] == 0
    (tree / "new.tf").write_text('resource "aws_s3_bucket" "new" {\n  acl = "public-read"\n}\n')
    code, report = scan_json(str(tree), "--baseline", str(baseline))
    assert code == 1
    failing = [f for f in report["findings"] if not f["baselined"] and not f["suppressed"]]
    assert [(f["rule_id"], f["resource"]) for f in failing] == [("PC-TF-006", "aws_s3_bucket.new")]


def test_a_baseline_entry_labelled_as_another_finding_accepts_nothing(tmp_path: Path) -> None:
    # A baseline entry's rule_id, resource and file are what a reviewer reads;
    # only its fingerprint was matched. A pull request that adds a public
    # bucket swaps one old entry's fingerprint for the new finding's (it can
    # compute it: a hash of rule, resource, file and message), leaving the old
    # labels: the diff is one changed hex string under an entry already
    # accepted, and the new hole passed as baselined.
    tree = tmp_path / "tree"
    shutil.copytree(TERRAFORM / "pos_app", tree)
    baseline = tmp_path / "baseline.json"
    portcullis("scan", "--no-cache", str(tree), "--create-baseline", str(baseline))
    (tree / "new.tf").write_text('resource "aws_s3_bucket" "new" {\n  acl = "public-read"\n}\n')
    _, report = scan_json(str(tree), "--baseline", str(baseline))
    [new] = [f for f in report["findings"] if f["resource"] == "aws_s3_bucket.new"]
    document = json.loads(baseline.read_text())
    old = document["findings"][0]
    old["fingerprint"] = new["fingerprint"]
    baseline.write_text(json.dumps(document, indent=2))
    code, report = scan_json(str(tree), "--baseline", str(baseline))
    failing = [(f["rule_id"], f["resource"]) for f in report["findings"] if f["baselined"] is False]
    assert ("PC-TF-006", "aws_s3_bucket.new") in failing
    assert code == 1
    assert (
        f"{baseline}: the entry with fingerprint {new['fingerprint']} is labelled "
        f"{old['rule_id']} on {old['resource']} ({old['file']}), but that fingerprint is "
        "PC-TF-006 on aws_s3_bucket.new (new.tf): it accepts nothing; re-create "
        "the baseline with --create-baseline"
    ) in report["notes"]


def test_checkov_skip_comments_do_not_suppress_portcullis_rules() -> None:
    code, report = scan_json("tests/fixtures/terraform/checkov_skip")
    assert code == 1
    assert [(f["rule_id"], f["suppressed"]) for f in report["findings"]] == [("PC-TF-006", None)]


def test_warm_rescan_uses_the_cache_and_notices_changes(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(TERRAFORM / "pos_app", tree)
    args = ("scan", "tree", "--output", "json", "--cache-dir", "cache")
    cold = portcullis(*args, cwd=tmp_path)
    assert (tmp_path / "cache/parse").is_dir() and (tmp_path / "cache/scan").is_dir()
    warm = portcullis(*args, cwd=tmp_path)
    assert warm.stdout == cold.stdout and warm.returncode == cold.returncode == 1
    # A changed file, a new file and a new directory are all seen.
    iam = tree / "iam.tf"
    iam.write_text(iam.read_text().replace('Action   = "*"', 'Action   = "s3:*"'))
    changed = json.loads(portcullis(*args, cwd=tmp_path).stdout)
    assert "aws_iam_policy.break_glass" not in {f["resource"] for f in changed["findings"]}
    (tree / "extra").mkdir()
    (tree / "extra/main.tf").write_text(
        'resource "aws_s3_bucket" "x" {\n  acl = "public-read"\n}\n'
    )
    added = json.loads(portcullis(*args, cwd=tmp_path).stdout)
    assert "aws_s3_bucket.x" in {f["resource"] for f in added["findings"]}
    module = tree / "modules/bucket/main.tf"
    module.write_text(
        module.read_text().replace("bucket = var.name", 'bucket = var.name\n  acl = "public-read"')
    )
    via_module = json.loads(portcullis(*args, cwd=tmp_path).stdout)
    assert ("PC-TF-006", "module.receipts.aws_s3_bucket.this") in {
        (f["rule_id"], f["resource"]) for f in via_module["findings"]
    }


def test_a_warm_rescan_after_terraform_init_scans_the_downloaded_module(tmp_path: Path) -> None:
    """Scan, see "remote module ... not in .terraform/modules (run terraform init
    to scan it)", run terraform init, scan again: the module is scanned, not the
    first scan's result served from the cache."""
    tree = tmp_path / "tree"
    shutil.copytree(TERRAFORM / "remote_module", tree, ignore=shutil.ignore_patterns(".terraform"))
    args = ("scan", "tree", "--output", "json", "--cache-dir", "cache")
    before = portcullis(*args, cwd=tmp_path)
    assert before.returncode == 0
    assert any("module.ssh_sg: remote module" in n for n in json.loads(before.stdout)["notes"])
    shutil.copytree(TERRAFORM / "remote_module/.terraform", tree / ".terraform")  # terraform init
    after = portcullis(*args, cwd=tmp_path)
    assert after.returncode == 1
    found = {(f["rule_id"], f["resource"]) for f in json.loads(after.stdout)["findings"]}
    assert ("PC-TF-005", "module.ssh_sg.aws_security_group.this") in found


def test_a_remote_module_left_unscanned_is_said_in_sarif_too(tmp_path: Path) -> None:
    """A team reading only GitHub code scanning never learnt that a module was not
    scanned: the note was in the text and JSON reports alone. SARIF carries each
    note as a `note`-level tool execution notification, beside the errors, and
    the run still counts as successful."""
    tree = tmp_path / "tree"
    shutil.copytree(TERRAFORM / "remote_module", tree, ignore=shutil.ignore_patterns(".terraform"))
    scanned = portcullis("scan", "tree", "--output", "sarif", "--no-cache", cwd=tmp_path)
    assert scanned.returncode == 0, scanned.stderr
    [invocation] = json.loads(scanned.stdout)["runs"][0]["invocations"]
    notes = [n for n in invocation["toolExecutionNotifications"] if n["level"] == "note"]
    assert any("module.ssh_sg: remote module" in n["message"]["text"] for n in notes), notes
    assert invocation["executionSuccessful"] is True


def test_a_result_cached_by_a_build_with_a_bug_is_not_served_by_the_fixed_build(
    tmp_path: Path,
) -> None:
    # The buggy build: this product, same version string, whose rule
    # evaluation lost every violation (a scan that reports 0 findings).
    build = tmp_path / "buggy-build"
    for package in ("portcullis", "iac_scanner", "policy_engine", "gateway"):
        shutil.copytree(ROOT / package, build / package, ignore=shutil.ignore_patterns("*.pyc"))
    policy = build / "iac_scanner/policy.py"
    source = policy.read_text()
    assert "        return violations, not_judged\n" in source
    policy.write_text(source.replace("return violations, not_judged", "return [], not_judged"))
    tree, cache = tmp_path / "tree", tmp_path / "cache"
    shutil.copytree(TERRAFORM / "pos_app", tree)
    command = [
        sys.executable, "-m", "portcullis", "scan", str(tree), "--policy", str(ROOT / "policies"),
        "--output", "json", "--cache-dir", str(cache),
    ]  # fmt: skip

    def run(pythonpath: Path | None) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
        )
        assert "Traceback" not in done.stderr, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    buggy = run(build)
    assert buggy["summary"]["findings"] == 0  # the bug, now in the cache
    parsed_by_buggy = set((cache / "parse").rglob("*.json"))
    assert run(build)["summary"]["findings"] == 0  # the buggy build reads its own entries
    fixed = run(None)
    assert fixed["summary"]["findings"] == len(POS_APP_FINDINGS) - 1  # one is suppressed
    # Nor did the fixed build read the buggy build's parse entries: it wrote its own.
    assert set((cache / "parse").rglob("*.json")) - parsed_by_buggy


def test_a_cache_committed_in_the_pull_request_cannot_plant_a_clean_result(
    tmp_path: Path,
) -> None:
    # The default cache directory is in the checkout, which a pull request
    # writes. Its author scans the insecure tree as CI will (same paths and
    # working directory; the key is the scanner's code and those inputs, all
    # public), empties the entry's findings and commits .portcullis-cache/:
    # CI read the planted result as a warm re-scan and passed.
    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=a", "-c", "user.email=a@b", *args],
            cwd=tmp_path, check=True, capture_output=True,
        )  # fmt: skip

    shutil.copytree(TERRAFORM / "pos_app", tmp_path / "tree")
    git("init", "-q")
    args = ("scan", "tree", "--output", "json")
    assert portcullis(*args, cwd=tmp_path).returncode == 1
    [entry_file] = (tmp_path / ".portcullis-cache/scan").glob("*.json")
    entry = json.loads(entry_file.read_text())
    entry["result"]["findings"] = []
    entry_file.write_text(json.dumps(entry))
    git("add", "-A")
    git("commit", "-q", "-m", "infra")
    ci = portcullis(*args, cwd=tmp_path)
    report = json.loads(ci.stdout)
    assert ci.returncode == 1, report["summary"]
    assert report["summary"]["findings"] == len(POS_APP_FINDINGS) - 1  # one is suppressed
    assert (
        ".portcullis-cache: the cache directory holds files committed to the repository, "
        "which a change under review can plant results in; the scan ran without it"
    ) in report["notes"]
    # A cache the repository doesn't track is used as before.
    git("rm", "-r", "-q", "--cached", ".portcullis-cache")
    shutil.rmtree(tmp_path / ".portcullis-cache")
    assert portcullis(*args, cwd=tmp_path).returncode == 1
    assert (tmp_path / ".portcullis-cache/scan").is_dir()
    warm = json.loads(portcullis(*args, cwd=tmp_path).stdout)
    assert warm["notes"] == report["notes"][:-1]


def test_jobs_parse_in_parallel_with_the_same_result() -> None:
    _, one = scan_json("../shared/corpus/terraform/terraform-aws-vpc", "--jobs", "1")
    _, two = scan_json("../shared/corpus/terraform/terraform-aws-vpc", "--jobs", "2")
    assert one == two
    assert one["summary"]["files"] == 77


def test_var_and_var_file_reach_the_rules(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "main.tf").write_text(
        'variable "cidr" {\n  type = string\n}\n\n'
        'resource "aws_security_group_rule" "ssh" {\n  type = "ingress"\n  protocol = "tcp"\n'
        "  from_port = 22\n  to_port = 22\n  cidr_blocks = [var.cidr]\n}\n"
    )
    assert portcullis("scan", "--no-cache", str(tree)).returncode == 0  # unknown: not judged
    world = portcullis("scan", "--no-cache", str(tree), "--var", "cidr=0.0.0.0/0")
    assert world.returncode == 1 and "PC-TF-005" in world.stdout
    var_file = tmp_path / "prod.tfvars"
    var_file.write_text('cidr = "10.0.0.0/8"\n')
    private = portcullis("scan", "--no-cache", str(tree), "--var-file", str(var_file))
    assert private.returncode == 0


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_a_missing_path_is_an_error() -> None:
    result = portcullis("scan", "--no-cache", "no/such/dir")
    assert result.returncode == 2
    assert errors(result) == ["error: no/such/dir: no such file or directory"]


def test_an_unparsable_file_is_an_error_never_skipped() -> None:
    result = portcullis("scan", "--no-cache", "tests/fixtures/terraform/broken")
    assert result.returncode == 2
    assert errors(result) == [
        "error: tests/fixtures/terraform/broken/main.tf:2:13: unexpected end of file "
        "(an unclosed block, bracket or string?)"
    ]
    assert "PC-TF-006" in result.stdout  # the files that parse are still reported


def test_a_bad_var_file_is_an_error(tmp_path: Path) -> None:
    missing = portcullis("scan", "--no-cache", POS_APP, "--var-file", "nope.tfvars")
    assert missing.returncode == 2
    assert "error: nope.tfvars: no such variable file (--var-file)" in errors(missing)
    bad = tmp_path / "bad.tfvars"
    bad.write_text('region = "eu-west-1\n')
    broken = portcullis("scan", "--no-cache", POS_APP, "--var-file", str(bad))
    assert broken.returncode == 2
    assert any(line.startswith(f"error: {bad}:1:") for line in errors(broken))
    block = tmp_path / "block.tfvars"
    block.write_text('resource "x" "y" {}\n')
    wrong = portcullis("scan", "--no-cache", POS_APP, "--var-file", str(block))
    assert f"error: {block}:1: a variable file holds only `name = value` lines" in wrong.stderr


def test_a_bad_baseline_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "baseline.json"
    bad.write_text("{not json")
    result = portcullis("scan", "--no-cache", POS_APP, "--baseline", str(bad))
    assert result.returncode == 2
    assert errors(result) == [
        f"portcullis scan: {bad}:1:2: not valid JSON: "
        "Expecting property name enclosed in double quotes"
    ]
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"findings": [1]}')
    shape = portcullis("scan", "--no-cache", POS_APP, "--baseline", str(wrong))
    assert shape.returncode == 2 and "not a portcullis baseline" in shape.stderr
    missing = portcullis("scan", "--no-cache", POS_APP, "--baseline", str(tmp_path / "none.json"))
    assert missing.returncode == 2 and "no such baseline file" in missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--output", "html"), "invalid choice: 'html'"),
        (("--output-file", "x.json"), "--output-file must follow the --output it is for"),
        (("--fail-on", "severe"), "invalid choice: 'severe'"),
        (("--var", "novalue"), "expected NAME=VALUE, got 'novalue'"),
        (("--jobs", "0"), "must be 1 or more"),
        (("--fail-on-not-judged=high",), "--fail-on-not-judged: ignored explicit argument 'high'"),
        (("--output", "json", "--output", "text"), "only one --output can go to stdout"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], message: str) -> None:
    result = portcullis("scan", "--no-cache", POS_APP, *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_broken_policy_is_an_error(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "bad.rego").write_text("package portcullis.terraform.bad\n\ndeny contains x if {\n")
    result = portcullis("scan", "--no-cache", POS_APP, "--policy", str(policy))
    assert result.returncode == 2
    assert f"portcullis scan: {policy}/bad.rego:" in result.stderr


BROKEN_POLICY = FIXTURES / "policies/syntax_error"


def _error_reports(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """A scan that exits 2 asked for every format as a file (and json on stdout)."""
    out = tmp_path / "reports"
    out.mkdir()
    result = portcullis(
        "scan", "--no-cache", POS_APP, *args,
        "--output", "sarif", "--output-file", str(out / "scan.sarif"),
        "--output", "junit", "--output-file", str(out / "scan.xml"),
        "--output", "json", "--output-file", str(out / "scan.json"),
        "--output", "text", "--output-file", str(out / "scan.txt"),
        "--output", "json",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == ""  # the errors are on stderr; no report on stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "scan.json",
        "scan.sarif",
        "scan.txt",
        "scan.xml",
    ]
    return result, out


def _invocation(sarif_file: Path) -> dict[str, Any]:
    sarif = json.loads(sarif_file.read_text())
    jsonschema.validate(sarif, json.loads(SARIF_SCHEMA.read_text()))
    [run] = sarif["runs"]
    assert run["results"] == []
    [invocation] = run["invocations"]
    assert (invocation["executionSuccessful"], invocation["exitCode"]) == (False, 2)
    return dict(invocation)


def test_a_policy_that_does_not_load_still_writes_every_report_file_with_the_error(
    tmp_path: Path,
) -> None:
    result, out = _error_reports(tmp_path, "--policy", str(BROKEN_POLICY))
    where = f"{BROKEN_POLICY}/broken.rego:7:1"
    assert errors(result) == [f"portcullis scan: {where}: expecting expression"]
    [notification] = _invocation(out / "scan.sarif")["toolExecutionNotifications"]
    assert notification["level"] == "error"
    assert notification["message"]["text"] == f"{where}: expecting expression"
    [location] = notification["locations"]
    assert location["physicalLocation"]["artifactLocation"] == {
        "uri": "tests/fixtures/policies/syntax_error/broken.rego",
        "uriBaseId": "%SRCROOT%",
    }
    assert location["physicalLocation"]["region"] == {"startLine": 7, "startColumn": 1}
    junit = ET.parse(out / "scan.xml").getroot()
    assert (junit.get("errors"), junit.get("failures")) == ("1", "0")
    [error] = junit.iter("error")
    assert error.text == f"{where}: expecting expression"
    report = json.loads((out / "scan.json").read_text())
    assert report["summary"]["exit_code"] == 2 and report["findings"] == []
    assert report["errors"] == [
        {"file": f"{BROKEN_POLICY}/broken.rego", "line": 7, "column": 1,
         "message": "expecting expression"}
    ]  # fmt: skip
    assert (out / "scan.txt").read_text() == "0 findings in 0 files, 0 resources; 1 error\n"


def test_a_bad_baseline_and_a_missing_checkov_write_their_error_reports_too(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "baseline.json"
    bad.write_text("{not json")
    _, out = _error_reports(tmp_path, "--baseline", str(bad))
    [notification] = _invocation(out / "scan.sarif")["toolExecutionNotifications"]
    region = notification["locations"][0]["physicalLocation"]["region"]
    assert region == {"startLine": 1, "startColumn": 2}
    assert notification["message"]["text"].startswith(f"{bad}:1:2: not valid JSON")
    # checkov is no file: the error has no location.
    shutil.rmtree(out)
    _, out = _error_reports(tmp_path, "--checkov", "/nonexistent/checkov")
    [notification] = _invocation(out / "scan.sarif")["toolExecutionNotifications"]
    assert "locations" not in notification
    assert notification["message"]["text"].startswith("checkov: '/nonexistent/checkov' not found")
    [error] = json.loads((out / "scan.json").read_text())["errors"]
    assert error["file"] is None and error["message"] == notification["message"]["text"]
    assert [e.text for e in ET.parse(out / "scan.xml").getroot().iter("error")] == [
        notification["message"]["text"]
    ]


def test_checkov_failing_mid_scan_is_an_error_about_no_file_not_a_file_named_checkov(
    tmp_path: Path,
) -> None:
    """checkov starts, then dies (out of memory, a crash): the error is about
    checkov, no file of the tree, as when checkov is missing."""
    checkov = tmp_path / "checkov"
    checkov.write_text("#!/bin/sh\necho 'MemoryError: killed' >&2\nexit 3\n")
    checkov.chmod(0o755)
    out = tmp_path / "scan.sarif"
    result = portcullis(
        "scan", "--no-cache", "tests/fixtures/terraform/clean", "--checkov", str(checkov),
        "--output", "sarif", "--output-file", str(out), "--output", "json",
    )  # fmt: skip
    assert result.returncode == 2
    [error] = json.loads(result.stdout)["errors"]
    assert error == {
        "file": None, "line": None, "column": None,
        "message": "checkov exited 3: MemoryError: killed",
    }  # fmt: skip
    assert "error: checkov exited 3: MemoryError: killed" in result.stderr.splitlines()
    sarif = json.loads(out.read_text())
    [notification] = sarif["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert "locations" not in notification


def test_a_report_file_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    report = tmp_path / "scan.sarif"
    report.write_text("the previous run's report\n")

    def small_files() -> None:  # a disk that fills up after 4 KiB of a file
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    result = subprocess.run(
        [sys.executable, "-m", "portcullis", "scan", "--no-cache", POS_APP,
         "--output", "sarif", "--output-file", str(report)],
        capture_output=True, text=True, cwd=ROOT, timeout=120, preexec_fn=small_files,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{report}: the report can't be written: File too large" in result.stderr
    assert report.read_text() == "the previous run's report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scan.sarif"]  # no partial file left
    written = portcullis(
        "scan", "--no-cache", POS_APP, "--output", "sarif", "--output-file", str(report)
    )
    assert written.returncode == 1
    assert len(json.loads(report.read_text())["runs"][0]["results"]) == len(POS_APP_FINDINGS)


def test_a_policy_with_a_date_in_its_yaml_data_is_an_error() -> None:
    policy = FIXTURES / "policies/yaml_date"
    result = portcullis("scan", "--no-cache", POS_APP, "--policy", str(policy))
    assert result.returncode == 2
    assert errors(result) == [
        f"portcullis scan: {policy}/extra.yaml:3:10: data.extra.since: a YAML date/time "
        "(2026-11-01) is not a JSON value; quote it to keep it as a string"
    ]


def test_a_missing_checkov_is_an_error() -> None:
    result = portcullis("scan", "--no-cache", POS_APP, "--checkov", "/nonexistent/checkov")
    assert result.returncode == 2
    assert errors(result) == [
        "portcullis scan: checkov: '/nonexistent/checkov' not found; install checkov in its own "
        "environment (`make .venv-checkov` here) and pass --checkov PATH/TO/checkov"
    ]


def test_an_empty_tree_is_an_error_not_a_pass(tmp_path: Path) -> None:
    # In CI a mistyped path must not pass.
    (tmp_path / "README.md").write_text("no terraform here\n")
    result = portcullis("scan", "--no-cache", str(tmp_path))
    assert result.returncode == 2
    assert errors(result) == [
        f"error: {tmp_path}: no Terraform files (.tf, .tf.json) in this directory tree"
    ]


def test_a_tree_of_plan_json_files_says_a_plan_is_scanned_when_named(tmp_path: Path) -> None:
    """A directory of `terraform show -json` plans has no .tf files: the error says how
    to scan the plans instead of only that there is no Terraform."""
    plans = tmp_path / "plans" / "prod"
    plans.mkdir(parents=True)
    shutil.copy(TERRAFORM / "module_outputs" / "direct" / "plan.json", plans / "plan.json")
    result = portcullis("scan", "--no-cache", str(tmp_path / "plans"))
    assert result.returncode == 2
    assert errors(result) == [
        f"error: {tmp_path / 'plans'}: no Terraform files (.tf, .tf.json) in this directory "
        "tree; a plan JSON (terraform show -json) is scanned only when named on its own: "
        f"portcullis scan {plans / 'plan.json'}"
    ]
    named = portcullis("scan", "--no-cache", str(plans / "plan.json"))
    assert named.returncode in (0, 1), named.stderr


def test_progress_line_on_a_terminal_for_a_large_tree_and_never_in_a_pipe(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for index in range(310):
        (tree / f"bucket{index}.tf").write_text(
            f'resource "aws_s3_bucket" "b{index}" {{\n  bucket = "b{index}"\n}}\n'
        )
    command = [sys.executable, "-m", "portcullis", "scan", str(tree), "--no-cache", "--jobs", "2"]
    controller, terminal = pty.openpty()
    try:
        process = subprocess.run(
            command, stdout=subprocess.DEVNULL, stderr=terminal, cwd=ROOT, timeout=300
        )
        os.close(terminal)
        seen = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(controller)
    assert process.returncode == 0
    assert b"parsing [" in seen
    assert b"310/310 files" in seen
    piped = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert "parsing [" not in piped.stderr
