"""`portcullis policy replay`: what a candidate policy would have decided on logged traffic.

Exit codes: 0 nothing changed beyond the kinds ``--allow-change`` names; 1
other changes, decisions whose answer can't be compared (the candidate reads an
input field the log lacks or masked), or decisions the candidate can't
evaluate; 2 errors (a policy
that doesn't load or an OPA URL that refuses connections, a missing,
unreadable or tampered log, bad options, a --app/--since/--until selection
that leaves none of the logged decisions: a CI gate must not pass on nothing).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from portcullis import output_options
from portcullis.audit_command import (
    UsageError,
    check_after,
    check_distinct,
    check_log_file,
    load_heads,
    load_keys,
)
from portcullis.replay.events import Selection, parse_time
from portcullis.replay.output import FORMATS
from portcullis.replay.report import ALLOWABLE, Report
from portcullis.replay.run import ReplayError, ReplayOptions, replay
from portcullis.wording import counted

USAGE_ERROR = 2


def _time(text: str) -> str:
    try:
        return parse_time(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of milliseconds above 0")
    return value


def register(actions: Any) -> None:
    """Add `replay` to the `policy` subcommands."""
    parser = actions.add_parser(
        "replay",
        help="re-decide logged requests with a candidate policy and report what changes",
        description="Verify the decision log, re-evaluate every logged policy decision "
        "(with its original input and now_ns) against --policy, and compare with the "
        "logged result or --baseline-policy. Exit 0: no change beyond --allow-change; "
        "1: other changes, decisions not comparable (the candidate reads an input field "
        "the log lacks or masked) or candidate errors; 2: errors.",
    )
    parser.add_argument(
        "--log", dest="logs", action="append", required=True, metavar="FILE",
        help="a decision-log file (repeatable; rotated files in any order)",
    )  # fmt: skip
    parser.add_argument(
        "--policy", required=True, help="the candidate: policy directory, bundle or OPA URL"
    )
    parser.add_argument(
        "--baseline-policy", metavar="POLICY",
        help="compare with this policy's decisions (default: the decisions recorded in the log)",
    )  # fmt: skip
    parser.add_argument(
        "--since",
        type=_time,
        metavar="TIME",
        help="only decisions logged at or after TIME (ISO 8601, UTC if no zone)",
    )
    parser.add_argument(
        "--until", type=_time, metavar="TIME", help="only decisions logged before TIME"
    )
    parser.add_argument(
        "--app",
        dest="apps",
        action="append",
        default=[],
        metavar="APP",
        help="only this app (repeatable)",
    )
    parser.add_argument(
        "--sample",
        type=_count,
        metavar="N",
        help="replay a uniform sample of N decisions (held in memory)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="the sample's random seed (with --sample; default 0)"
    )
    parser.add_argument(
        "--allow-change", dest="allowed", action="append", default=[], choices=ALLOWABLE,
        metavar="KIND",
        help=f"a change that doesn't fail the run: {', '.join(ALLOWABLE)} (repeatable; "
        "not-comparable: decisions whose answer can't be compared)",
    )  # fmt: skip
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--key", metavar="PEM", help="the gateway's EC P-256 public key, to verify the log"
    )
    keys.add_argument("--jwks", metavar="FILE_OR_URL", help="the gateway's JWKS, to verify the log")
    keys.add_argument(
        "--no-verify", action="store_true",
        help="replay without checking the log's chain (the report says so)",
    )  # fmt: skip
    parser.add_argument(
        "--after",
        metavar="SEQ:HASH",
        help="the first file continues the chain from this line: SEQ:HASH or HASH (as "
        "`audit verify --after`)",
    )
    parser.add_argument(
        "--allow-unsigned-tail", action="store_true",
        help="also replay the events after the log's last signature, which nothing vouches "
        "for (a live log's last seconds; the report says so)",
    )  # fmt: skip
    parser.add_argument(
        "--head", metavar="FILE_OR_URL",
        help="signed chain heads kept elsewhere (as `audit verify --head`): the log must "
        "reach them, so a cut or forged tail is refused",
    )  # fmt: skip
    output_options.add_arguments(parser, FORMATS)
    parser.add_argument(
        "--samples",
        type=_count,
        default=5,
        metavar="N",
        help="sample diffs per change kind (default 5)",
    )
    parser.add_argument(
        "--top", type=_count, default=10, metavar="N", help="values per breakdown (default 10)"
    )
    parser.add_argument(
        "--timeout-ms",
        type=_milliseconds,
        default=250.0,
        help="per-decision evaluation timeout, as the gateway's policy.timeout_ms (default 250)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        outputs = output_options.requested(args)
        if args.since and args.until and args.since >= args.until:
            raise UsageError("--since must be before --until")
        after, after_seq = check_after(args.after) if args.after else (None, None)
        if args.seed is not None and args.sample is None:
            raise UsageError("--seed is the seed of --sample's sample: give --sample N too")
        keys = None if args.no_verify else load_keys(args.key, args.jwks)
        if after is not None and keys is None:
            raise UsageError(
                "--after is where the verified chain continues from: it needs --key or --jwks, "
                "not --no-verify"
            )
        if args.head and keys is None:
            raise UsageError("--head needs the key that verifies it (--key or --jwks)")
        if args.allow_unsigned_tail and keys is None:
            raise UsageError("--allow-unsigned-tail needs a verified log (--key or --jwks)")
        heads = load_heads(args.head, keys) if args.head and keys is not None else None
        for name in args.logs:
            check_log_file(Path(name))
        check_distinct([Path(name) for name in args.logs])
        options = ReplayOptions(
            logs=[Path(name) for name in args.logs],
            candidate=args.policy,
            baseline=args.baseline_policy,
            selection=Selection(
                args.since, args.until, frozenset(args.apps), args.sample, args.seed or 0
            ),
            keys=keys,
            after=after,
            after_seq=after_seq,
            heads=heads,
            allowed=frozenset(args.allowed),
            samples_per_kind=args.samples,
            top=args.top,
            timeout_ms=args.timeout_ms,
            allow_unsigned_tail=args.allow_unsigned_tail,
        )
        report = replay(options)
    except (UsageError, ReplayError, output_options.OutputError) as error:
        for line in str(error).splitlines():
            print(f"portcullis policy replay: {line}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as error:
        print(f"portcullis policy replay: {error.filename}: {error.strerror}", file=sys.stderr)
        return USAGE_ERROR
    except Exception as error:
        print(
            f"portcullis policy replay: internal error, nothing was reported: "
            f"{type(error).__name__}: {error}",
            file=sys.stderr,
        )
        return USAGE_ERROR
    unmatched = (
        _nothing_selected(report, args)
        or _nothing_signed(report)
        or _not_a_log(report, options.logs)
    )
    if unmatched:
        print(f"portcullis policy replay: {unmatched}", file=sys.stderr)
        return USAGE_ERROR
    from portcullis.replay.output.describe import verdict

    document = report.document()
    delivered = output_options.deliver(
        outputs,
        lambda form, _: FORMATS[form](document),
        lambda: verdict(document),
        "portcullis policy replay",
    )
    if report.replayed == 0:
        print(
            "portcullis policy replay: warning: the logs hold no policy decisions to "
            "replay: this run checked nothing",
            file=sys.stderr,
        )
    return report.exit_code() if delivered else USAGE_ERROR


def _not_a_log(report: Report, logs: list[Path]) -> str | None:
    """Why a replay of nothing must not pass when the files (read with --no-verify)
    hold no record of a decision log at all: /etc/passwd, a JSON-lines file of
    something else. None if something was replayed or recognised."""
    skipped = report.skipped
    recognised = skipped.refusals + skipped.shadow_events + report.verification.events
    if report.replayed or recognised or not (skipped.unreadable or skipped.other_paths):
        return None
    names = ", ".join(str(path) for path in logs)
    lines = skipped.unreadable + skipped.other_paths
    return (
        f"{names}: not a Portcullis decision log ({counted(lines, 'record')}, none a decision, a "
        "refusal or a chain signature): nothing was replayed, so nothing was checked"
    )


def _nothing_signed(report: Report) -> str | None:
    """Why a replay must not pass when every decision it would replay comes after
    the last signature: lines chained onto one genuine signed record by anyone
    verify as a chain, and would be the whole evidence. None otherwise."""
    unsigned = report.skipped.unsigned_tail
    if report.replayed or not unsigned:
        return None
    return (
        f"no decision is covered by a signature: {counted(unsigned, 'decision')} selected, "
        "every one after the log's last signature, where nothing vouches for it (forged, "
        "or not signed yet: the gateway signs every sign_interval and when it closes or "
        "rotates the file); nothing was replayed, so nothing was checked (--allow-unsigned-tail "
        "replays them anyway)"
    )


def _nothing_selected(report: Report, args: argparse.Namespace) -> str | None:
    """Why a replay of nothing must not pass, when --app/--since/--until left no
    decision of the logs' (a typo, a window after the log ends): a CI gate would
    pass on no evidence. None if something was replayed, or the logs hold no
    decisions at all (nothing to select: a warning, not a failure)."""
    skipped = report.skipped
    logged = skipped.outside_time + skipped.other_apps
    if report.replayed or not logged:
        return None
    chosen = [f"--app {app}" for app in sorted(args.apps)]
    chosen += [f"--{name} {value}" for name in ("since", "until") if (value := getattr(args, name))]
    counts = [f"{counted(logged, 'decision')} in the logs"]
    if skipped.outside_time:
        counts.append(f"{skipped.outside_time} outside the time window")
    if skipped.other_apps:
        counts.append(f"{skipped.other_apps} of other apps")
    return (
        f"no decision matched the selection ({', '.join(counts)}; {' '.join(chosen)}): "
        "nothing was replayed, so nothing was checked"
    )
