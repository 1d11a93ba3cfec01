"""Run checkov as a subprocess from its own environment and read its JSON into
findings. (checkov vendors its own `hcl2` module, which clashes with
python-hcl2's, so the two never share an interpreter.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from iac_scanner.findings import Finding, Rule, normalise_severity

# checkov's check ids: CKV_AWS_20, CKV2_AWS_1, CKV3_SAST_1, CKV_K8S_8. A new
# checkov release adds ids in this space, and checkov's own answer to a custom
# check that takes one is "ours will override yours; use your own prefix".
_CHECK_ID = re.compile(r"CKV\d*_", re.IGNORECASE)


def is_check_id(rule_id: str) -> bool:
    """Whether rule_id is in checkov's id space (whether or not checkov has it today)."""
    return _CHECK_ID.match(rule_id) is not None


class CheckovError(Exception):
    """checkov is missing or failed (one line, fit for stderr)."""


def resolve(executable: str) -> str:
    """The checkov executable to run; CheckovError when there is none."""
    found = shutil.which(executable)
    if found is None:
        raise CheckovError(
            f"checkov: {executable!r} not found; install checkov in its own environment "
            "(`make .venv-checkov` here) and pass --checkov PATH/TO/checkov"
        )
    return found


def _commands(executable: str, paths: list[Path]) -> list[list[str]]:
    common = ["-o", "json", "--compact", "--skip-download"]
    commands = []
    # .tf.json files are checkov's terraform_json framework, not terraform's.
    frameworks = ["--framework", "terraform", "terraform_json"]
    files = [str(p) for p in paths if p.is_file() and p.name.endswith((".tf", ".tf.json"))]
    plans = [str(p) for p in paths if p.is_file() and p.suffix == ".json" and str(p) not in files]
    for directory in (p for p in paths if p.is_dir()):
        commands.append([executable, "-d", str(directory), *frameworks, *common])
    if files:
        commands.append([executable, "-f", *files, *frameworks, *common])
    if plans:
        commands.append([executable, "-f", *plans, "--framework", "terraform_plan", *common])
    return commands


# What a .checkov.yaml may say: keys that only add checks or change how the
# report looks. Every other key (skip-check, check, skip-path, skip-framework,
# framework, baseline, var-file, soft-fail, policy-metadata-filter, ...) can
# drop a check or a finding, and checkov reads the file from the scanned
# directory and the working directory: files the change under review can edit.
_CONFIG_KEYS_ALLOWED = frozenset(
    {
        "compact",
        "external-checks-dir",
        "external-checks-git",
        "quiet",
        "run-all-external-checks",
        "skip-download",
    }
)


def _config_files(paths: list[Path]) -> list[Path]:
    """The .checkov.yaml/.yml files checkov would read (its get_default_config_paths):
    in each directory it scans (-d), the working directory and the home directory."""
    directories = [p for p in paths if p.is_dir()] + [Path.cwd(), Path.home()]
    found: list[Path] = []
    for directory in directories:
        for name in (".checkov.yaml", ".checkov.yml"):
            candidate = directory / name
            if candidate.exists() and candidate.resolve() not in {f.resolve() for f in found}:
                found.append(candidate)
    return found


def refuse_unsafe_config(paths: list[Path]) -> None:
    """CheckovError naming the first checkov config file with a key that could
    drop a check or a finding (or that can't be read)."""
    allowed = ", ".join(sorted(_CONFIG_KEYS_ALLOWED))
    for file in _config_files(paths):
        shown = os.path.relpath(file) if file.is_absolute() else str(file)
        if shown.startswith(".."):
            shown = str(file)
        try:
            document = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise CheckovError(
                f"checkov: {shown}: can't read this checkov configuration ({error}), so "
                "which checks it skips can't be told; fix or remove it"
            ) from None
        if document is None:
            continue
        keys = list(document) if isinstance(document, dict) else [str(document)]
        for key in keys:
            if str(key) not in _CONFIG_KEYS_ALLOWED:
                raise CheckovError(
                    f"checkov: {shown}: `{key}` would change which of checkov's checks run "
                    "or what they report, and this file is read from the scanned tree or "
                    "the working directory, which the change under review can edit; "
                    "remove it (the scan runs checkov with its own settings; .checkov.yaml "
                    f"may only add checks: {allowed})"
                )


class CheckovRun:
    """checkov started in the background over the scanned paths; `findings()`
    waits for it. Both of checkov's result exit codes (0 clean, 1 failed checks)
    are success here; the merged findings decide the scan's exit code."""

    def __init__(self, executable: str, paths: list[Path]) -> None:
        self.executable = resolve(executable)
        refuse_unsafe_config(paths)
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._future: Future[list[dict[str, Any]]] = self._pool.submit(
            self._run_all, _commands(self.executable, paths)
        )

    def _run_all(self, commands: list[list[str]]) -> list[dict[str, Any]]:
        reports: list[dict[str, Any]] = []
        # Without this checkov tries to fetch its guideline mappings from the network.
        env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
        for command in commands:
            try:
                completed = subprocess.run(
                    command, capture_output=True, text=True, env=env, check=False
                )
            except OSError as error:
                raise CheckovError(f"checkov: can't run {command[0]}: {error.strerror}") from None
            if completed.returncode not in (0, 1):
                last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
                raise CheckovError(f"checkov exited {completed.returncode}: {last}")
            try:
                output = json.loads(completed.stdout)
            except ValueError:
                last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
                raise CheckovError(f"checkov printed no JSON report: {last}") from None
            reports.extend(output if isinstance(output, list) else [output])
        return reports

    def version(self) -> str | None:
        for report in self._future.result():
            summary = report.get("summary") if "summary" in report else report
            if isinstance(summary, dict) and summary.get("checkov_version"):
                return str(summary["checkov_version"])
        return None

    def findings(self, display: Any) -> list[Finding]:
        """Failed and checkov:skip'ped checks, one per (check, resource, file)."""
        try:
            reports = self._future.result()
        finally:
            self._pool.shutdown(wait=False)
        found: dict[tuple[str, str, str], Finding] = {}
        for report in reports:
            results = report.get("results") if isinstance(report, dict) else None
            if not isinstance(results, dict):
                continue
            for key, suppressed in (("failed_checks", False), ("skipped_checks", True)):
                for check in results.get(key) or []:
                    finding = _finding(check, suppressed, display)
                    if finding is not None:
                        identity = (finding.rule.id, finding.resource, finding.file)
                        found.setdefault(identity, finding)
        return list(found.values())


def _finding(check: dict[str, Any], suppressed: bool, display: Any) -> Finding | None:
    check_id = check.get("check_id")
    if not isinstance(check_id, str):
        return None
    rule = Rule(
        id=check_id,
        title=str(check.get("check_name") or check_id),
        severity=normalise_severity(check.get("severity")),
        remediation=str(check.get("guideline") or ""),
        source="checkov",
        help_uri=str(check.get("guideline") or ""),
    )
    path = check.get("file_abs_path") or check.get("file_path") or ""
    lines = check.get("file_line_range") or [1, 1]
    resource = str(check.get("resource_address") or check.get("resource") or "")
    reason = None
    if suppressed:
        result = check.get("check_result") or {}
        reason = str(result.get("suppress_comment") or "checkov:skip")
    return Finding(
        rule=rule,
        resource=resource,
        message=f"{resource}: {rule.title}",
        file=display(Path(path)) if path else "",
        line=max(1, int(lines[0] or 1)),
        end_line=int(lines[1]) if len(lines) > 1 and lines[1] else None,
        suppressed=reason,
    )
