"""`portcullis policy diff`: Terraform findings that appear and disappear with a candidate."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from iac_scanner.findings import Finding, Rule
from portcullis.cli import main
from portcullis.policy_diff import FindingsDiff, render_markdown
from tests.conftest import FIXTURES, POLICIES

POS_APP = FIXTURES / "terraform/pos_app"
BROKEN_TF = FIXTURES / "terraform/broken"


@pytest.fixture
def without_public_s3(tmp_path: Path) -> Path:
    candidate = tmp_path / "candidate"
    shutil.copytree(POLICIES, candidate)
    for rule in (candidate / "terraform").glob("public_s3*.rego"):
        rule.unlink()
    return candidate


def diff(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object], str]:
    code = main(["policy", "diff", str(POS_APP), "--output", "json", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out else {}, err


def test_findings_that_disappear_are_reported_and_pass(
    capsys: pytest.CaptureFixture[str], without_public_s3: Path
) -> None:
    code, report, _ = diff(
        capsys, "--policy", str(without_public_s3), "--baseline-policy", str(POLICIES)
    )
    assert code == 0
    assert report["appeared"] == []
    gone = report["disappeared"]
    assert isinstance(gone, list) and {f["rule_id"] for f in gone} == {"PC-TF-006"}
    assert len(gone) == 4


def test_findings_that_appear_fail(
    capsys: pytest.CaptureFixture[str], without_public_s3: Path
) -> None:
    code, report, _ = diff(
        capsys, "--policy", str(POLICIES), "--baseline-policy", str(without_public_s3)
    )
    assert code == 1
    appeared = report["appeared"]
    assert isinstance(appeared, list) and len(appeared) == 4
    assert report["disappeared"] == [] and report["unchanged"] == 13


def test_same_policy_changes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    copy = shutil.copytree(POLICIES, tmp_path / "candidate")  # against the shipped set
    code, report, _ = diff(capsys, "--policy", str(copy))
    assert code == 0 and report["appeared"] == report["disappeared"] == []


def test_candidate_that_does_not_load_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = diff(capsys, "--policy", str(FIXTURES / "replay/broken"))
    assert code == 2 and "broken/decision.rego:5:1" in err


def test_candidate_with_a_date_in_its_yaml_data_is_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It crashed with a traceback and exit 1, which says "findings appear"."""
    candidate = FIXTURES / "policies/yaml_date"
    code, _, err = diff(capsys, "--policy", str(candidate))
    assert (code, err) == (
        2,
        f"portcullis policy diff: candidate {candidate}: {candidate}/extra.yaml:3:10: "
        "data.extra.since: a YAML date/time (2026-11-01) is not a JSON value; quote it to "
        "keep it as a string\n",
    )


def test_bad_var_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = diff(capsys, "--policy", str(POLICIES), "--var", "novalue")
    assert code == 2 and "expected NAME=VALUE" in err


def test_markdown_and_json_to_files_for_a_pull_request_comment(
    capsys: pytest.CaptureFixture[str], without_public_s3: Path, tmp_path: Path
) -> None:
    md, js = tmp_path / "diff.md", tmp_path / "diff.json"
    code = main(["policy", "diff", str(POS_APP), "--policy", str(POLICIES),
                 "--baseline-policy", str(without_public_s3),
                 "--output", "markdown", "--output-file", str(md),
                 "--output", "json", "--output-file", str(js)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    # One of the four public buckets carries `portcullis:ignore=PC-TF-006 reason`:
    # it is reported, but only the other three fail the diff, as they would a scan.
    assert err.strip() == "FAIL: 3 findings appear with the candidate (and 1 suppressed inline)"
    comment = md.read_text()
    assert comment.startswith("### ❌ Policy diff: FAIL: 3 findings appear")
    rows = [line for line in comment.splitlines() if line.startswith("| appears |")]
    assert len(rows) == 4 and all("| PC-TF-006 | high |" in row for row in rows)
    assert sum("(suppressed: " in row for row in rows) == 1
    assert "`aws_s3_bucket.exports[0]`" in comment  # code spans keep names as written
    report = json.loads(js.read_text())
    assert report["report"] == "portcullis.policy-diff" and report["exit_code"] == 1
    assert len(report["appeared"]) == 4


def test_suppressed_findings_alone_do_not_fail(
    capsys: pytest.CaptureFixture[str], without_public_s3: Path, tmp_path: Path
) -> None:
    only_suppressed = tmp_path / "tf"
    only_suppressed.mkdir()
    buckets = (POS_APP / "buckets.tf").read_text()
    (only_suppressed / "buckets.tf").write_text(buckets.split("\n\n")[0] + "\n")
    assert "portcullis:ignore=PC-TF-006" in (only_suppressed / "buckets.tf").read_text()
    code = main(["policy", "diff", str(only_suppressed), "--policy", str(POLICIES),
                 "--baseline-policy", str(without_public_s3)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "PASS: only findings suppressed inline appear with the candidate (1)" in out


def test_markdown_report_neutralises_html_and_table_breaking_text_from_terraform() -> None:
    # A pull request controls its Terraform, so resource names and the values a
    # rule quotes in its message must not inject links, HTML or table columns.
    rule = Rule("PC-TF-006", "public bucket", "high")
    evil = Finding(
        rule,
        resource="aws_s3_bucket.x`|<b>",
        message='acl = "<img src=x onerror=alert(1)> | [click](https://evil.example) **"',
        file="main.tf",
        line=3,
        suppressed="ok\n| forged | row |",
    )
    text = render_markdown(FindingsDiff("cand/", "policies/", [evil], [], [], unchanged=0))
    row = next(line for line in text.splitlines() if line.startswith("| appears |"))
    assert "\n| forged |" not in text
    # Seven unescaped pipes: the table's own six columns, nothing more.
    assert len(re.findall(r"(?<!\\)\|", row)) == 7
    # Code spans show text literally; outside them nothing is left unescaped.
    outside = re.sub(r"`[^`]*`", "", row)
    assert not re.search(r"(?<!\\)[<>\[\]*`]", outside), outside
    assert "`aws_s3_bucket.x'\\|<b>`" in row  # the backtick can't close the span early


def test_only_one_output_can_go_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["policy", "diff", str(POS_APP), "--policy", str(POLICIES),
                 "--output", "json", "--output", "markdown"])  # fmt: skip
    assert code == 2
    assert "only one --output can go to stdout" in capsys.readouterr().err


def test_an_output_file_that_cannot_be_written_is_exit_2_and_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "no-such-dir" / "diff.md"
    copy = shutil.copytree(POLICIES, tmp_path / "candidate")
    code = main(["policy", "diff", str(POS_APP), "--policy", str(copy),
                 "--output", "markdown", "--output-file", str(target)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert (
        f"portcullis policy diff: {target}: the report can't be written: No such file or directory"
        in err
    )
    assert "PASS" not in err and "FAIL" not in err  # no verdict for outputs not written


def test_the_default_baseline_is_the_shipped_set_not_the_local_policies_directory(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    without_public_s3: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pull request edits policies/ in place and CI runs `policy diff infra
    --policy policies/` from the repository's root: the default baseline was
    ./policies, the candidate itself, so nothing ever appeared (exit 0, PASS)."""
    repository = tmp_path / "repo"
    shutil.copytree(without_public_s3, repository / "policies")  # the PR drops a rule...
    monkeypatch.chdir(repository)
    code, report, _ = diff(capsys, "--policy", "policies/")
    assert code == 0  # ...and the shipped set is the baseline: its findings disappear
    assert report["baseline"] != "policies" and len(report["disappeared"]) == 4  # type: ignore[arg-type]


def test_a_candidate_that_is_the_baseline_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = diff(capsys, "--policy", str(POLICIES), "--baseline-policy", f"{POLICIES}/")
    assert code == 2
    assert "is the baseline" in err and "give --baseline-policy" in err


def test_a_reworded_message_is_a_change_not_a_finding_that_appears(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Rules without a key are told apart by their message, so a candidate that
    only rewords one showed it as disappearing and appearing: FAIL, exit 1."""
    candidate = shutil.copytree(POLICIES, tmp_path / "candidate")
    rule = candidate / "terraform/public_s3.rego"
    rule.write_text(rule.read_text().replace('use acl = \\"private\\"', 'set acl = \\"private\\"'))
    code, report, _ = diff(capsys, "--policy", str(candidate), "--baseline-policy", str(POLICIES))
    assert code == 0
    assert report["appeared"] == report["disappeared"] == []
    changed = report["changed"]
    assert isinstance(changed, list) and changed
    assert len(changed) == 4  # the four public-acl findings on pos_app
    assert all(c["after"]["message"].endswith('set acl = "private"') for c in changed)
