"""Baselines: the findings a team has accepted for now. Findings in the baseline
are still reported, marked as such, but don't fail the build; new ones do."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iac_scanner.findings import Finding, Unjudged

# 3: a finding in a called module is told apart by its root module too.
# 2: fingerprints on rule, resource, root-relative file and the finding itself.
VERSION = 3
ROOTLESS_VERSION = 2


class BaselineError(Exception):
    """A baseline file that can't be read (one line, names the file)."""

    def __init__(
        self, file: str, message: str, line: int | None = None, column: int | None = None
    ) -> None:
        self.file, self.message, self.line, self.column = file, message, line, column
        where = file if line is None else f"{file}:{line}:{column}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Baseline:
    path: str
    # Each entry's fingerprint, and what it says it is (rule_id, resource, file,
    # and whether it is a resource not judged): what a reviewer of the baseline
    # reads, so an entry accepts only the finding it says it is.
    labels: dict[str, tuple[object, object, object, bool]]
    # A version 2 file: its entries for findings in called modules name no root module.
    rootless: bool = False

    def accepts(self, fingerprint: str, finding: Finding, notes: list[str]) -> bool:
        """Whether the entry with fingerprint accepts finding: it must say it is
        that finding (rule, resource, file), or it accepts nothing (noted)."""
        actual = (finding.rule.id, finding.resource, finding.root_path or finding.file, False)
        return self._accepts(fingerprint, actual, notes)

    def accepts_not_judged(self, item: Unjudged, notes: list[str]) -> bool:
        """Whether an entry written with --fail-on-not-judged accepts that the
        rule could not judge the resource."""
        actual = (item.rule_id, item.resource, item.root_path or item.file, True)
        return self._accepts(item.fingerprint, actual, notes)

    def _accepts(
        self, fingerprint: str, actual: tuple[str, str, str, bool], notes: list[str]
    ) -> bool:
        said = self.labels.get(fingerprint)
        if said is None:
            return False
        if said == actual:
            return True
        rule, resource, file, _ = said
        what = "not judged " if actual[3] else ""
        note = (
            f"{self.path}: the entry with fingerprint {fingerprint} is labelled {rule} on "
            f"{resource} ({file}), but that fingerprint is {actual[0]} {what}on {actual[1]} "
            f"({actual[2]}): it accepts nothing; re-create the baseline with --create-baseline"
        )
        if note not in notes:
            notes.append(note)
        return False


def load(path: str) -> Baseline:
    """The fingerprints a baseline file accepts."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineError(
            path, "no such baseline file (make one with --create-baseline)"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise BaselineError(path, f"can't read the baseline: {error}") from None
    try:
        document = json.loads(text)
    except ValueError as error:
        line = getattr(error, "lineno", 1)
        column = getattr(error, "colno", 1)
        reason = getattr(error, "msg", str(error))
        raise BaselineError(path, f"not valid JSON: {reason}", line, column) from None
    entries = document.get("findings") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("fingerprint"), str) for e in entries
    ):
        raise BaselineError(
            path,
            'not a portcullis baseline: expected {"findings": [{"fingerprint": ...}, ...]} '
            "as written by --create-baseline",
        )
    if document.get("version") not in (VERSION, ROOTLESS_VERSION):
        raise BaselineError(
            path,
            f"a version {document.get('version')} baseline; findings are now told apart "
            "by what they are about (not only rule, resource and file), so its fingerprints "
            "no longer match: re-create it with --create-baseline",
        )
    labels: dict[str, tuple[object, object, object, bool]] = {}
    for e in entries:
        label = (e.get("rule_id"), e.get("resource"), e.get("file"), e.get("not_judged") is True)
        # One fingerprint listed twice with different labels: neither is trusted.
        if labels.setdefault(e["fingerprint"], label) != label:
            labels[e["fingerprint"]] = (None, None, None, False)
    rootless = document["version"] == ROOTLESS_VERSION
    return Baseline(path, labels, rootless=rootless)


def apply(findings: list[Finding], accepted: Baseline) -> list[str]:
    """Mark the accepted findings; notes on version 2 entries that accept none."""
    notes: list[str] = []
    for finding in findings:
        if accepted.accepts(finding.fingerprint, finding, notes):
            finding.baselined = True
    if not accepted.rootless:
        return notes
    # A version 2 entry for a finding in a called module names no root module.
    # It accepts the finding when one root module in this scan has it, as when
    # the baseline was made; when several do, it can't tell an old hole from a
    # new root's, so it accepts none of them and says so.
    by_entry: dict[str, list[Finding]] = {}
    for finding in findings:
        if finding.in_called_module and accepted.accepts(
            finding.rootless_fingerprint, finding, notes
        ):
            by_entry.setdefault(finding.rootless_fingerprint, []).append(finding)
    for group in by_entry.values():
        if len(group) == 1:
            group[0].baselined = True
            continue
        first = group[0]
        roots = ", ".join(sorted(f.root_module for f in group))
        notes.append(
            f"{accepted.path}: the version 2 entry for {first.rule.id} on {first.resource} "
            f"({first.root_path or first.file}) names no root module, and {len(group)} root "
            f"modules have that finding ({roots}): it accepts none of them; re-create the "
            "baseline with --create-baseline to accept the ones you mean to"
        )
    return notes


def apply_not_judged(items: list[Unjudged], accepted: Baseline, notes: list[str]) -> list[Unjudged]:
    """The items, those whose rule and resource the baseline accepts marked so."""
    return [
        dataclasses.replace(item, baselined=True)
        if accepted.accepts_not_judged(item, notes)
        else item
        for item in items
    ]


def render(findings: list[Finding], not_judged: list[Unjudged] | None = None) -> str:
    """A baseline of every unsuppressed finding (and, for --fail-on-not-judged,
    every unsuppressed resource a rule could not judge); readable, diff-friendly."""
    entries: list[dict[str, Any]] = [
        {
            "fingerprint": f.fingerprint,
            "rule_id": f.rule.id,
            "resource": f.resource,
            "file": f.root_path or f.file,
            "root_module": f.root_module_path or f.root_module,
            "message": f.message,
        }
        for f in sorted(findings, key=Finding.sort_key)
        if f.suppressed is None
    ]
    reasons: dict[str, list[str]] = {}
    for item in sorted(not_judged or [], key=lambda u: (u.rule_id, u.place, u.why)):
        if item.suppressed is not None:
            continue
        if item.fingerprint not in reasons:
            entries.append(
                {
                    "fingerprint": item.fingerprint,
                    "rule_id": item.rule_id,
                    "resource": item.resource,
                    "file": item.root_path or item.file,
                    "not_judged": True,
                    "reasons": reasons.setdefault(item.fingerprint, []),
                }
            )
        if item.why not in reasons[item.fingerprint]:
            reasons[item.fingerprint].append(item.why)
    unique = list({e["fingerprint"]: e for e in entries}.values())
    return json.dumps({"version": VERSION, "findings": unique}, indent=2) + "\n"
