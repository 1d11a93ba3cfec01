"""The replay report: totals, changes by kind and dimension, samples, latency.

:meth:`Report.document` is the JSON report (``report.schema.json``, versioned
by ``version``); the text and Markdown outputs render the same document.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.chain import REDACTED
from gateway.policy.decision import Decision, as_read
from gateway.policy.divergence import (
    ALLOW_TO_DENY,
    DENY_TO_ALLOW,
    ERROR,
    KINDS,
    STEP_UP,
    VALIDITY,
)
from portcullis.replay.comparable import WHYS
from portcullis.replay.events import LoggedDecision, Selection, Skipped, strings
from portcullis.replay.stats import Latency, TopCounter

REPORT_TYPE = "portcullis.policy-replay"
VERSION = 3
# Decisions whose replayed answer can't be compared (portcullis/replay/comparable.py):
# not a change, never unchanged; they fail the run unless --allow-change names them.
NOT_COMPARABLE = "not-comparable"
UNCHANGED = "unchanged"
# What --allow-change may accept; an evaluation error always fails.
ALLOWABLE = (*(kind for kind in KINDS if kind != ERROR), NOT_COMPARABLE)
DIMENSIONS = ("app", "route", "method", "group", "subject", "reason", "step_up")
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class PolicyInfo:
    source: str
    revision: str


@dataclass
class Verification:
    """What was checked before replaying (``verified`` False: --no-verify)."""

    verified: bool
    events: int = 0
    signatures: int = 0
    unsigned_tail: int = 0
    sealed: bool = False
    last_signed_at: str | None = None
    notes: list[str] = field(default_factory=list)
    unsigned_tail_replayed: bool = False  # --allow-unsigned-tail and there was one

    def document(self) -> dict[str, Any]:
        if not self.verified:
            return {
                "verified": False,
                "warning": "--no-verify: the log's hash chain and signatures were not "
                "checked; it may have been edited",
            }
        return {
            "verified": True,
            "events": self.events,
            "signatures": self.signatures,
            "unsigned_tail": self.unsigned_tail,
            "unsigned_tail_replayed": self.unsigned_tail_replayed,
            "sealed": self.sealed,
            "last_signed_at": self.last_signed_at,
            "notes": self.notes,
        }


class Report:
    """Accumulates one replay, decision by decision, in bounded memory."""

    def __init__(
        self,
        *,
        candidate: PolicyInfo,
        baseline: PolicyInfo | None,
        logs: Iterable[str],
        selection: Selection,
        allowed: Iterable[str] = (),
        samples_per_kind: int = 5,
        top: int = 10,
    ) -> None:
        self.candidate = candidate
        self.baseline = baseline
        self.logs = list(logs)
        self.selection = selection
        self.allowed = frozenset(allowed)
        self.samples_per_kind = samples_per_kind
        self.top = top
        self.verification = Verification(verified=False)
        self.skipped = Skipped()
        self.replayed = 0
        self.by_kind = dict.fromkeys(KINDS, 0)
        self.breakdown = {kind: {d: TopCounter() for d in DIMENSIONS} for kind in KINDS}
        self.samples: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        self.by_app = TopCounter()
        self.logged_revisions = TopCounter()
        self.masked_inputs = 0
        self.changed_masked_inputs = 0
        self.masked_results: dict[str, int] = {}  # by result field
        self.baseline_errors = 0
        self.not_comparable = 0
        self.not_comparable_as = dict.fromkeys((UNCHANGED, *KINDS), 0)
        self.not_comparable_fields = {why: TopCounter() for why in WHYS}
        self.not_comparable_samples: list[dict[str, Any]] = []
        self.reads_unknown = False  # a policy whose reads aren't known (an OPA URL)
        self.candidate_latency = Latency()
        self.baseline_latency = Latency()
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.verify_seconds = 0.0

    # --- accumulating -------------------------------------------------------------

    def add(
        self,
        logged: LoggedDecision,
        before: dict[str, Any],
        after: Decision,
        after_result: dict[str, Any],
        kind: str | None,
        baseline_ns: int | None,
        unknown: frozenset[str] = frozenset(),
        not_comparable: list[tuple[str, str]] | None = None,
    ) -> None:
        """Count one replayed decision; ``after_result`` is ``after.result()``;
        ``unknown``: the logged result's fields the log masked (not compared);
        ``not_comparable``: (field, why) of each input field the policies read that
        the logged input lacks or holds masked: then the answer is counted apart."""
        self.replayed += 1
        for name in unknown:
            self.masked_results[name] = self.masked_results.get(name, 0) + 1
        self.by_app.add(logged.app)
        self.logged_revisions.add(logged.revision)
        self.candidate_latency.add(after.eval_ns)
        if baseline_ns is not None:
            self.baseline_latency.add(baseline_ns)
        masked = logged.differs_from_live
        if masked:
            self.masked_inputs += 1
        if not_comparable:
            self._add_not_comparable(logged, before, after, after_result, kind, not_comparable)
            return
        if kind is None:
            return
        self.by_kind[kind] += 1
        if masked:
            self.changed_masked_inputs += 1
        counters = self.breakdown[kind]
        for dimension, value in _dimensions(logged, before, after_result, after.error, kind):
            counters[dimension].add(value)
        if len(self.samples[kind]) < self.samples_per_kind:
            self.samples[kind].append(_sample(logged, before, after_result, after.error))

    def _add_not_comparable(
        self,
        logged: LoggedDecision,
        before: dict[str, Any],
        after: Decision,
        after_result: dict[str, Any],
        kind: str | None,
        fields: list[tuple[str, str]],
    ) -> None:
        self.not_comparable += 1
        self.not_comparable_as[kind or UNCHANGED] += 1
        for field_, why in fields:
            self.not_comparable_fields[why].add(field_)
        if len(self.not_comparable_samples) < self.samples_per_kind:
            sample = _sample(logged, before, after_result, after.error)
            sample["as_replayed"] = kind or UNCHANGED
            sample["not_comparable"] = [{"field": f, "why": why} for f, why in fields]
            self.not_comparable_samples.append(sample)

    # --- outcome ------------------------------------------------------------------

    @property
    def changed(self) -> int:
        return sum(self.by_kind.values())

    def blocking(self) -> dict[str, int]:
        """Changes of kinds --allow-change didn't accept (errors always), and the
        decisions that can't be compared unless it named them."""
        blocking = {k: n for k, n in self.by_kind.items() if n and k not in self.allowed}
        if self.not_comparable and NOT_COMPARABLE not in self.allowed:
            blocking[NOT_COMPARABLE] = self.not_comparable
        return blocking

    def exit_code(self) -> int:
        return 1 if self.blocking() else 0

    def document(self) -> dict[str, Any]:
        """The versioned JSON report."""
        rate = self.replayed / self.seconds if self.seconds > 0 else None
        per_cpu = self.replayed / self.cpu_seconds if self.cpu_seconds > 0 else None
        skipped = self.skipped
        return {
            "report": REPORT_TYPE,
            "version": VERSION,
            "candidate": {"source": self.candidate.source, "revision": self.candidate.revision},
            "baseline": (
                {"source": self.baseline.source, "revision": self.baseline.revision}
                if self.baseline is not None
                else {"source": "log", "revisions": self.logged_revisions.top(self.top)}
            ),
            "logs": self.logs,
            "verification": self.verification.document(),
            "selection": {
                "since": self.selection.since,
                "until": self.selection.until,
                "apps": sorted(self.selection.apps),
                "sample": self.selection.sample,
                "seed": self.selection.seed if self.selection.sample is not None else None,
            },
            "totals": {
                "replayed": self.replayed,
                "unchanged": self.replayed - self.changed - self.not_comparable,
                "changed": self.changed,
                "not_comparable": self.not_comparable,
                "by_kind": dict(self.by_kind),
                "by_app": self.by_app.top(self.top),
                "masked_inputs": self.masked_inputs,
                "changed_with_masked_inputs": self.changed_masked_inputs,
                "masked_results": dict(sorted(self.masked_results.items())),
                "baseline_errors": self.baseline_errors,
                "now_ns_from_timestamp": skipped.now_ns_from_timestamp,
            },
            "not_replayed": {
                "gateway_refusals": skipped.refusals,
                "gateway_refusals_by_rule": dict(sorted(skipped.gateway_refusals.items())),
                "shadow_events": skipped.shadow_events,
                "other_paths": skipped.other_paths,
                "unreadable": skipped.unreadable,
                "outside_time": skipped.outside_time,
                "other_apps": skipped.other_apps,
                "not_sampled": skipped.not_sampled,
                "unsigned_tail": skipped.unsigned_tail,
            },
            "changes": {
                kind: {
                    "count": self.by_kind[kind],
                    "breakdown": {
                        d: counter.top(self.top) for d, counter in self.breakdown[kind].items()
                    },
                    "samples": self.samples[kind],
                }
                for kind in KINDS
            },
            "not_comparable": {
                "count": self.not_comparable,
                "reads_known": not self.reads_unknown,
                "as_replayed": dict(self.not_comparable_as),
                "fields": {
                    why: fields.top(self.top) for why, fields in self.not_comparable_fields.items()
                },
                "samples": self.not_comparable_samples,
            },
            "latency": {
                "candidate": {"measured": "replayed", **self.candidate_latency.summary()},
                "baseline": {
                    "measured": "replayed" if self.baseline is not None else "logged",
                    **self.baseline_latency.summary(),
                },
            },
            "rate": {
                "seconds": round(self.seconds, 3),
                "cpu_seconds": round(self.cpu_seconds, 3),
                "verify_seconds": round(self.verify_seconds, 3),
                "decisions_per_second": round(rate) if rate is not None else None,
                "decisions_per_cpu_second": round(per_cpu) if per_cpu is not None else None,
            },
            "allowed_changes": sorted(self.allowed),
            "blocking": self.blocking(),
            "exit_code": self.exit_code(),
        }


def _dimensions(
    logged: LoggedDecision,
    before: dict[str, Any],
    after: dict[str, Any],
    error: str | None,
    kind: str,
) -> Iterable[tuple[str, str]]:
    document = logged.input
    http = _get(document, "attributes", "request", "http")
    identity = document.get("identity")
    identity = identity if isinstance(identity, dict) else {}
    yield "app", logged.app
    yield "route", _route(document.get("parsed_path"))
    yield "method", str(http.get("method", "-")) if isinstance(http, dict) else "-"
    groups = identity.get("groups")
    if isinstance(groups, list) and groups:
        for group in groups:
            yield "group", str(group)
    else:
        yield "group", "(none)"
    subject = identity.get("subject")
    yield "subject", str(subject) if subject else "(anonymous)"
    for reason in _changed_reasons(before, after, error, kind):
        yield "reason", _DIGITS.sub("N", reason)[:300]
    if kind in (ALLOW_TO_DENY, STEP_UP):
        yield "step_up", _step_up(after.get("step_up"))


def _changed_reasons(
    before: dict[str, Any], after: dict[str, Any], error: str | None, kind: str
) -> list[str]:
    """What the change is about: the candidate's new reasons (the old ones for a
    deny that now allows; the error for an error)."""
    if kind == ERROR:
        return [error or "error"]
    if kind == VALIDITY:
        return ["valid_until_ns lets the memo reuse the allow after the policy denies"]
    old, new = strings(before.get("reasons")), strings(after.get("reasons"))
    if kind == DENY_TO_ALLOW:
        return old or ["(no reason)"]
    added = [r for r in new if r not in old]
    return added or new or ["(no reason)"]


def _step_up(step_up: Any) -> str:
    if not isinstance(step_up, dict):
        return "none (a plain deny)"
    return f"acr={step_up.get('acr')} max_age={step_up.get('max_age')}"


def _unmasked_shape(result: dict[str, Any]) -> dict[str, Any]:
    """A logged result whose reasons the log masked (``mask_headers:
    ["/result/reasons"]``) holds the marker instead of a list: shown as a list
    of it, not read as a malformed decision."""
    if result.get("reasons") == REDACTED:
        return {**result, "reasons": [REDACTED]}
    return result


def _route(parsed_path: Any) -> str:
    """The first two path segments: /pos/refunds/ for /pos/refunds/42."""
    if not isinstance(parsed_path, list) or not parsed_path:
        return "/"
    return "/" + "/".join(str(p) for p in parsed_path[:2]) + "/"


def _get(document: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def _sample(
    logged: LoggedDecision, before: dict[str, Any], after: dict[str, Any], error: str | None
) -> dict[str, Any]:
    document = logged.input
    http = _get(document, "attributes", "request", "http")
    http = http if isinstance(http, dict) else {}
    identity = document.get("identity")
    identity = dict(identity) if isinstance(identity, dict) else {}
    auth_time, now_ns = identity.get("auth_time"), document.get("now_ns")
    if isinstance(auth_time, int | float) and isinstance(now_ns, int) and math.isfinite(auth_time):
        identity["auth_age_s"] = round(now_ns / 1e9 - auth_time)
    return {
        "decision_id": logged.decision_id,
        "timestamp": logged.timestamp,
        "where": logged.where,
        "seq": logged.seq,
        "app": logged.app,
        "method": http.get("method"),
        "path": http.get("path"),
        "request_id": http.get("id"),
        "identity": identity,
        "before": as_read(_unmasked_shape(before)),  # a hand-edited log's: the contract's shape
        "after": after,
        "error": error,
        "masked": logged.masked,
        "truncated": logged.truncated,
    }
