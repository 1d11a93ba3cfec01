"""The JSON report: every finding with its rule, plus the summary and errors.
Version 1 of this shape is what tests and users' scripts rely on."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from iac_scanner.findings import ScanResult, not_judged_by_rule, not_judged_count

VERSION = 1


def _not_judged_resources(result: ScanResult) -> list[dict[str, Any]]:
    entries: dict[tuple[str, tuple[str, str]], dict[str, Any]] = {}
    for item in sorted(result.not_judged, key=lambda u: (u.rule_id, u.place, u.why)):
        entry = entries.setdefault(
            (item.rule_id, item.place),
            {
                "rule_id": item.rule_id,
                "resource": item.resource,
                "file": item.file,
                "line": item.line,
                "path": item.root_path,
                "reasons": [],
                "suppressed": item.suppressed,
                "baselined": item.baselined,
                "fingerprint": item.fingerprint,
            },
        )
        if item.why not in entry["reasons"]:
            entry["reasons"].append(item.why)
    return list(entries.values())


def render(result: ScanResult, color: bool = False) -> str:
    findings: list[dict[str, Any]] = [
        {
            "rule_id": f.rule.id,
            "severity": f.rule.severity,
            "title": f.rule.title,
            "source": f.rule.source,
            "resource": f.resource,
            "root_module": f.root_module,
            "message": f.message,
            "file": f.file,
            "line": f.line,
            "end_line": f.end_line,
            "suppressed": f.suppressed,
            "baselined": f.baselined,
            "fingerprint": f.fingerprint,
            "path": f.root_path,
        }
        for f in result.findings
    ]
    document = {
        "version": VERSION,
        "summary": {
            "files": result.files,
            "resources": result.resources,
            "findings": sum(1 for f in result.findings if f.counts),
            "suppressed": sum(1 for f in result.findings if f.suppressed is not None),
            "baselined": sum(1 for f in result.findings if f.suppressed is None and f.baselined),
            "failing": len(result.failing()),
            "fail_on": result.fail_on,
            "exit_code": result.exit_code(),
            "not_judged": not_judged_count(result.not_judged),
            "fail_on_not_judged": result.fail_on_not_judged,
            "failing_not_judged": len(result.failing_not_judged()),
        },
        # Per rule: how many resources it could not judge, and why.
        "not_judged": not_judged_by_rule(result.not_judged),
        # Each resource a rule could not judge, and what (if anything) accepts it.
        "not_judged_resources": _not_judged_resources(result),
        "findings": findings,
        "rules": [asdict(rule) for rule in sorted(result.rules.values(), key=lambda r: r.id)],
        "errors": [
            {"file": p.file or None, "line": p.line, "column": p.column, "message": p.message}
            for p in result.problems
        ],
        "notes": result.notes,
    }
    return json.dumps(document, indent=2) + "\n"
