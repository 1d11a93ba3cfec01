"""`portcullis policy diff`: the Terraform findings a candidate policy adds and removes.

Scans the same paths twice through the scanner's public entry point
(:func:`iac_scanner.scan.scan`), once per policy, and compares findings by
their fingerprint (rule id, resource, file, and the root module for one in a
called module: what baselines and code scanning track). Exit codes: 0 no
finding appears (findings that disappear are reported, not failed), 1 findings
appear, 2 errors (a policy that doesn't load, a file that doesn't parse).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from iac_scanner.scan import ScanError, ScanOptions, scan
from portcullis import output_options
from portcullis.paths import shipped_policy_dir
from portcullis.policy_diff import FORMATS, compare, verdict

USAGE_ERROR = 2


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
        help="the current policy (default: the policy set Portcullis ships)",
    )  # fmt: skip
    parser.add_argument("--var-file", action="append", default=[], metavar="FILE")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
    output_options.add_arguments(parser, FORMATS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        outputs = output_options.requested(args)
    except output_options.OutputError as error:
        print(f"portcullis policy diff: {error}", file=sys.stderr)
        return USAGE_ERROR
    cli_vars = []
    for text in args.var:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            print(
                f"portcullis policy diff: --var: expected NAME=VALUE, got {text!r}", file=sys.stderr
            )
            return USAGE_ERROR
        cli_vars.append((name.strip(), value))
    baseline = args.baseline_policy or shipped_policy_dir()
    if _same_place(args.policy, baseline):
        # Nothing could ever appear: a PR that edits policies/ in place, diffed
        # against ./policies, passed whatever it changed.
        print(
            f"portcullis policy diff: the candidate {args.policy} is the baseline "
            f"{baseline}: give --baseline-policy the current policy (e.g. a checkout "
            "of the target branch's policies/)",
            file=sys.stderr,
        )
        return USAGE_ERROR
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
    diff = compare(
        results["baseline"], results["candidate"], candidate=args.policy, baseline=baseline
    )
    delivered = output_options.deliver(
        outputs,
        lambda form, _: FORMATS[form](diff),
        lambda: verdict(diff),
        "portcullis policy diff",
    )
    return diff.exit_code() if delivered else USAGE_ERROR


def _same_place(candidate: str, baseline: str) -> bool:
    """Whether the two policies are one directory or file (an OPA URL never is)."""
    try:
        return Path(candidate).resolve() == Path(baseline).resolve() and Path(candidate).exists()
    except OSError:
        return False
