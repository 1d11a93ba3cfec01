"""examples/ci/policy-replay.yml, the GitHub Actions job the README points to.

GitHub can't run here, so the workflow is checked for its shape (it runs on
pull requests, takes only the candidate policy from them, downloads the log
artifact, replays, posts the Markdown), and
its own shell steps are run as GitHub runs them (bash -e -o pipefail, the
step's env, ``${{ }}`` filled in) on a log a real gateway wrote: the replay
command works as written. Only `gh`, GitHub's CLI, is stood in for.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from tests.conftest import POLICIES, ROOT
from tests.decision_traffic import Recorded, record_traffic, refunds_candidate

WORKFLOW = ROOT / "examples/ci/policy-replay.yml"
SCHEMA = json.loads((ROOT / "portcullis/replay/report.schema.json").read_text())
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
# How GitHub runs a `run:` step on ubuntu-latest.
SHELL = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]
PULL_REQUEST = "42"
BASE_SHA = "${{ github.event.pull_request.base.sha }}"
HEAD_SHA = "${{ github.event.pull_request.head.sha }}"
PR_POLICIES = "pull-request/policies"  # where the workflow checks out the pull request's


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    document = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    jobs = workflow["jobs"]
    assert list(jobs) == ["replay"]
    found: list[dict[str, Any]] = jobs["replay"]["steps"]
    return found


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """A real gateway's sealed, signed log of 150 mixed requests."""
    return asyncio.run(record_traffic(tmp_path_factory.mktemp("traffic"), 150))


def step(
    steps: list[dict[str, Any]], *, uses: str = "", runs: str = ""
) -> tuple[int, dict[str, Any]]:
    """The (index, step) that uses the action ``uses`` or whose script has ``runs``."""
    for index, each in enumerate(steps):
        if uses and str(each.get("uses", "")).split("@")[0] == uses:
            return index, each
        if runs and runs in str(each.get("run", "")):
            return index, each
    raise AssertionError(f"no step {'uses ' + uses if uses else 'runs ' + runs!r}")


def test_runs_on_pull_requests_that_change_the_policy(workflow: dict[Any, Any]) -> None:
    # PyYAML reads the bare key `on` as YAML 1.1's true.
    trigger = workflow.get("on", workflow.get(True))
    # pull_request_target: GitHub runs this file as the base branch has it. On
    # pull_request it takes it from the pull request, which could rewrite the check.
    assert isinstance(trigger, dict) and list(trigger) == ["pull_request_target"]
    assert "policies/**" in trigger["pull_request_target"]["paths"]
    assert workflow["permissions"]["pull-requests"] == "write"  # to comment
    assert workflow["permissions"]["contents"] == "read"


def github_condition(expression: str, context: dict[str, Any]) -> bool:
    """A GitHub Actions `if:` of names, '...' strings, ==, &&, || and parentheses,
    evaluated against ``context`` (a missing name is null, as on GitHub)."""
    tokens = re.findall(r"'[^']*'|==|&&|\|\||[()]|[A-Za-z_][A-Za-z0-9_.-]*", expression)
    assert "".join(tokens) == re.sub(r"\s+", "", expression), expression

    def value(token: str) -> Any:
        if token.startswith("'"):
            return token[1:-1]
        found: Any = context
        for part in token.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        return found

    python = []
    for token in tokens:
        if token in ("==", "(", ")"):
            python.append(token)
        elif token in ("&&", "||"):
            python.append(" and " if token == "&&" else " or ")
        else:
            python.append(repr(value(token)))
    return bool(eval("".join(python)))  # only literals and operators, built above


def test_a_forks_pull_request_replays_only_once_a_maintainer_labels_it(
    workflow: dict[Any, Any],
) -> None:
    """The review: on pull_request_target any pull request's Rego ran over the
    production log and its reasons (any input field: identities, addresses,
    headers) were posted as a comment, from a fork with no approval. A fork's pull
    request runs on the `replay-approved` label event only (a push after it needs
    the label again); a branch of the repository runs on every push."""
    trigger = workflow.get("on", workflow.get(True))
    types = set(trigger["pull_request_target"]["types"])
    assert {"opened", "synchronize", "labeled"} <= types
    condition = str(workflow["jobs"]["replay"]["if"])

    def runs(repo: str, action: str, label: str | None = None) -> bool:
        event: dict[str, Any] = {
            "action": action,
            "pull_request": {"head": {"repo": {"full_name": repo}}},
        }
        if label is not None:
            event["label"] = {"name": label}
        return github_condition(condition, {"github": {"repository": "acme/gw", "event": event}})

    assert runs("acme/gw", "opened") and runs("acme/gw", "synchronize")
    assert not runs("mallory/gw", "opened")
    assert not runs("mallory/gw", "synchronize")
    assert not runs("mallory/gw", "labeled", "documentation")
    assert runs("mallory/gw", "labeled", "replay-approved")


def checkouts(steps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The actions/checkout steps' inputs, by the ref they check out."""
    found = {}
    for each in steps:
        if str(each.get("uses", "")).split("@")[0] == "actions/checkout":
            found[str(each.get("with", {}).get("ref"))] = each.get("with", {})
    return found


def test_a_pull_request_that_edits_the_tool_is_replayed_with_the_base_branchs_tool(
    steps: list[dict[str, Any]], recorded: Recorded, tmp_path: Path
) -> None:
    """A pull request that changes policies/ and also portcullis/ (Report.blocking()
    returning {}) passed its own check: the job ran `pip install .` on the pull
    request's checkout. The tool must come from the base branch, and nothing but
    policies/ from the pull request."""
    checked_out = checkouts(steps)
    assert set(checked_out) == {BASE_SHA, HEAD_SHA}
    base, pull_request = checked_out[BASE_SHA], checked_out[HEAD_SHA]
    assert base["path"] != pull_request["path"]
    # The pull request's checkout holds policies/ alone, and neither keeps the token.
    assert pull_request["sparse-checkout"].split() == ["policies/"]
    assert pull_request["sparse-checkout-cone-mode"] is False
    assert base["persist-credentials"] is False and pull_request["persist-credentials"] is False

    # The install step as written, with `pip` standing in: it installs the base checkout.
    installs = [each for each in steps if re.search(r"\bpip\b", str(each.get("run", "")))]
    assert len(installs) == 1
    job = checkout(tmp_path, recorded, POLICIES)
    pip = job.directory / "bin/pip"
    pip.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > pip-calls\n')
    pip.chmod(pip.stat().st_mode | stat.S_IXUSR)
    installed = job.run(steps, "pip install")
    assert installed.returncode == 0, installed.stderr
    arguments = (job.directory / "pip-calls").read_text().splitlines()
    assert arguments[0] == "install"
    assert (job.directory / arguments[-1]).resolve() == (job.directory / base["path"]).resolve()

    # The replay evaluates the pull request's policies/, and nothing else of it.
    _, replay = step(steps, runs="portcullis policy replay")
    assert f"--policy {pull_request['path']}/policies/" in " ".join(replay["run"].split())


def test_a_pull_request_policy_linking_outside_its_directory_fails_the_job(
    steps: list[dict[str, Any]], recorded: Recorded, tmp_path: Path
) -> None:
    """A symbolic link in the pull request's policies/ (data/leak.json -> a runner
    file) would load that file as policy data, readable in the posted report."""
    job = checkout(tmp_path, recorded, POLICIES)
    assert job.run(steps, "find pull-request/policies").returncode == 0
    (job.directory / PR_POLICIES / "data/leak.json").symlink_to("/etc/hostname")
    refused = job.run(steps, "find pull-request/policies")
    assert refused.returncode == 1
    assert "data/leak.json" in refused.stderr and "symbolic links" in refused.stderr


def test_downloads_the_log_artifact_replays_it_and_posts_the_markdown(
    steps: list[dict[str, Any]],
) -> None:
    download_at, download = step(steps, uses="actions/download-artifact")
    assert download["with"]["name"] == "decision-logs" and download["with"]["path"] == "logs"
    replay_at, replay = step(steps, runs="portcullis policy replay")
    command = " ".join(replay["run"].split())
    assert "--output markdown --output-file replay.md" in command
    assert "--key " in command and "--no-verify" not in command  # the chain is checked
    post_at, post = step(steps, runs="gh pr comment")
    assert "--body-file replay.md" in post["run"]
    assert post["env"]["GH_REPO"] == "${{ github.repository }}"  # the workspace is no checkout
    gate_at, gate = step(steps, runs='test "$REPLAY_EXIT"')
    assert "steps.replay.outputs.exit" in str(gate.get("env"))
    assert download_at < replay_at < post_at < gate_at
    assert replay["id"] == "replay"


def test_every_script_is_valid_bash(steps: list[dict[str, Any]]) -> None:
    for each in steps:
        if "run" in each:
            check = subprocess.run(["bash", "-n"], input=each["run"], text=True,
                                   capture_output=True)  # fmt: skip
            assert check.returncode == 0, f"{each.get('name')}: {check.stderr}"


def test_step_outputs_used_are_written_by_earlier_steps(steps: list[dict[str, Any]]) -> None:
    written: set[str] = set()
    for each in steps:
        for expression in EXPRESSION.findall(json.dumps(each)):
            match = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expression)
            if match:
                assert f"{match[1]}.{match[2]}" in written, expression
            else:
                assert expression.split(".")[0] in {"github", "vars"}, expression
        for name in re.findall(r'echo "([\w-]+)=.*>> "\$GITHUB_OUTPUT"', each.get("run", "")):
            written.add(f"{each['id']}.{name}")


@dataclass
class Checkout:
    """A job's working directory: the pull request's policies/ (in its checkout's
    directory), the downloaded logs/."""

    directory: Path
    outputs: dict[str, str]
    values: dict[str, str]

    def run(
        self, steps: list[dict[str, Any]], script_part: str
    ) -> subprocess.CompletedProcess[str]:
        _, chosen = step(steps, runs=script_part)
        output_file = self.directory / "github_output"
        output_file.write_text("")
        env = {
            "PATH": f"{self.directory / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
            "HOME": os.environ.get("HOME", "/root"),
            "GITHUB_OUTPUT": str(output_file),
        }
        env.update({name: self.fill(str(value)) for name, value in chosen.get("env", {}).items()})
        done = subprocess.run([*SHELL, "-c", self.fill(chosen["run"])], cwd=self.directory,
                              env=env, text=True, capture_output=True, timeout=120)  # fmt: skip
        for line in output_file.read_text().splitlines():
            name, _, value = line.partition("=")
            self.outputs[f"{chosen.get('id')}.{name}"] = value
        return done

    def fill(self, text: str) -> str:
        """``${{ expression }}`` as GitHub would fill it; an unknown one fails the test."""

        def value(match: re.Match[str]) -> str:
            expression = match[1]
            if expression.startswith("steps."):
                step_id, _, name = expression.removeprefix("steps.").partition(".outputs.")
                return self.outputs[f"{step_id}.{name}"]
            return self.values[expression]

        return EXPRESSION.sub(value, text)


def checkout(tmp_path: Path, recorded: Recorded, policy: Path) -> Checkout:
    shutil.copytree(policy, tmp_path / PR_POLICIES)
    (tmp_path / "logs").mkdir()
    shutil.copy(recorded.log, tmp_path / "logs/decisions.log")
    private = serialization.load_pem_private_key(recorded.key.read_bytes(), password=None)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # `gh` stands in for GitHub's CLI: it records how it was called and the body it got.
    (tmp_path / "bin").mkdir()
    gh = tmp_path / "bin/gh"
    gh.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> gh-calls\ncp "$5" gh-body.md\n')
    gh.chmod(gh.stat().st_mode | stat.S_IXUSR)
    return Checkout(
        tmp_path,
        outputs={},
        values={
            "vars.DECISION_LOG_PUBLIC_KEY": public_pem.decode().strip(),
            "github.token": "token-for-gh",
            "github.repository": "example/gateway-policies",
            "github.event.pull_request.number": PULL_REQUEST,
        },
    )


@pytest.mark.parametrize(
    ("candidate", "exit_code", "verdict"),
    [("shipped", 0, "### ✅ Policy replay: PASS: no change"),
     ("refunds within 300 s", 1, "### ❌ Policy replay: FAIL:")],
)  # fmt: skip
def test_the_steps_as_written_replay_a_real_log_and_post_the_report(
    steps: list[dict[str, Any]],
    recorded: Recorded,
    tmp_path: Path,
    candidate: str,
    exit_code: int,
    verdict: str,
) -> None:
    policy = POLICIES if candidate == "shipped" else refunds_candidate(tmp_path / "pr")
    job = checkout(tmp_path / "job", recorded, policy)

    replayed = job.run(steps, "portcullis policy replay")
    assert replayed.returncode == 0, replayed.stderr  # the step records the exit, never fails
    assert job.outputs["replay.exit"] == str(exit_code), replayed.stderr
    comment = (job.directory / "replay.md").read_text()
    assert comment.startswith(verdict)
    report = json.loads((job.directory / "replay.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["verification"]["verified"] is True
    assert report["totals"]["replayed"] > 100
    if exit_code:
        assert report["totals"]["by_kind"]["allow-to-deny"] > 0

    posted = job.run(steps, "gh pr comment")
    assert posted.returncode == 0, posted.stderr
    calls = (job.directory / "gh-calls").read_text().splitlines()
    assert calls[0] == f"pr comment {PULL_REQUEST} --body-file replay.md --edit-last"
    assert (job.directory / "gh-body.md").read_text() == comment

    gate = job.run(steps, 'test "$REPLAY_EXIT"')
    assert gate.returncode == exit_code


def test_a_tampered_log_fails_the_job_without_a_comment(
    steps: list[dict[str, Any]], recorded: Recorded, tmp_path: Path
) -> None:
    job = checkout(tmp_path, recorded, POLICIES)
    log = job.directory / "logs/decisions.log"
    lines = log.read_text().splitlines(keepends=True)
    # A denied decision turned into an allow, halfway through the log.
    denied = [n for n, line in enumerate(lines) if '"allow":false' in line]
    edited = denied[len(denied) // 2]
    lines[edited] = lines[edited].replace('"allow":false', '"allow":true', 1)
    log.write_text("".join(lines))
    replayed = job.run(steps, "portcullis policy replay")
    assert job.outputs["replay.exit"] == "2"
    assert "refusing to replay a tampered log" in replayed.stderr
    assert not (job.directory / "replay.md").exists()  # the post step's `if` skips it
    assert job.run(steps, 'test "$REPLAY_EXIT"').returncode == 1


def test_a_log_directory_as_logrotate_leaves_it_replays(
    steps: list[dict[str, Any]], recorded: Recorded, tmp_path: Path
) -> None:
    """The artifact is the gateway's log directory: the log, rotated files (the
    older ones compressed, the oldest deleted by retention), and the .head and
    cursor files beside them. The step's `decisions.log*` glob passed the .head
    file as a log (exit 2, "no chain fields"), a .gz too, and a first file that
    continues a deleted one was refused as tampered."""
    import gzip

    from tests.test_policy_replay import _rotated

    job = checkout(tmp_path, recorded, POLICIES)
    logs = job.directory / "logs"
    (logs / "decisions.log").unlink()
    asyncio.run(_rotated(recorded, logs / "decisions.log", runs=4))
    (logs / "decisions.log.3").unlink()  # retention
    packed = logs / "decisions.log.2"
    (logs / "decisions.log.2.gz").write_bytes(gzip.compress(packed.read_bytes()))
    packed.unlink()  # logrotate's compress (with delaycompress, .1 stays as it is)
    (logs / "decisions.log.sink-siem.cursor").write_text('{"inode": 1, "offset": 0}\n')
    assert (logs / "decisions.log.head").is_file()
    replayed = job.run(steps, "portcullis policy replay")
    assert job.outputs["replay.exit"] == "0", replayed.stderr
    report = json.loads((job.directory / "replay.json").read_text())
    assert report["verification"]["verified"] is True
    assert any("begins mid-chain" in note for note in report["verification"]["notes"])


def test_the_readme_shows_the_replay_step_as_the_workflow_runs_it(
    steps: list[dict[str, Any]],
) -> None:
    """The README's copy globbed `logs/decisions.log*`, which also passes the .head
    file, sink cursors and .gz files as logs (exit 2, "record has no chain fields")."""
    readme = (ROOT / "README.md").read_text()
    after = readme.split("<!-- not runnable: a step of examples/ci/policy-replay.yml", 1)[1]
    shown = after.split("```sh\n", 1)[1].split("```", 1)[0]
    _, replay = step(steps, runs="portcullis policy replay")
    assert shown == replay["run"]
