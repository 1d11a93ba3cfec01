"""The logged policy decisions to replay: streamed from the log, filtered, sampled.

Records come from :func:`gateway.audit.reader.iter_records` (never parsed here).
What is not a policy decision is counted, not replayed: chain signatures,
requests the gateway refused before asking any policy (event ``path``
``gateway``, reason ``gateway.<rule>: ...``: no policy could change them), and
shadow-mode divergence events (``labels.shadow``: not live decisions).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit.chain import DECISION_PATH, REFUSAL_PATH, SIGNATURE_TYPE, rfc3339_ns
from gateway.audit.reader import Extent, iter_records
from gateway.audit.redaction import pointer_parts
from gateway.policy.decision import SECRET_HEADERS

_RULE = re.compile(r"^(gateway\.[A-Za-z0-9_]+)")
# Credentials the gateway already replaces before asking the policy: the live
# policy saw **REDACTED** there too, so their masking changes nothing in replay.
_SEEN_MASKED = frozenset(f"/input/attributes/request/http/headers/{h}" for h in SECRET_HEADERS)
# Pointers into the logged result (masked in the log only: nothing the policy read).
_RESULT = "/result/"
_NONE: frozenset[str] = frozenset()


@dataclass(slots=True)
class LoggedDecision:
    """One policy decision as the gateway logged it.

    What every replayed decision needs is read when the line is; the rest
    (the event's id, time and masking) comes from the record on demand: only
    for the few decisions a report shows, or whose input was masked."""

    file: str
    line: int
    record: dict[str, Any]
    input: dict[str, Any]
    result: dict[str, Any]
    app: str
    revision: str
    eval_ns: int | None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def decision_id(self) -> str:
        return str(self.record.get("decision_id", ""))

    @property
    def timestamp(self) -> str:
        return _timestamp(self.record)

    @property
    def seq(self) -> int:
        seq = self.record.get("seq")
        return seq if isinstance(seq, int) else 0

    @property
    def masked(self) -> list[str]:
        """Input pointers masked in the log that the live policy saw in clear."""
        return [
            m
            for m in strings(self.record.get("masked"))
            if m not in _SEEN_MASKED and not m.startswith(_RESULT)
        ]

    @property
    def masked_result(self) -> frozenset[str]:
        """The fields of the logged result the log masked (``decision_log.mask_headers``
        pointers into ``/result/``): what the policy answered there is unknown."""
        masked = self.record.get("masked")
        if masked is None:
            return _NONE
        return frozenset(
            pointer_parts(m)[1] for m in strings(masked) if m.startswith(_RESULT) and m != _RESULT
        )

    @property
    def truncated(self) -> list[str]:
        return strings(self.record.get("truncated"))

    @property
    def differs_from_live(self) -> bool:
        """Whether masking or truncation left an input the live policy saw otherwise."""
        record = self.record
        masked = record.get("masked")
        if "truncated" not in record:
            if masked is None:
                return False
            # Most logged inputs: only the credentials the live policy saw masked too.
            if (
                type(masked) is list
                and all(type(m) is str for m in masked)
                and _SEEN_MASKED.issuperset(masked)
            ):
                return False
        return bool(self.masked or self.truncated)


@dataclass(frozen=True)
class Selection:
    """Which decisions to replay. ``since``/``until`` are RFC 3339 stamps in the
    log's own format (so they compare as strings); ``since`` inclusive."""

    since: str | None = None
    until: str | None = None
    apps: frozenset[str] = frozenset()
    sample: int | None = None
    seed: int = 0


@dataclass
class Skipped:
    """Events read but not replayed, by why."""

    gateway_refusals: dict[str, int] = field(default_factory=dict)  # by gateway.<rule>
    shadow_events: int = 0
    other_paths: int = 0
    unreadable: int = 0  # not a JSON object, or missing input/result (only without verify)
    outside_time: int = 0
    other_apps: int = 0
    not_sampled: int = 0
    unsigned_tail: int = 0  # decisions after the last signature: vouched for by nothing
    now_ns_from_timestamp: int = 0  # replayed, with now_ns taken from the event's timestamp

    @property
    def refusals(self) -> int:
        return sum(self.gateway_refusals.values())


def parse_time(text: str) -> str:
    """A user's time bound (``2026-11-01``, ``2026-11-01T00:00Z``, any ISO 8601;
    no zone means UTC) as the log's timestamp format. ValueError says why not."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r}: not an ISO 8601 time (e.g. 2026-11-01 or 2026-11-01T00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    ns = int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
    return rfc3339_ns(ns)


def read_decisions(
    paths: Sequence[Path],
    selection: Selection,
    skipped: Skipped,
    extents: dict[str, Extent] | None = None,
    signed_through: int | None = None,
    unvouched: dict[str, list[tuple[int, int]]] | None = None,
) -> Iterator[LoggedDecision]:
    """The selected policy decisions of ``paths`` in order, streamed; with a
    sample, a uniform one (fixed seed) held in memory and given in log order.
    ``extents``: the verifier's (only what it checked is read; LogChanged if the
    files changed since). ``signed_through``: the seq the last signature covers;
    decisions after it are counted (``skipped.unsigned_tail``), not replayed; so are
    those on the ``unvouched`` lines (file -> first, last line: events a crashed run
    left unsigned, signed by the restart as the file then held them)."""
    decisions = _selected(paths, selection, skipped, extents, signed_through, unvouched)
    if selection.sample is None:
        return decisions
    return _reservoir(decisions, selection.sample, selection.seed, skipped)


def _selected(
    paths: Sequence[Path],
    selection: Selection,
    skipped: Skipped,
    extents: dict[str, Extent] | None,
    signed_through: int | None = None,
    unvouched: dict[str, list[tuple[int, int]]] | None = None,
) -> Iterator[LoggedDecision]:
    # The chain was verified before (or --no-verify said not to): no hashing here.
    # This runs once per line of a log that may hold millions: plain dict lookups.
    since, until, apps = selection.since, selection.until, selection.apps
    for file, number, record in iter_records(paths, extents):
        if record is None:
            skipped.unreadable += 1
            continue
        if record.get("type") == SIGNATURE_TYPE:
            continue
        path = record.get("path")
        labels = record.get("labels")
        if type(labels) is not dict:
            labels = {}
        if path == REFUSAL_PATH:
            # Counted within the selection, like the decisions beside them.
            if _selected_refusal(record, labels, since, until, apps):
                rule = _refusal_rule(record)
                skipped.gateway_refusals[rule] = skipped.gateway_refusals.get(rule, 0) + 1
            continue
        if labels.get("shadow") is True:
            skipped.shadow_events += 1
            continue
        if path != DECISION_PATH:
            skipped.other_paths += 1
            continue
        decision = _decision(file, number, record, labels, skipped)
        if decision is None:
            skipped.unreadable += 1
            continue
        if since is not None or until is not None:
            timestamp = _timestamp(record)
            if (since is not None and timestamp < since) or (
                until is not None and timestamp >= until
            ):
                skipped.outside_time += 1
                continue
        if apps and decision.app not in apps:
            skipped.other_apps += 1
            continue
        if signed_through is not None and decision.seq > signed_through:
            skipped.unsigned_tail += 1
            continue
        if unvouched and any(lo <= number <= hi for lo, hi in unvouched.get(file, ())):
            skipped.unsigned_tail += 1
            continue
        yield decision


def _selected_refusal(
    record: dict[str, Any],
    labels: dict[str, Any],
    since: str | None,
    until: str | None,
    apps: frozenset[str],
) -> bool:
    if since is not None or until is not None:
        timestamp = _timestamp(record)
        if (since is not None and timestamp < since) or (until is not None and timestamp >= until):
            return False
    return not apps or labels.get("app") in apps


def _refusal_rule(record: dict[str, Any]) -> str:
    result = record.get("result")
    reasons = result.get("reasons") if isinstance(result, dict) else None
    first = reasons[0] if isinstance(reasons, list) and reasons else ""
    match = _RULE.match(first) if isinstance(first, str) else None
    return match.group(1) if match else "gateway"


def _decision(
    file: str, number: int, record: dict[str, Any], labels: dict[str, Any], skipped: Skipped
) -> LoggedDecision | None:
    document = record.get("input")
    result = record.get("result")
    if not isinstance(document, dict) or not isinstance(result, dict):
        return None
    if not isinstance(document.get("now_ns"), int):
        # An input without its clock would replay MFA freshness against nothing
        # (a deny); the moment it was logged is the closest truth there is.
        now = _timestamp_ns(_timestamp(record))
        if now is None:
            return None
        document = {**document, "now_ns": now}
        skipped.now_ns_from_timestamp += 1
    app = labels.get("app")
    if not isinstance(app, str):
        route = document.get("route")
        app = route.get("app") if isinstance(route, dict) else None
        if not isinstance(app, str):
            app = "-"
    bundles = record.get("bundles")
    bundle = bundles.get("portcullis") if isinstance(bundles, dict) else None
    revision = bundle.get("revision") if isinstance(bundle, dict) else None
    metrics = record.get("metrics")
    eval_ns = metrics.get("timer_rego_query_eval_ns") if isinstance(metrics, dict) else None
    return LoggedDecision(
        file,
        number,
        record,
        document,
        result,
        app,
        revision if isinstance(revision, str) else "",
        eval_ns if isinstance(eval_ns, int) else None,
    )


def _timestamp(record: dict[str, Any]) -> str:
    timestamp = record.get("timestamp")
    return timestamp if isinstance(timestamp, str) else ""


def strings(value: Any) -> list[str]:
    """The strings of a logged list (a hand-edited log may hold anything there)."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _timestamp_ns(stamp: str) -> int | None:
    """``2026-11-01T12:00:00.123456789Z`` (the log's format) in ns since the epoch."""
    try:
        seconds = datetime.fromisoformat(stamp[:19]).replace(tzinfo=UTC).timestamp()
        fraction = stamp[20:-1] if stamp[19:20] == "." and stamp.endswith("Z") else ""
        nanos = int(fraction[:9].ljust(9, "0")) if fraction else 0
    except ValueError:
        return None
    return int(seconds) * 1_000_000_000 + nanos


def _reservoir(
    decisions: Iterator[LoggedDecision], size: int, seed: int, skipped: Skipped
) -> Iterator[LoggedDecision]:
    """Algorithm R: every decision equally likely to be kept, O(size) memory."""
    chooser = random.Random(seed)
    kept: list[tuple[int, LoggedDecision]] = []
    seen = 0
    for decision in decisions:
        if len(kept) < size:
            kept.append((seen, decision))
        else:
            slot = chooser.randrange(seen + 1)
            if slot < size:
                kept[slot] = (seen, decision)
        seen += 1
    skipped.not_sampled += seen - len(kept)
    kept.sort(key=lambda item: item[0])
    return iter([decision for _, decision in kept])
