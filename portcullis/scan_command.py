"""`portcullis scan`: the Terraform scanner's command line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from iac_scanner.cache import DEFAULT_DIR
from iac_scanner.findings import SEVERITIES, Problem, ScanResult, not_judged_count
from iac_scanner.report import FORMATS, inert
from iac_scanner.scan import ScanError, ScanOptions, scan, source_root
from portcullis import output_options
from portcullis.wording import counted


def _var(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value


def _jobs(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if jobs < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return jobs


def add_parser(commands: Any) -> None:
    """Register `scan` on the top-level subcommands."""
    scan_parser = commands.add_parser(
        "scan",
        help="scan Terraform (directories, .tf files, plan JSON) with the policy set",
        description=(
            "Scan Terraform with the policy set's portcullis.terraform rules (and checkov). "
            "Exit 0: nothing at or above --fail-on; 1: findings at or above it (or, with "
            "--fail-on-not-judged, a resource a rule could not judge); "
            "2: usage, parse or policy errors."
        ),
    )
    scan_parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="directory, .tf file or `terraform show -json` file",
    )
    scan_parser.add_argument(
        "--policy",
        help="policy directory or bundle (default: ./policies when the current directory "
        "has one, else the shipped set)",
    )
    scan_parser.add_argument(
        "--var-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a .tfvars file (repeatable)",
    )
    scan_parser.add_argument(
        "--var",
        action="append",
        default=[],
        type=_var,
        metavar="NAME=VALUE",
        help="a root module variable (repeatable)",
    )
    scan_parser.add_argument(
        "--checkov",
        nargs="?",
        const="checkov",
        metavar="PATH",
        help="also run checkov (default executable: checkov on PATH)",
    )
    output_options.add_arguments(scan_parser, FORMATS)
    scan_parser.add_argument(
        "--fail-on",
        choices=SEVERITIES,
        default="low",
        help="lowest severity that fails the scan (default: low, i.e. any finding)",
    )
    scan_parser.add_argument(
        "--fail-on-not-judged",
        action="store_true",
        help="also fail (exit 1) when a rule could not judge a resource (a value it reads "
        "is unknown), unless a suppression or the baseline accepts it",
    )
    scan_parser.add_argument(
        "--baseline", metavar="FILE", help="accepted findings: don't fail on them"
    )
    scan_parser.add_argument(
        "--create-baseline", metavar="FILE", help="write the current findings as a baseline, exit 0"
    )
    scan_parser.add_argument(
        "--sarif-root",
        metavar="DIR",
        help="directory report paths (SARIF URIs, fingerprints) are relative to "
        "(default: the git top-level of the first PATH, else that PATH)",
    )
    scan_parser.add_argument(
        "--no-cache", action="store_true", help="don't read or write the parse cache"
    )
    scan_parser.add_argument(
        "--cache-dir", default=DEFAULT_DIR, help=f"parse cache directory (default: {DEFAULT_DIR})"
    )
    scan_parser.add_argument(
        "--jobs",
        type=_jobs,
        default=os.cpu_count() or 1,
        help="parallel parse processes (default: cores)",
    )
    scan_parser.set_defaults(run=run)


def _color(stream: Any) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)()) or bool(os.environ.get("FORCE_COLOR"))


def _refused(
    outputs: list[output_options.Output], options: ScanOptions, problems: list[Problem]
) -> int:
    """The scan couldn't start (a policy that doesn't load, a bad baseline,
    checkov missing): the errors on stderr, and each --output-file a report
    carrying them (SARIF executionSuccessful false), so a CI step that uploads
    it `if: always()` shows the error instead of failing on a missing file.
    stdout gets no report: stderr has said it. Exit 2."""
    for problem in problems:
        for line in str(problem).split("\n"):
            print(f"portcullis scan: {inert.line(line)}", file=sys.stderr)
    result = ScanResult(
        problems=problems,
        fail_on=options.fail_on,
        fail_on_not_judged=options.fail_on_not_judged,
        source_root=str(source_root(options)),
    )
    files = [output for output in outputs if output.file is not None]
    try:
        output_options.write(files, lambda form, _: FORMATS[form](result, False))
    except output_options.OutputError as error:
        print(f"portcullis scan: {error}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    try:
        outputs = output_options.requested(args)
    except output_options.OutputError as error:
        print(f"portcullis scan: {error}", file=sys.stderr)
        return 2
    options = ScanOptions(
        paths=args.paths,
        policy=args.policy or args.default_policy(),
        var_files=args.var_file,
        cli_vars=args.var,
        checkov=args.checkov,
        fail_on=args.fail_on,
        fail_on_not_judged=args.fail_on_not_judged,
        baseline=args.baseline,
        cache_dir=None if args.no_cache else Path(args.cache_dir),
        jobs=args.jobs,
        progress=sys.stderr.isatty(),
        source_root=args.sarif_root,
    )
    if args.sarif_root is not None and not Path(args.sarif_root).is_dir():
        problem = Problem("", f"--sarif-root {args.sarif_root}: not a directory")
        return _refused(outputs, dataclasses.replace(options, source_root=None), [problem])
    try:
        result = scan(options)
    except ScanError as error:
        return _refused(outputs, options, error.problems)
    for problem in result.problems:
        # A parse error quotes the pull request's text: nothing a terminal acts on.
        text = "\n".join(inert.line(line) for line in str(problem).split("\n"))
        print(f"error: {text}", file=sys.stderr)
    if args.create_baseline:
        from iac_scanner import baseline

        # With --fail-on-not-judged the baseline also accepts what wasn't judged,
        # so the same command with --baseline passes until something new appears.
        unjudged = [u for u in result.not_judged if u.suppressed is None]
        if not args.fail_on_not_judged:
            unjudged = []
        try:
            output_options.write_file(
                Path(args.create_baseline), baseline.render(result.findings, unjudged)
            )
        except OSError as error:
            print(
                f"portcullis scan: {args.create_baseline}: the baseline can't be written: "
                f"{error.strerror or error}",
                file=sys.stderr,
            )
            return 2
        accepted = sum(1 for f in result.findings if f.suppressed is None)
        also = f" and {not_judged_count(unjudged)} not judged" if args.fail_on_not_judged else ""
        print(
            f"wrote a baseline of {counted(accepted, 'finding')}{also} to {args.create_baseline}",
            file=sys.stderr,
        )
        return 2 if result.problems else 0
    from iac_scanner.report.text import summary

    delivered = output_options.deliver(
        outputs,
        lambda form, to_stdout: FORMATS[form](
            result, to_stdout and form == "text" and _color(sys.stdout)
        ),
        lambda: summary(result),
        "portcullis scan",
    )
    return result.exit_code() if delivered else 2
