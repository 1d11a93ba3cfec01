"""The terminal report: findings grouped by file, coloured on a TTY, and a
one-line summary."""

from __future__ import annotations

from collections import Counter
from itertools import groupby

from iac_scanner.findings import (
    SEVERITIES,
    Finding,
    ScanResult,
    not_judged_by_rule,
    not_judged_count,
    severity_rank,
)
from iac_scanner.report.inert import line as inert

_COLOURS = {"critical": "1;35", "high": "1;31", "medium": "33", "low": "36"}


def _paint(text: str, code: str, color: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if color else text


def _line(finding: Finding, color: bool) -> str:
    severity = finding.rule.severity
    label = _paint(f"{severity.upper():<8}", _COLOURS.get(severity, "0"), color)
    # A pull request writes the message (its values, its for_each keys): inert.
    text = f"  {finding.line:>5}  {label} {finding.rule.id:<11} {inert(finding.message)}"
    if finding.in_called_module:
        # The file is a module's: say which root module's instance this is.
        text += inert(f"  ({finding.resource} in root module {finding.root_module})")
    if finding.suppressed is not None:
        text += _paint(inert(f"  [suppressed: {finding.suppressed}]"), "2", color)
    elif finding.baselined:
        text += _paint("  [in baseline]", "2", color)
    return text


def render(result: ScanResult, color: bool = False) -> str:
    lines: list[str] = []
    for file, group in groupby(result.findings, key=lambda f: f.file):
        lines.append(_paint(inert(file), "1", color))
        lines.extend(_line(f, color) for f in group)
        lines.append("")
    for note in result.notes:
        lines.append(_paint(inert(f"note: {note}"), "2", color))
    if result.notes:
        lines.append("")
    judged = not_judged_lines(result)
    lines.extend(_paint(line, "33", color) for line in judged)
    if judged:
        lines.append("")
    lines.append(summary(result, color))
    return "\n".join(lines) + "\n"


def not_judged_lines(result: ScanResult) -> list[str]:
    """ "PC-TF-002: 3 resources not judged: `storage_encrypted` is unknown (...)";
    with --fail-on-not-judged, each resource under its rule, since they fail the scan."""
    lines = []
    for rule, entry in not_judged_by_rule(result.not_judged).items():
        count = entry["resources"]
        reasons = sorted(entry["reasons"].items(), key=lambda item: (-item[1], item[0]))
        shown = "; ".join(
            reason if n == 1 or len(reasons) == 1 else f"{reason} (x{n})"
            for reason, n in reasons[:3]
        )
        left = len(reasons) - 3
        more = f"; {left} other reason{'s' if left != 1 else ''}" if left > 0 else ""
        noun = "resource" if count == 1 else "resources"
        lines.append(inert(f"not judged: {rule}: {count} {noun} not judged: {shown}{more}"))
        if result.fail_on_not_judged:
            lines.extend(_not_judged_resources(result, rule))
    return lines


def _not_judged_resources(result: ScanResult, rule: str) -> list[str]:
    """ "  main.tf:9  aws_db_instance.pos  [suppressed: ...]", one per resource."""
    marks: dict[tuple[str, str, int], str] = {}
    for item in result.not_judged:
        if item.rule_id != rule:
            continue
        at = (item.file, item.resource, item.line)
        if item.counts:
            marks[at] = ""
        elif at not in marks:
            marks[at] = (
                f"  [suppressed: {item.suppressed}]"
                if item.suppressed is not None
                else "  [in baseline]"
            )
    return [
        inert(f"  {file}:{line}  {resource}{mark}")
        for (file, resource, line), mark in sorted(marks.items())
    ]


def summary(result: ScanResult, color: bool = False) -> str:
    active = [f for f in result.findings if f.counts]
    counts = Counter(f.rule.severity for f in active)
    by_severity = ", ".join(
        f"{counts[s]} {s}" for s in sorted(SEVERITIES, key=severity_rank, reverse=True) if counts[s]
    )
    text = f"{len(active)} finding{'s' if len(active) != 1 else ''}"
    if by_severity:
        text += f" ({by_severity})"
    text += f" in {result.files} file{'s' if result.files != 1 else ''}, "
    text += f"{result.resources} resource{'s' if result.resources != 1 else ''}"
    suppressed = sum(1 for f in result.findings if f.suppressed is not None)
    baselined = sum(1 for f in result.findings if f.suppressed is None and f.baselined)
    if suppressed:
        text += f"; {suppressed} suppressed"
    if baselined:
        text += f"; {baselined} in baseline"
    unjudged = not_judged_count(result.not_judged)
    if unjudged:
        text += f"; {unjudged} not judged"
    failing = len(result.failing())
    if result.problems:
        text += f"; {len(result.problems)} error{'s' if len(result.problems) != 1 else ''}"
        return _paint(text, "1;31", color)
    why = [f"{failing} at or above {result.fail_on}"] if failing else []
    unjudged_failing = len(result.failing_not_judged())
    if unjudged_failing:
        why.append(f"{unjudged_failing} not judged with --fail-on-not-judged")
    if why:
        text += f"; {', '.join(why)}: FAIL"
        return _paint(text, "1;31", color)
    return _paint(text + "; PASS", "1;32", color)
