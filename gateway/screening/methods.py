"""Methods the gateway never forwards, whatever the policy says.

TRACE (RFC 9110 9.3.8) asks the origin to send back, as its answer, the request
it received: behind the gateway, that is the request as forwarded, with the
gateway's signed identity assertion and the headers the decision added, handed
to whoever sent it (cross-site tracing, when a page's script can read the
answer). nginx answers it with 405 whatever its configuration, and so does the
gateway, logged, before the policy is asked. (IIS's TRACK, and a method in lower
case, never get this far: aiohttp's parser knows neither, a logged 400.)
"""

from __future__ import annotations

from gateway.screening.headers import Refusal

NEVER_FORWARDED = frozenset({"TRACE"})


def method_refusal(method: str) -> Refusal | None:
    """Why a request with this method is refused, or None."""
    if method not in NEVER_FORWARDED:
        return None
    return Refusal(405, "method_not_allowed", f"{method} would echo the forwarded request back")
