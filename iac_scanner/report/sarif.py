"""SARIF 2.1.0 for GitHub code scanning (and any SARIF viewer): rules with
help, repository-relative URIs, and partialFingerprints so an alert follows
its finding across commits."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from iac_scanner.findings import (
    Finding,
    Problem,
    Rule,
    ScanResult,
    Unjudged,
    not_judged_by_rule,
)
from iac_scanner.report.inert import sarif_message

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
# v2: rule, resource, root-relative file and the finding's own identity; for a
# finding in a called module, its root module too (a root module's own
# findings kept the value they had before, so their alerts stay open).
FINGERPRINT_KEY = "portcullisFingerprint/v2"
_LEVELS = {"critical": "error", "high": "error", "medium": "warning", "low": "note"}
# GitHub ranks code scanning alerts by this property (CVSS-like, 0-10).
_SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0"}


def _version() -> str:
    from portcullis import __version__

    return __version__


def _root(result: ScanResult) -> Path:
    return Path(result.source_root) if result.source_root else Path(os.getcwd()).resolve()


class _Bases:
    """The run's URI base ids. Files under the source root are relative to
    %SRCROOT%. When some lie outside it (a module called as `../modules/x`),
    a second base, PROJECTROOT, is the deepest directory holding the root and
    all of them: those files are relative to it and %SRCROOT% is a directory
    under it, as in GitHub's own example. A result never carries an absolute
    path of the scanning machine; nor `../x`, which is no repository path
    (and SARIF keeps `..` out of base ids)."""

    def __init__(self, root: Path, files: list[str]) -> None:
        self.root = root
        outside = [p for p in {Path(f).resolve() for f in files} if not p.is_relative_to(root)]
        self.project = Path(os.path.commonpath([root, *outside])) if outside else None

    def artifact(self, file: str) -> dict[str, Any]:
        path = Path(file).resolve()
        if self.project is None or path.is_relative_to(self.root):
            return {"uri": quote(path.relative_to(self.root).as_posix()), "uriBaseId": "%SRCROOT%"}
        return {"uri": quote(path.relative_to(self.project).as_posix()), "uriBaseId": "PROJECTROOT"}

    def original(self) -> dict[str, Any]:
        if self.project is None:
            return {"%SRCROOT%": {"uri": _directory_uri(self.root)}}
        return {
            "PROJECTROOT": {
                "uri": _directory_uri(self.project),
                "description": {
                    "text": "The directory holding the source root and modules outside it."
                },
            },
            "%SRCROOT%": {
                "uri": quote(self.root.relative_to(self.project).as_posix()) + "/",
                "uriBaseId": "PROJECTROOT",
            },
        }


def _directory_uri(directory: Path) -> str:
    uri = directory.as_uri()
    return uri if uri.endswith("/") else uri + "/"


def _rule(rule: Rule) -> dict[str, Any]:
    help_text = rule.remediation or rule.title
    entry: dict[str, Any] = {
        "id": rule.id,
        "name": rule.id.replace("-", "_"),
        "shortDescription": {"text": rule.title},
        "fullDescription": {"text": rule.title},
        "help": {"text": help_text, "markdown": f"**{rule.title}**\n\n{help_text}"},
        "defaultConfiguration": {"level": _LEVELS[rule.severity]},
        "properties": {
            "tags": ["security", "terraform", rule.source],
            "security-severity": _SECURITY_SEVERITY[rule.severity],
            "precision": "high",
            "problem.severity": "error" if _LEVELS[rule.severity] == "error" else "warning",
        },
    }
    if rule.help_uri.startswith(("http://", "https://")):
        entry["helpUri"] = rule.help_uri
    return entry


def _result(finding: Finding, index: int, with_baseline: bool, bases: _Bases) -> dict[str, Any]:
    region: dict[str, Any] = {"startLine": max(1, finding.line)}
    if finding.end_line and finding.end_line >= finding.line:
        region["endLine"] = finding.end_line
    message = finding.message
    if finding.in_called_module:
        # Code scanning shows the message: the file alone doesn't say which root's.
        message += f" (in root module {finding.root_module_path})"
    result: dict[str, Any] = {
        "ruleId": finding.rule.id,
        "ruleIndex": index,
        "level": _LEVELS[finding.rule.severity],
        # Code scanning renders the message: a pull request's value in it must
        # not become a link (or a control a viewer acts on).
        "message": {"text": sarif_message(message)},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": bases.artifact(finding.file),
                    "region": region,
                },
                "logicalLocations": [{"fullyQualifiedName": finding.resource, "kind": "resource"}],
            }
        ],
        "partialFingerprints": {FINGERPRINT_KEY: finding.fingerprint},
    }
    if finding.root_module_path:
        result["properties"] = {"rootModule": finding.root_module_path}
    if finding.suppressed is not None:
        result["suppressions"] = [{"kind": "inSource", "justification": finding.suppressed}]
    if with_baseline:
        result["baselineState"] = "unchanged" if finding.baselined else "new"
    return result


def _not_judged_results(
    result: ScanResult, index: dict[str, int], with_baseline: bool, bases: _Bases
) -> list[dict[str, Any]]:
    """With --fail-on-not-judged, a result (level error: it fails the scan) per
    resource a rule could not judge, so code scanning shows why at its line."""
    if not result.fail_on_not_judged:
        return []
    by_place: dict[tuple[str, tuple[str, str]], list[Unjudged]] = {}
    for item in result.not_judged:
        by_place.setdefault((item.rule_id, item.place), []).append(item)
    results = []
    for (rule_id, _), items in sorted(by_place.items()):
        first = items[0]
        reasons = "; ".join(sorted({item.why for item in items}))
        entry: dict[str, Any] = {
            "ruleId": rule_id,
            "ruleIndex": index[rule_id],
            "level": "error",
            "message": {
                "text": sarif_message(
                    f"{first.resource} not judged: {reasons} (--fail-on-not-judged)"
                )
            },
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": bases.artifact(first.file),
                        "region": {"startLine": max(1, first.line)},
                    },
                    "logicalLocations": [
                        {"fullyQualifiedName": first.resource, "kind": "resource"}
                    ],
                }
            ],
            "partialFingerprints": {FINGERPRINT_KEY: first.fingerprint},
            "properties": {"notJudged": True},
        }
        if first.suppressed is not None:
            entry["suppressions"] = [{"kind": "inSource", "justification": first.suppressed}]
        if with_baseline:
            entry["baselineState"] = "unchanged" if first.baselined else "new"
        results.append(entry)
    return results


def _notification(problem: Problem, bases: _Bases) -> dict[str, Any]:
    """An error, at its file:line:col; one about no file (checkov missing) has no location."""
    notification: dict[str, Any] = {
        "level": "error",
        "message": {"text": sarif_message(str(problem))},
    }
    if problem.file:
        region: dict[str, Any] = {"startLine": max(1, problem.line or 1)}
        if problem.line is not None and problem.column is not None:
            region["startColumn"] = max(1, problem.column)
        location = {"artifactLocation": bases.artifact(problem.file), "region": region}
        notification["locations"] = [{"physicalLocation": location}]
    return notification


def render(result: ScanResult, color: bool = False) -> str:
    rules = sorted(result.rules.values(), key=lambda r: r.id)
    index = {rule.id: i for i, rule in enumerate(rules)}
    with_baseline = any(f.baselined for f in result.findings) or any(
        u.baselined for u in result.not_judged
    )
    files = [f.file for f in result.findings] + [p.file for p in result.problems if p.file]
    if result.fail_on_not_judged:
        files += [u.file for u in result.not_judged]
    bases = _Bases(_root(result), files)
    notifications = [_notification(problem, bases) for problem in result.problems]
    # What was left out or changed without being an error (a remote module not
    # downloaded, a baseline's stale entries): code scanning shows a run's
    # notifications on its tool status page, where a reader of SARIF alone looks.
    notifications += [
        {"level": "note", "message": {"text": sarif_message(note)}} for note in result.notes
    ]
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "portcullis",
                "version": _version(),
                "semanticVersion": _version(),
                "rules": [_rule(rule) for rule in rules],
            }
        },
        "originalUriBaseIds": bases.original(),
        "invocations": [
            {
                "executionSuccessful": not result.problems,
                "exitCode": result.exit_code(),
                "toolExecutionNotifications": notifications,
            }
        ],
        "results": [_result(f, index[f.rule.id], with_baseline, bases) for f in result.findings]
        + _not_judged_results(result, index, with_baseline, bases),
        "columnKind": "unicodeCodePoints",
        # Per rule: resources it applies to but could not judge, and why.
        "properties": {"notJudged": not_judged_by_rule(result.not_judged)},
    }
    document = {"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(document, indent=2) + "\n"
