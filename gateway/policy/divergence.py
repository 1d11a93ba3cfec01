"""How two decisions on the same input differ: the change kinds replay and shadow mode report.

Every compared pair is either unchanged or exactly one kind, checked in this
order, so totals add up:

- ``error``: the candidate could not evaluate (an engine error, a timeout, an
  undefined or malformed answer): the gateway would have denied, fail closed;
- ``allow-to-deny`` / ``deny-to-allow``: the allow bit flipped;
- ``step-up``: still a deny, but the re-authentication asked for (``acr``,
  ``max_age``) changed, appeared or went away;
- ``validity``: the candidate's decision memo, run over the same traffic in the
  same order as the gateway would run it (:class:`MemoReplay`), would have
  answered this request with an allow it remembered while the candidate itself
  no longer allows it: its ``valid_until_ns`` runs past its real boundary (what
  users get is the remembered allow, so this is not counted as a flip). An
  earlier ``valid_until_ns`` only costs evaluations: not a change;
- ``reasons``: same allow and step-up, but a different HTTP status, reasons or
  response headers.

Fields of ``before`` named ``unknown`` (a logged result the log masked there) are
not compared: what the policy answered in them is not known.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from gateway.policy.decision import Decision
from gateway.policy.memo import DecisionMemo
from policy_engine import PolicyEngine

ERROR = "error"
ALLOW_TO_DENY = "allow-to-deny"
DENY_TO_ALLOW = "deny-to-allow"
STEP_UP = "step-up"
VALIDITY = "validity"
REASONS = "reasons"
KINDS = (ALLOW_TO_DENY, DENY_TO_ALLOW, STEP_UP, VALIDITY, REASONS, ERROR)


def divergence(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    *,
    after_failed: bool = False,
    unknown: Collection[str] = (),
    after_stale: bool = False,
) -> str | None:
    """The kind of change from ``before`` to ``after`` (decision results as the
    contract spells them, after the gateway's fail-closed reading), or None.
    ``after_stale``: :meth:`MemoReplay.stale` found the candidate's memo would
    have served a remembered allow where ``after`` is the candidate's own answer."""
    if after_failed:
        return ERROR
    if after_stale:
        return VALIDITY
    if unknown:
        before = {**before, **{name: after.get(name) for name in unknown}}
    if before.get("allow") is after.get("allow") and before == after:
        # Most replayed and shadowed decisions: one comparison instead of five.
        # (`is` first: 1 == True, but only a literal true allows.)
        return None
    allowed_before = before.get("allow") is True
    allowed_after = after.get("allow") is True
    if allowed_before != allowed_after:
        return ALLOW_TO_DENY if allowed_before else DENY_TO_ALLOW
    if not allowed_after and before.get("step_up") != after.get("step_up"):
        return STEP_UP
    if (
        before.get("http_status") != after.get("http_status")
        or _reasons(before) != _reasons(after)
        or (before.get("headers") or {}) != (after.get("headers") or {})
    ):
        return REASONS
    return None


class MemoReplay:
    """A policy's decision memo run over traffic in the order it came, beside the
    policy's own answers: which requests the gateway would have answered from
    memory with an allow the policy itself no longer gives (a ``valid_until_ns``
    later than the policy's real boundary). The same DecisionMemo the gateway runs,
    fed each fresh answer as the gateway feeds it its evaluations, so no request is
    evaluated twice. One memo for all the traffic: a gateway of several workers or
    replicas has one each, and reuses less, never more."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.memo = DecisionMemo.for_engine(engine)

    def stale(self, document: dict[str, Any], fresh: Decision) -> bool:
        """Whether the memo would have answered ``document`` with a remembered allow
        that ``fresh`` (the policy's own answer now) is not."""
        memo = self.memo
        now_ns = document.get("now_ns")
        if memo is None or not isinstance(now_ns, int):
            return False
        key = memo.key(document)
        if key is None:
            return False
        if memo.allowed(key, now_ns) is not None:  # the gateway would not have asked
            return not fresh.allow or fresh.error is not None
        memo.remember(key, now_ns, fresh)
        return False


def _reasons(result: Mapping[str, Any]) -> list[str]:
    # The shipped policy sorts its reasons; a candidate that only reorders them
    # has not changed what the user is told.
    reasons = result.get("reasons")
    return sorted(r for r in reasons if isinstance(r, str)) if isinstance(reasons, list) else []
