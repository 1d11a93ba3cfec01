"""Inline suppressions: `# portcullis:ignore=ID[,ID...] reason` in or just above a
resource block. A suppression must say why; one without a reason is reported
and suppresses nothing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from iac_scanner.findings import Finding

_IGNORE = re.compile(r"^(?P<ids>[A-Za-z0-9_.*-]+(?:\s*,\s*[A-Za-z0-9_.*-]+)*)\s*(?P<reason>.*)$")


@dataclass(frozen=True)
class Suppression:
    rule_ids: frozenset[str]
    reason: str
    file: str
    line: int


def parse_comments(comments: list[list[Any]], file: str, notes: list[str]) -> list[Suppression]:
    """The portcullis:ignore comments of one resource; reasonless ones go to notes."""
    found = []
    for line, kind, text, _ in comments:
        if kind != "portcullis:ignore":
            continue
        match = _IGNORE.match(text.strip())
        if match is None:
            notes.append(
                f"{file}:{line}: portcullis:ignore needs a rule id, e.g. "
                "`# portcullis:ignore=PC-TF-006 public website bucket`"
            )
            continue
        ids = frozenset(i.strip() for i in match.group("ids").split(","))
        reason = match.group("reason").strip().lstrip(":-").strip()
        if not reason:
            notes.append(
                f"{file}:{line}: portcullis:ignore={','.join(sorted(ids))} has no reason, "
                "so it suppresses nothing; say why after the id"
            )
            continue
        found.append(Suppression(ids, reason, file, line))
    return found


def apply(finding: Finding, suppressions: list[Suppression]) -> None:
    for suppression in suppressions:
        if finding.rule.id in suppression.rule_ids:
            finding.suppressed = suppression.reason
            return
