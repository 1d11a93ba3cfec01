"""Inline suppressions: `# portcullis:ignore=ID[,ID...] reason` in or just above a
resource block. A suppression must say why; one without a reason is reported
and suppresses nothing."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from iac_scanner.findings import Finding

_IGNORE = re.compile(r"^(?P<ids>[A-Za-z0-9_.*-]+(?:\s*,\s*[A-Za-z0-9_.*-]+)*)\s*(?P<reason>.*)$")


# Letters that draw nothing (Hangul fillers, the braille blank): a "reason" of
# these, or of spaces, zero-width and combining marks, says nothing to a reviewer.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _says_something(reason: str) -> bool:
    """True when a reviewer can read the reason: it holds a visible letter or digit."""
    return any(unicodedata.category(c)[0] in "LN" and c not in _BLANK_LETTERS for c in reason)


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
        if not _says_something(reason):
            notes.append(
                f"{file}:{line}: portcullis:ignore={','.join(sorted(ids))} has no reason, "
                "so it suppresses nothing; say why after the id"
            )
            continue
        found.append(Suppression(ids, reason, file, line))
    return found


# checkov's own syntax: `checkov:skip=CKV_AWS_18:reason` (the text after the `=`).
_CHECKOV_SKIP = re.compile(r"^(?P<id>[A-Za-z0-9_]+)\s*(?::(?P<reason>.*))?$")


def parse_checkov_skips(
    comments: list[list[Any]], file: str, notes: list[str]
) -> list[Suppression]:
    """The checkov:skip comments of one resource, as suppressions of their check;
    reasonless ones go to notes. checkov itself takes `checkov:skip=` anywhere in
    a resource's lines (a string's or a heredoc's too) and without a reason: the
    scan honours its skips only where one of these real comments says why."""
    found = []
    for line, kind, text, _ in comments:
        if kind != "checkov:skip":
            continue
        match = _CHECKOV_SKIP.match(text.strip())
        if match is None:
            continue
        reason = (match.group("reason") or "").strip()
        if not _says_something(reason):
            notes.append(
                f"{file}:{line}: checkov:skip={match.group('id')} has no reason, so it "
                "suppresses nothing; say why after the id (checkov:skip=ID:reason)"
            )
            continue
        found.append(Suppression(frozenset({match.group("id")}), reason, file, line))
    return found


def reason_for(rule_id: str, suppressions: list[Suppression]) -> str | None:
    """The reason of the first suppression of rule_id, or None."""
    for suppression in suppressions:
        if rule_id in suppression.rule_ids:
            return suppression.reason
    return None


def apply(finding: Finding, suppressions: list[Suppression]) -> None:
    reason = reason_for(finding.rule.id, suppressions)
    if reason is not None:
        finding.suppressed = reason
