"""`portcullis policy diff`: Terraform findings that appear and disappear with a candidate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from portcullis.cli import main
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


def test_same_policy_changes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code, report, _ = diff(capsys, "--policy", str(POLICIES))
    assert code == 0 and report["appeared"] == report["disappeared"] == []


def test_candidate_that_does_not_load_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = diff(capsys, "--policy", str(FIXTURES / "replay/broken"))
    assert code == 2 and "broken/decision.rego:5:1" in err


def test_bad_var_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = diff(capsys, "--policy", str(POLICIES), "--var", "novalue")
    assert code == 2 and "expected NAME=VALUE" in err
