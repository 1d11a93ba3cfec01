"""The decision memo: reuse an allow for a request the policy can't tell apart.

A policy opts in by declaring what it reads (``data.portcullis.gateway.reads``,
JSON pointers into the input, e.g. ``/identity``) and by returning
``decision.valid_until_ns``, the moment its answer may change as time passes
(``null``: it doesn't read the clock). The declaration is checked against the
policy's own AST when it loads (policy_engine/input_reads.py): a policy that
reads anything it didn't declare, reads the whole input, or calls a builtin
whose answer can change on its own (time.now_ns, http.send...) gets no memo. Then
two requests that agree on every declared path get the same decision from the
policy, and a remembered one is only reused:

- for an allow (a deny is recomputed: it is rare and its reasons may name the
  time), from the same engine (a reload starts an empty memo);
- while the clock is between the moment it was decided and ``valid_until_ns``
  (less a millisecond for rounding), and for at most MAX_AGE_NS;
- never for a WebSocket recheck or a shadow policy, and never in replay.

``input.now_ns`` is the one read the declaration may leave out: time is what
``valid_until_ns`` answers for. Each reuse is still logged as its own decision,
with ``metrics.decision_memo_hit: 1``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.audit.redaction import pointer_parts
from gateway.policy.decision import Decision, decide
from policy_engine import EmbeddedEngine, PolicyEngine, PolicyError
from policy_engine.input_reads import input_reads

log = logging.getLogger("portcullis.policy")

READS_REF = "data.portcullis.gateway.reads"
PACKAGE = ("portcullis", "gateway")
NOW = ("now_ns",)
MAX_ENTRIES = 10_000
MAX_AGE_NS = 60 * 1_000_000_000
# valid_until_ns is compared a millisecond early: the policy's clock arithmetic may
# round (a float auth_time), the memo's never serves past the policy's boundary.
MARGIN_NS = 1_000_000
_MISSING = object()


@dataclass(frozen=True)
class _Entry:
    """A remembered allow: when it was decided, until when it holds, and the
    policy's answer as the gateway read it (a reuse logs the same result)."""

    decided_ns: int
    until_ns: int
    http_status: int
    reasons: list[str]
    headers: dict[str, str]
    valid_until_ns: Any  # as the policy answered it


class DecisionMemo:
    """Allows remembered per engine, keyed by the declared input paths' values."""

    def __init__(self, engine: PolicyEngine, reads: tuple[tuple[str, ...], ...]) -> None:
        self.engine = engine
        self.reads = reads
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()

    @classmethod
    def for_engine(cls, engine: PolicyEngine | None) -> DecisionMemo | None:
        """The memo for ``engine``, or None when its policy doesn't opt in or its
        declaration doesn't cover what it reads (logged once, here)."""
        if not isinstance(engine, EmbeddedEngine) or READS_REF not in engine.compiled_refs:
            return None
        try:
            declared = engine.evaluate_sync(READS_REF, {})
        except PolicyError as error:
            log.warning("decision memo off: %s did not evaluate: %s", READS_REF, error)
            return None
        reads = _pointers(declared)
        if reads is None:
            log.warning(
                "decision memo off: %s must be a list of JSON pointers into the input "
                "(like \"/identity\"), got %.200r", READS_REF, declared,
            )  # fmt: skip
            return None
        found = input_reads(engine.compiled.shapes, PACKAGE, (*reads, NOW))
        if not found.covered:
            # Said with what it means and what to do: a policy author who added one
            # rule sees this on every reload and can't tell it from a broken policy.
            log.warning(
                "decision memo off: the policy %s, which %s does not account for; every "
                "request is evaluated (decisions are unchanged, only not reused). To keep "
                "the memo, declare every input pointer the policy reads in `reads`, and call "
                "no builtin whose answer changes on its own (README \"Decision memo\")",
                found.describe(), READS_REF,
            )  # fmt: skip
            return None
        return cls(engine, reads)

    async def decide(self, document: dict[str, Any], decision_id: str) -> Decision:
        """What :func:`gateway.policy.decision.decide` would answer, from memory when it can."""
        started = time.perf_counter_ns()
        key = self.key(document)
        now_ns = document.get("now_ns")
        if key is None or not isinstance(now_ns, int):
            return await decide(self.engine, document, decision_id)
        entry = self.allowed(key, now_ns)
        if entry is not None:
            return Decision(
                decision_id, True, entry.http_status, list(entry.reasons), dict(entry.headers),
                eval_ns=time.perf_counter_ns() - started, memo_hit=True,
                policy_result={"valid_until_ns": entry.valid_until_ns},
            )  # fmt: skip
        decision = await decide(self.engine, document, decision_id)
        self.remember(key, now_ns, decision)
        return decision

    def key(self, document: dict[str, Any]) -> bytes | None:
        """The values of the declared paths in this input, as bytes (a missing path
        and a null differ); None for values JSON can't hold (then no memo)."""
        values = [_at(document, path) for path in self.reads]
        try:
            return orjson.dumps(
                [None if v is _MISSING else [v] for v in values], option=orjson.OPT_SORT_KEYS
            )
        except TypeError:
            return None

    def allowed(self, key: bytes, now_ns: int) -> _Entry | None:
        """The remembered allow that still holds at ``now_ns``, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not entry.decided_ns <= now_ns < entry.until_ns:
            del self._entries[key]
            return None
        return entry

    def remember(self, key: bytes, now_ns: int, decision: Decision) -> None:
        """Keep an allow (until the valid_until_ns its policy returned) for reuse."""
        if not decision.allow or decision.error is not None:
            return
        until = decision.valid_until
        until_ns = reuse_end_ns(until, now_ns)
        if until_ns is None:
            return
        self._entries[key] = _Entry(
            now_ns, until_ns, decision.http_status, list(decision.reasons),
            dict(decision.headers), until,
        )  # fmt: skip
        if len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)


def reuse_end_ns(valid_until: Any, now_ns: int) -> int | None:
    """When the memo stops reusing an allow decided at ``now_ns`` whose policy
    answered ``valid_until`` (its ``valid_until_ns``, NOT_GIVEN if none): reused
    while the clock is before this; None if it is not kept at all."""
    limit = now_ns + MAX_AGE_NS
    if valid_until is None:
        until_ns = limit
    elif isinstance(valid_until, (int, float)) and not isinstance(valid_until, bool):
        until_ns = min(limit, int(valid_until) - MARGIN_NS)
    else:  # NOT_GIVEN, or not a number: not remembered
        return None
    return until_ns if until_ns > now_ns else None


def _pointers(declared: Any) -> tuple[tuple[str, ...], ...] | None:
    if not isinstance(declared, list) or not declared:
        return None
    paths = []
    for pointer in declared:
        if not isinstance(pointer, str) or not pointer.startswith("/") or pointer == "/":
            return None
        paths.append(pointer_parts(pointer))
    return tuple(paths)


def _at(document: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(document, dict):
            return _MISSING
        document = document.get(part, _MISSING)
        if document is _MISSING:
            return _MISSING
    return document
