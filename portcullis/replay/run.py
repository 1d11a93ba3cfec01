"""One replay: verify the log, then re-decide each selected decision as the gateway would.

Each logged input goes, unchanged (with its original ``now_ns``), through
:func:`gateway.policy.decision.decide` on an engine built by
:func:`gateway.policy.reload.build_engine`: the gateway's own call and its
fail-closed reading of the answer, so a replayed decision is what the gateway
would have done with the candidate loaded.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.audit.chain import GENESIS
from gateway.audit.reader import (
    Extent,
    LogChanged,
    SignedHead,
    chain_order,
    key_ids,
    signers_if_none_verify,
    start_record,
    verify_log,
)
from gateway.policy.decision import decide
from gateway.policy.divergence import MemoReplay, divergence
from gateway.policy.reload import build_engine
from policy_engine import PolicyEngine, PolicyError
from policy_engine.opa_server import has_credentials
from portcullis.replay.comparable import Comparability, policy_reads
from portcullis.replay.events import LoggedDecision, Selection, read_decisions
from portcullis.replay.report import PolicyInfo, Report, Verification
from portcullis.wording import counted


class ReplayError(Exception):
    """The replay can't run (a policy that doesn't load, a tampered or unreadable
    log): exit 2, never a report that looks like an answer."""


@dataclass
class ReplayOptions:
    logs: list[Path]
    candidate: str
    baseline: str | None = None
    selection: Selection = field(default_factory=Selection)
    # kid -> key to verify the chain's signatures; None: --no-verify.
    keys: dict[str, ec.EllipticCurvePublicKey] | None = None
    after: str | None = None
    after_seq: int | None = None  # --after SEQ:HASH's count, when given
    # Signed heads kept elsewhere the log must reach (--head); None: none given.
    heads: list[SignedHead] | None = None
    allowed: frozenset[str] = frozenset()
    samples_per_kind: int = 5
    top: int = 10
    timeout_ms: float = 250.0
    # Replay the events after the last signature too (--allow-unsigned-tail).
    allow_unsigned_tail: bool = False


def replay(options: ReplayOptions) -> Report:
    """Verify, replay, report. Raises ReplayError (or OSError for unreadable logs)."""
    for path in options.logs:
        if not path.is_file():
            raise ReplayError(
                f"{path}: no such file" if not path.exists() else f"{path}: not a file"
            )
    candidate = _open(options.candidate, "--policy", options.timeout_ms)
    baseline = (
        _open(options.baseline, "--baseline-policy", options.timeout_ms)
        if options.baseline
        else None
    )
    report = Report(
        candidate=PolicyInfo(options.candidate, candidate.revision),
        baseline=PolicyInfo(options.baseline, baseline.revision)
        if baseline and options.baseline
        else None,
        logs=[str(path) for path in options.logs],
        selection=options.selection,
        allowed=options.allowed,
        samples_per_kind=options.samples_per_kind,
        top=options.top,
    )
    paths = list(options.logs)
    extents = None  # --no-verify: read whatever the files hold
    signed_through = None
    unvouched: dict[str, list[tuple[int, int]]] = {}
    if options.keys is not None:
        started = time.perf_counter()
        report.verification, extents, signed_through, unvouched = _verify(
            paths, options.keys, options.after, options.heads, options.after_seq
        )
        report.verify_seconds = time.perf_counter() - started
        paths = chain_order(paths)
        if options.allow_unsigned_tail:
            signed_through = None
            report.verification.unsigned_tail_replayed = (
                report.verification.unsigned_tail > 0 or bool(unvouched)
            )
            unvouched = {}
    # Only the bytes verified: lines written since (a live log) are not replayed, and
    # a file changed since (edited between the check and the read) refuses the report.
    # Events after the last signature are vouched for by nothing (anyone can chain
    # lines onto a signed one): not evidence, unless --allow-unsigned-tail.
    # So are the events a crashed run left unsigned, which the restart's start
    # record signed as the file held them (anyone could have edited them meanwhile).
    decisions = read_decisions(
        paths, options.selection, report.skipped, extents, signed_through, unvouched
    )
    try:
        asyncio.run(_replay(decisions, candidate, baseline, report))
    except LogChanged as error:
        raise ReplayError(str(error)) from None
    return report


def _open(source: str, option: str, timeout_ms: float) -> PolicyEngine:
    if has_credentials(source):  # not echoed: a CI log keeps what is printed
        raise ReplayError(
            f"{option}: an OPA URL with credentials (user:password@) is not supported "
            "(they are not sent)"
        )
    try:
        _check_reachable(source)
        return build_engine(source, timeout_ms=timeout_ms)
    except (PolicyError, OSError, ValueError) as error:
        raise ReplayError(f"{option} {source}: the policy does not load:\n{error}") from None


def _check_reachable(source: str) -> None:
    """An OPA URL that refuses connections doesn't load, as a broken policy
    directory doesn't: exit 2 up front, not every decision a candidate error.
    Raises OSError (or ValueError for a bad port)."""
    if not source.startswith(("http://", "https://")):
        return
    parts = urlsplit(source)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not parts.hostname:
        return  # build_engine says what is wrong with it
    try:
        with socket.create_connection((parts.hostname, port), timeout=5):
            pass
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise OSError(f"OPA at {source} is unreachable: {reason}") from None


def _verify(
    paths: list[Path],
    keys: dict[str, ec.EllipticCurvePublicKey],
    after: str | None,
    heads: list[SignedHead] | None = None,
    after_seq: int | None = None,
) -> tuple[Verification, dict[str, Extent], int | None, dict[str, list[tuple[int, int]]]]:
    """What was checked, the bytes checked, the seq the last signature covers
    when events follow it (None: every event is signed), and the lines (file ->
    first, last) of events a crashed run left unsigned that a restart signed."""
    mid_chain = None
    if after is None:
        # Logs kept for a week: logrotate deleted the files before the oldest one
        # given. The decisions to replay are those the files hold, each vouched for
        # by the signed chain from the first file's start record on; what came
        # before them is not replayed, and is no reason to refuse (audit verify is
        # the check for that). A file that doesn't begin with a start record still
        # fails: lines were cut from it.
        after = mid_chain = _continued_from(chain_order(paths)[0])
    # The decisions replayed are those these files hold: an earlier chain of the
    # log's name, before it began anew at GENESIS, is audit verify's to check.
    result = verify_log(paths, keys, after=after, head=heads, new_chain=True, after_seq=after_seq)
    if result.records == 0:
        raise ReplayError("the log files hold no records")
    if result.events == 0 and result.signatures == 0 and result.problems:
        raise ReplayError(f"{paths[0]} is not a Portcullis decision log")
    if not result.ok and result.signatures == 0:
        signers = signers_if_none_verify(paths, keys)
        if signers:
            raise ReplayError(
                f"this log is signed by key {', '.join(map(repr, signers))}, not the key "
                f"given ({key_ids(keys)}): give the gateway's key with --key or --jwks"
            )
    if not result.ok:
        first = result.problems[0]
        more = len(result.problems) - 1
        raise ReplayError(
            f"refusing to replay a tampered log: {first} [{first.kind}]"
            + (f" (and {counted(more, 'more problem')})" if more else "")
            + "\n(`portcullis audit verify` lists them; --no-verify replays it anyway, "
            "and the report says it was not verified)"
        )
    notes = list(result.notes)
    if mid_chain is not None:
        # The reader's "continues from ... (N events before it)": mid-chain says more.
        before = ("events before it)", "event before it)")
        notes = [note for note in notes if not note.endswith(before)]
        notes.append(
            f"{chain_order(paths)[0]} begins mid-chain (the files before it were not given, "
            "or were rotated away): replayed from its signed start record"
        )
    signed_through = None
    if result.unsigned_tail:
        notes.append(
            f"{counted(result.unsigned_tail, 'event')} after the last signature, not yet "
            "covered by one (the gateway is still writing, or it crashed)"
        )
        # A signature's seq is the count of events it covers, and seq counts events.
        signed_through = result.tail_seq - result.unsigned_tail
    unvouched: dict[str, list[tuple[int, int]]] = {}
    for resigned in result.resigned:
        notes.append(f"not replayed: {resigned}")
        (file, from_line), (last_file, to_line) = resigned.first, resigned.last
        if file == last_file:
            unvouched.setdefault(file, []).append((from_line, to_line))
        else:
            unvouched.setdefault(file, []).append((from_line, sys.maxsize))
            unvouched.setdefault(last_file, []).append((1, to_line))
    verification = Verification(
        verified=True,
        events=result.events,
        signatures=result.signatures,
        unsigned_tail=result.unsigned_tail,
        sealed=result.sealed,
        last_signed_at=result.last_signed_at,
        notes=notes,
    )
    return verification, result.extents, signed_through, unvouched


def _continued_from(first: Path) -> str | None:
    """The line hash a file's ``start`` record continues from, if it begins with
    one that isn't the chain's beginning."""
    record = start_record(first)
    head = record.get("head") if record is not None else None
    return head if isinstance(head, str) and head != GENESIS else None


async def _replay(
    decisions: Iterator[LoggedDecision],
    candidate: PolicyEngine,
    baseline: PolicyEngine | None,
    report: Report,
) -> None:
    # The engines, policy data and report live for the whole run: out of the
    # cyclic collector's way, which would otherwise rescan them over and over.
    gc.collect()
    gc.freeze()
    # Each decision's parsed line and answers are freed by reference counting;
    # a young-generation collection every 700 allocations only rescanned the few
    # alive (~2% of the loop's instructions under callgrind). Rarer collections
    # still free any cycle.
    threshold = gc.get_threshold()
    gc.set_threshold(100_000, *threshold[1:])
    # The candidate's memo over the logged traffic, as the gateway would run it: a
    # request it would have answered with an allow the candidate no longer gives.
    memo = MemoReplay(candidate)
    # Answers to inputs the log holds otherwise than the live request had them,
    # where the policies read them: counted as not comparable, never unchanged.
    engines = [candidate] if baseline is None else [candidate, baseline]
    comparability = Comparability(policy_reads(engine) for engine in engines)
    report.reads_unknown = comparability.reads_unknown
    started, cpu = time.perf_counter(), time.process_time()
    try:
        for logged in decisions:
            after = await decide(candidate, logged.input, logged.decision_id)
            before_ns: int | None
            # Fields of the logged result the log masked: not compared, counted.
            unknown: frozenset[str] = frozenset()
            if baseline is not None:
                was = await decide(baseline, logged.input, logged.decision_id)
                before, before_ns = was.result(), was.eval_ns
                if was.error is not None:
                    report.baseline_errors += 1
            else:
                before, before_ns = logged.result, logged.eval_ns
                unknown = logged.masked_result
            after_result = after.result()
            stale = memo.stale(logged.input, after)
            kind = divergence(
                before,
                after_result,
                after_failed=after.error is not None,
                unknown=unknown,
                after_stale=stale,
            )
            report.add(
                logged,
                before,
                after,
                after_result,
                kind,
                before_ns,
                unknown,
                comparability.unknown(logged),
            )
    finally:
        report.seconds = time.perf_counter() - started
        report.cpu_seconds = time.process_time() - cpu
        gc.set_threshold(*threshold)
        gc.unfreeze()
        await candidate.close()
        if baseline is not None:
            await baseline.close()
