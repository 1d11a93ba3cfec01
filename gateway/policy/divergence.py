"""How two decisions on the same input differ: the change kinds replay and shadow mode report.

Every compared pair is either unchanged or exactly one kind, checked in this
order, so totals add up:

- ``error``: the candidate could not evaluate (an engine error, a timeout, an
  undefined or malformed answer): the gateway would have denied, fail closed;
- ``allow-to-deny`` / ``deny-to-allow``: the allow bit flipped;
- ``step-up``: still a deny, but the re-authentication asked for (``acr``,
  ``max_age``) changed, appeared or went away;
- ``reasons``: same allow and step-up, but a different HTTP status, reasons or
  response headers.

Fields of ``before`` named ``unknown`` (a logged result the log masked there) are
not compared: what the policy answered in them is not known.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

ERROR = "error"
ALLOW_TO_DENY = "allow-to-deny"
DENY_TO_ALLOW = "deny-to-allow"
STEP_UP = "step-up"
REASONS = "reasons"
KINDS = (ALLOW_TO_DENY, DENY_TO_ALLOW, STEP_UP, REASONS, ERROR)


def divergence(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    *,
    after_failed: bool = False,
    unknown: Collection[str] = (),
) -> str | None:
    """The kind of change from ``before`` to ``after`` (decision results as the
    contract spells them, after the gateway's fail-closed reading), or None."""
    if after_failed:
        return ERROR
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


def _reasons(result: Mapping[str, Any]) -> list[str]:
    # The shipped policy sorts its reasons; a candidate that only reorders them
    # has not changed what the user is told.
    reasons = result.get("reasons")
    return sorted(r for r in reasons if isinstance(r, str)) if isinstance(reasons, list) else []
