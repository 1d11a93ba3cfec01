"""The admin listener answers scripts, not web pages: a request a page made is refused.

The listener has no authentication (it binds to loopback or a pod IP behind a
NetworkPolicy), and its JSON-only admin API keeps a cross-site page from
posting to it. A page can still reach it through DNS rebinding: its own name,
re-resolved to 127.0.0.1 (an operator's `kubectl port-forward`, `portcullis
demo`) or to the pod IP, makes the page and the listener one origin, and the
browser then lets it post JSON and read the answers: revoke everyone, unlock a
locked-out user, list a user's sessions and addresses. Browsers say who made
a request (Fetch Metadata's Sec-Fetch-Site, and Origin on a POST); Prometheus,
the kubelet, curl and the CLI send neither. An address typed into the browser
(Sec-Fetch-Site: none, no Origin) is still answered, so /metrics opens in a tab.
"""

from __future__ import annotations

from aiohttp import web

from gateway.own_pages import Handler


@web.middleware
async def refuse_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    site = request.headers.get("Sec-Fetch-Site")
    if "Origin" in request.headers or (site is not None and site != "none"):
        reason = (
            "the admin listener answers scripts (Prometheus, curl), not requests a web page "
            "makes (Origin, Sec-Fetch-Site); open the address directly"
        )
        return web.json_response({"error": "page_request", "reason": reason}, status=403)
    return await handler(request)
