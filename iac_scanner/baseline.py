"""Baselines: the findings a team has accepted for now. Findings in the baseline
are still reported, marked as such, but don't fail the build; new ones do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from iac_scanner.findings import Finding

# 2: fingerprints on rule, resource, root-relative file and the finding itself.
VERSION = 2


class BaselineError(Exception):
    """A baseline file that can't be read (one line, names the file)."""


def load(path: str) -> set[str]:
    """The fingerprints a baseline file accepts."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineError(
            f"{path}: no such baseline file (make one with --create-baseline)"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise BaselineError(f"{path}: can't read the baseline: {error}") from None
    try:
        document = json.loads(text)
    except ValueError as error:
        line = getattr(error, "lineno", 1)
        column = getattr(error, "colno", 1)
        reason = getattr(error, "msg", str(error))
        raise BaselineError(f"{path}:{line}:{column}: not valid JSON: {reason}") from None
    entries = document.get("findings") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("fingerprint"), str) for e in entries
    ):
        raise BaselineError(
            f'{path}: not a portcullis baseline: expected {{"findings": '
            '[{"fingerprint": ...}, ...]}} as written by --create-baseline'
        )
    if document.get("version") != VERSION:
        raise BaselineError(
            f"{path}: a version {document.get('version')} baseline; findings are now told apart "
            "by what they are about (not only rule, resource and file), so its fingerprints "
            "no longer match: re-create it with --create-baseline"
        )
    return {e["fingerprint"] for e in entries}


def apply(findings: list[Finding], accepted: set[str]) -> None:
    for finding in findings:
        if finding.fingerprint in accepted:
            finding.baselined = True


def render(findings: list[Finding]) -> str:
    """A baseline of every unsuppressed finding; readable, diff-friendly."""
    entries: list[dict[str, Any]] = [
        {
            "fingerprint": f.fingerprint,
            "rule_id": f.rule.id,
            "resource": f.resource,
            "file": f.root_path or f.file,
            "message": f.message,
        }
        for f in sorted(findings, key=Finding.sort_key)
        if f.suppressed is None
    ]
    unique = list({e["fingerprint"]: e for e in entries}.values())
    return json.dumps({"version": VERSION, "findings": unique}, indent=2) + "\n"
