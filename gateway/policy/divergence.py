"""How two decisions on the same input differ: the change kinds replay and shadow mode report.

Every compared pair is either unchanged or exactly one kind, checked in this
order, so totals add up:

- ``error``: the candidate could not evaluate (an engine error, a timeout, an
  undefined or malformed answer): the gateway would have denied, fail closed;
- ``allow-to-deny`` / ``deny-to-allow``: the allow bit flipped;
- ``step-up``: still a deny, but the re-authentication asked for (``acr``,
  ``max_age``) changed, appeared or went away;
- ``validity``: the same allow, but the decision memo would go on serving it
  after the policy itself stops allowing: its ``valid_until_ns`` runs past its real
  boundary (checked by :func:`served_stale`, a second evaluation at the last
  moment the memo would reuse the allow). An earlier ``valid_until_ns`` only
  costs evaluations: not a change;
- ``reasons``: same allow and step-up, but a different HTTP status, reasons or
  response headers.

Fields of ``before`` named ``unknown`` (a logged result the log masked there) are
not compared: what the policy answered in them is not known.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from gateway.policy.decision import Decision, decide
from gateway.policy.memo import reuse_end_ns
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
    ``after_stale``: :func:`served_stale` found the memo would serve ``after``'s
    allow past the policy's own answer."""
    if after_failed:
        return ERROR
    if unknown:
        before = {**before, **{name: after.get(name) for name in unknown}}
    if after_stale and before.get("allow") is True and after.get("allow") is True:
        return VALIDITY
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


async def served_stale(engine: PolicyEngine, document: dict[str, Any], decided: Decision) -> bool:
    """Whether the memo would serve ``decided`` (an allow of ``engine``'s on
    ``document``) at a moment the policy itself no longer allows the same request:
    the policy's ``valid_until_ns`` is later than its real boundary. Only asked for
    a policy whose memo is on (DecisionMemo.for_engine)."""
    if not decided.allow or decided.error is not None:
        return False
    now_ns = document.get("now_ns")
    if not isinstance(now_ns, int):
        return False
    end = reuse_end_ns(decided.valid_until, now_ns)
    if end is None or end - 1 == now_ns:
        return False
    # The last moment the memo would still reuse it.
    later = await decide(engine, {**document, "now_ns": end - 1}, decided.decision_id)
    return not later.allow or later.error is not None


def _reasons(result: Mapping[str, Any]) -> list[str]:
    # The shipped policy sorts its reasons; a candidate that only reorders them
    # has not changed what the user is told.
    reasons = result.get("reasons")
    return sorted(r for r in reasons if isinstance(r, str)) if isinstance(reasons, list) else []
