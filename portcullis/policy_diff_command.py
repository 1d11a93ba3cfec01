"""`portcullis policy diff`: the Terraform findings a candidate policy adds and removes.

Scans the same paths twice through the scanner's public entry point
(:func:`iac_scanner.scan.scan`), once per policy, and compares findings by
their fingerprint (rule id, resource, file: what baselines and code scanning
track). Exit codes: 0 no finding appears (findings that disappear are
reported, not failed), 1 findings appear, 2 errors (a policy that doesn't load,
a file that doesn't parse).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

from iac_scanner.findings import Finding
from iac_scanner.scan import ScanError, ScanOptions, scan

USAGE_ERROR = 2


@dataclass
class FindingsDiff:
    appeared: list[Finding]
    disappeared: list[Finding]
    changed: list[tuple[Finding, Finding]]  # same fingerprint, other message or severity
    unchanged: int

    def exit_code(self) -> int:
        return 1 if self.appeared else 0


def register(actions: Any) -> None:
    """Add `diff` to the `policy` subcommands."""
    parser = actions.add_parser(
        "diff",
        help="scan Terraform with a candidate and the current policy; report findings that "
        "appear and disappear",
        description="Exit 0: no finding appears with the candidate; 1: findings appear; 2: errors.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="as for `portcullis scan`")
    parser.add_argument("--policy", required=True, help="the candidate policy directory or bundle")
    parser.add_argument(
        "--baseline-policy", metavar="POLICY",
        help="the current policy (default: the shipped one)",
    )  # fmt: skip
    parser.add_argument("--var-file", action="append", default=[], metavar="FILE")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cli_vars = []
    for text in args.var:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            print(
                f"portcullis policy diff: --var: expected NAME=VALUE, got {text!r}", file=sys.stderr
            )
            return USAGE_ERROR
        cli_vars.append((name.strip(), value))
    baseline = args.baseline_policy or args.default_policy()
    results = {}
    for label, policy in (("candidate", args.policy), ("baseline", baseline)):
        options = ScanOptions(paths=args.paths, policy=policy, var_files=args.var_file,
                              cli_vars=cli_vars)  # fmt: skip
        try:
            result = scan(options)
        except ScanError as error:
            for line in str(error).splitlines():
                print(f"portcullis policy diff: {label} {policy}: {line}", file=sys.stderr)
            return USAGE_ERROR
        if result.problems:
            for problem in result.problems:
                print(f"error: {problem}", file=sys.stderr)
            return USAGE_ERROR
        results[label] = result.findings
    diff = compare(results["baseline"], results["candidate"])
    render = _json if args.output == "json" else _text
    sys.stdout.write(render(diff, args.policy, baseline))
    return diff.exit_code()


def compare(before: list[Finding], after: list[Finding]) -> FindingsDiff:
    old = {finding.fingerprint: finding for finding in before}
    new = {finding.fingerprint: finding for finding in after}
    changed = [
        (old[key], new[key])
        for key in old.keys() & new.keys()
        if (old[key].message, old[key].rule.severity) != (new[key].message, new[key].rule.severity)
    ]
    return FindingsDiff(
        appeared=sorted((new[k] for k in new.keys() - old.keys()), key=Finding.sort_key),
        disappeared=sorted((old[k] for k in old.keys() - new.keys()), key=Finding.sort_key),
        changed=sorted(changed, key=lambda pair: pair[1].sort_key()),
        unchanged=len(old.keys() & new.keys()) - len(changed),
    )


def _row(finding: Finding) -> dict[str, Any]:
    return {
        "rule_id": finding.rule.id,
        "severity": finding.rule.severity,
        "resource": finding.resource,
        "file": finding.file,
        "line": finding.line,
        "message": finding.message,
        "suppressed": finding.suppressed,
        "fingerprint": finding.fingerprint,
    }


def _json(diff: FindingsDiff, candidate: str, baseline: str) -> str:
    document = {
        "report": "portcullis.policy-diff",
        "version": 1,
        "candidate": candidate,
        "baseline": baseline,
        "appeared": [_row(f) for f in diff.appeared],
        "disappeared": [_row(f) for f in diff.disappeared],
        "changed": [{"before": _row(a), "after": _row(b)} for a, b in diff.changed],
        "unchanged": diff.unchanged,
    }
    return json.dumps(document, indent=2) + "\n"


def _text(diff: FindingsDiff, candidate: str, baseline: str) -> str:
    lines = [f"Policy diff: candidate {candidate} against {baseline}"]
    for title, findings, mark in (
        ("appear", diff.appeared, "+"),
        ("disappear", diff.disappeared, "-"),
    ):
        lines.append(f"{len(findings)} findings {title} with the candidate")
        for f in findings:
            lines.append(f"  {mark} {f.file}:{f.line} {f.rule.id} [{f.rule.severity}] "
                         f"{f.resource}: {f.message}")  # fmt: skip
    if diff.changed:
        lines.append(f"{len(diff.changed)} findings change")
        for a, b in diff.changed:
            was, now = f"[{a.rule.severity}] {a.message}", f"[{b.rule.severity}] {b.message}"
            lines.append(f"  ~ {b.file}:{b.line} {b.rule.id} {b.resource}: {was} -> {now}")
    lines.append(f"{diff.unchanged} findings unchanged")
    return "\n".join(lines) + "\n"
