"""Terraform findings that appear and disappear with a candidate policy: comparison and reports.

Findings are matched by fingerprint (rule id, resource, file, and the root
module for one in a called module: what baselines and code scanning track).
The JSON report (``"report": "portcullis.policy-diff", "version": 1``) is the
document the text and Markdown reports render.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iac_scanner.findings import Finding
from portcullis.markdown_escape import cell, code

REPORT_TYPE = "portcullis.policy-diff"
VERSION = 1


@dataclass
class FindingsDiff:
    candidate: str
    baseline: str
    appeared: list[Finding]
    disappeared: list[Finding]
    changed: list[tuple[Finding, Finding]]  # same fingerprint, other message or severity
    unchanged: int

    @property
    def failing(self) -> list[Finding]:
        """Findings that appear and would fail a scan (not suppressed inline)."""
        return [finding for finding in self.appeared if finding.counts]

    def exit_code(self) -> int:
        """1 when a finding that counts appears, else 0 (disappearing ones pass)."""
        return 1 if self.failing else 0


def compare(
    before: list[Finding], after: list[Finding], *, candidate: str, baseline: str
) -> FindingsDiff:
    old = {finding.fingerprint: finding for finding in before}
    new = {finding.fingerprint: finding for finding in after}
    pairs = [(old[key], new[key]) for key in old.keys() & new.keys()]
    gone = [old[key] for key in old.keys() - new.keys()]
    came = [new[key] for key in new.keys() - old.keys()]
    # A rule's finding whose message the candidate rewords has another
    # fingerprint (rules without a key are told apart by their message): one
    # left on each side for a rule, resource and file is that finding, changed.
    # More than one on a side can't be paired: they appear and disappear.
    reworded = _reworded(gone, came)
    pairs += reworded
    paired_old = {id(a) for a, _ in reworded}
    paired_new = {id(b) for _, b in reworded}
    changed = [
        (a, b) for a, b in pairs if (a.message, a.rule.severity) != (b.message, b.rule.severity)
    ]
    return FindingsDiff(
        candidate=candidate,
        baseline=baseline,
        appeared=sorted((f for f in came if id(f) not in paired_new), key=Finding.sort_key),
        disappeared=sorted((f for f in gone if id(f) not in paired_old), key=Finding.sort_key),
        changed=sorted(changed, key=lambda pair: pair[1].sort_key()),
        unchanged=len(pairs) - len(changed),
    )


def _reworded(gone: list[Finding], came: list[Finding]) -> list[tuple[Finding, Finding]]:
    def place(finding: Finding) -> tuple[str, str, str, str]:
        root = finding.root_module_path if finding.in_called_module else ""
        return (finding.rule.id, finding.resource, finding.root_path or finding.file, root)

    def alone(findings: list[Finding]) -> dict[tuple[str, str, str, str], Finding]:
        groups: dict[tuple[str, str, str, str], list[Finding]] = {}
        for finding in findings:
            groups.setdefault(place(finding), []).append(finding)
        return {where: group[0] for where, group in groups.items() if len(group) == 1}

    before, after = alone(gone), alone(came)
    return [(before[where], after[where]) for where in before.keys() & after.keys()]


def verdict(diff: FindingsDiff) -> str:
    count = len(diff.failing)
    suppressed = len(diff.appeared) - count
    if count:
        also = f" (and {suppressed} suppressed inline)" if suppressed else ""
        return f"FAIL: {_findings(count, 'appear')} with the candidate{also}"
    if suppressed:
        return f"PASS: only findings suppressed inline appear with the candidate ({suppressed})"
    return "PASS: no finding appears with the candidate"


def _findings(count: int, verb: str) -> str:
    """``1 finding appears``, ``2 findings appear``."""
    return f"{count} finding {verb}s" if count == 1 else f"{count} findings {verb}"


def _resource(finding: Finding) -> str:
    """The resource, with its root module when its file is a called module's."""
    if finding.in_called_module:
        return f"{finding.resource} in root module {finding.root_module}"
    return finding.resource


def _row(finding: Finding) -> dict[str, Any]:
    return {
        "rule_id": finding.rule.id,
        "severity": finding.rule.severity,
        "resource": finding.resource,
        "root_module": finding.root_module,
        "file": finding.file,
        "line": finding.line,
        "message": finding.message,
        "suppressed": finding.suppressed,
        "fingerprint": finding.fingerprint,
    }


def render_json(diff: FindingsDiff) -> str:
    document = {
        "report": REPORT_TYPE,
        "version": VERSION,
        "candidate": diff.candidate,
        "baseline": diff.baseline,
        "appeared": [_row(f) for f in diff.appeared],
        "disappeared": [_row(f) for f in diff.disappeared],
        "changed": [{"before": _row(a), "after": _row(b)} for a, b in diff.changed],
        "unchanged": diff.unchanged,
        "exit_code": diff.exit_code(),
    }
    return json.dumps(document, indent=2) + "\n"


def render_text(diff: FindingsDiff) -> str:
    lines = [f"Policy diff: candidate {diff.candidate} against {diff.baseline}"]
    for title, findings, mark in (
        ("appear", diff.appeared, "+"),
        ("disappear", diff.disappeared, "-"),
    ):
        lines.append(f"{_findings(len(findings), title)} with the candidate")
        for f in findings:
            lines.append(f"  {mark} {f.file}:{f.line} {f.rule.id} [{f.rule.severity}] "
                         f"{_resource(f)}: {f.message}")  # fmt: skip
    if diff.changed:
        lines.append(_findings(len(diff.changed), "change"))
        for a, b in diff.changed:
            was, now = f"[{a.rule.severity}] {a.message}", f"[{b.rule.severity}] {b.message}"
            lines.append(f"  ~ {b.file}:{b.line} {b.rule.id} {_resource(b)}: {was} -> {now}")
    lines.append(f"{diff.unchanged} finding{'' if diff.unchanged == 1 else 's'} unchanged")
    lines.append(verdict(diff))
    return "\n".join(lines) + "\n"


def render_markdown(diff: FindingsDiff) -> str:
    """For a pull-request comment: the verdict, the counts, then one table row
    per finding that appears, disappears or changes."""
    mark = "❌" if diff.failing else "✅"
    lines = [
        f"### {mark} Policy diff: {verdict(diff)}",
        "",
        f"Candidate `{code(diff.candidate)}` against `{code(diff.baseline)}`: "
        f"**{len(diff.appeared)}** appear, {len(diff.disappeared)} disappear, "
        f"{len(diff.changed)} change, {diff.unchanged} unchanged.",
    ]
    rows = [("appears", f) for f in diff.appeared] + [("disappears", f) for f in diff.disappeared]
    if rows or diff.changed:
        lines += ["", "| | rule | severity | resource | where | message |", "|---" * 6 + "|"]
    for change, f in rows:
        lines.append(
            f"| {change} | {cell(f.rule.id)} | {cell(f.rule.severity)} | `{code(_resource(f))}` "
            f"| `{code(f.file)}:{f.line}` | {cell(f.message)}{_suppressed(f)} |"
        )
    for a, b in diff.changed:
        lines.append(
            f"| changes | {cell(b.rule.id)} | {cell(a.rule.severity)} → {cell(b.rule.severity)} "
            f"| `{code(_resource(b))}` | `{code(b.file)}:{b.line}` "
            f"| {cell(a.message)} → {cell(b.message)}{_suppressed(b)} |"
        )
    return "\n".join(lines) + "\n"


def _suppressed(finding: Finding) -> str:
    return f" (suppressed: {cell(finding.suppressed)})" if finding.suppressed else ""


FORMATS: dict[str, Callable[[FindingsDiff], str]] = {
    "text": render_text,
    "json": render_json,
    "markdown": render_markdown,
}
