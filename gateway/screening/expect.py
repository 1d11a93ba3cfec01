"""`Expect` (RFC 9110 10.1.1) answered by the gateway, after it has decided.

aiohttp answers `Expect` in the route's expect handler, which runs before any
handler or middleware: `100 Continue` went out before the gateway had screened,
routed or decided the request (a client the policy then refused had been told to
send its body), and anything but `100-continue` got aiohttp's own 417, a request
answered with no decision event. So every route's expect handler does nothing
(`decide_first`), and so is the one of a target no route matches
(gateway/router.py); an unknown expectation is a logged refusal like any other,
and `100 Continue` is sent only when the body is about to be read: after an
allow for a proxied request, after the checks for one of the gateway's own pages.
"""

from __future__ import annotations

from aiohttp import HttpVersion11, web

from gateway.screening.headers import Refusal

CONTINUE = "100-continue"
# Set on a request once its client was told to send the body.
CONTINUED: web.RequestKey[bool] = web.RequestKey("portcullis_continued", bool)


async def decide_first(request: web.Request) -> None:
    """The expect handler of every route: nothing before the gateway has decided."""


def _expectations(request: web.Request) -> list[str]:
    # An HTTP/1.0 client may not know 100 (RFC 9110 10.1.1: a server ignores it).
    if request.version < HttpVersion11:
        return []
    values = request.headers.getall("Expect", [])
    return [item.strip().lower() for value in values for item in value.split(",")]


def expectation_refusal(request: web.Request) -> Refusal | None:
    """Why the request's `Expect` can't be met (a 417), or None."""
    unknown = [item for item in _expectations(request) if item != CONTINUE]
    if not unknown:
        return None
    return Refusal(
        417, "expectation_failed", f"Expect: {unknown[0][:40]!r} (only 100-continue is understood)"
    )


async def send_continue(request: web.Request) -> None:
    """Tell a client waiting for `100 Continue` to send its body, as aiohttp's own
    expect handler does; called once, just before the body is read."""
    if not request.body_exists or CONTINUE not in _expectations(request):
        return
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the answer itself has not begun
    request[CONTINUED] = True


def close_if_body_kept(request: web.Request, response: web.StreamResponse) -> None:
    """Answered without `100 Continue`, a client keeps its body (RFC 9110 10.1.1)
    or sends it late: on a kept-alive connection its next request would be read as
    that body. So the connection closes after the answer (which says so)."""
    if (
        request.body_exists
        and not request.get(CONTINUED, False)
        and CONTINUE in _expectations(request)
    ):
        response.force_close()
