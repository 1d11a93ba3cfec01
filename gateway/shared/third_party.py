"""Requests a page on another site can make a signed-in browser send: their denies
count toward no lockout, and they are rate-limited apart from the user's own.

The session cookie is SameSite=Lax: a browser sends it on any top-level GET
navigation, whoever started it (a link, `location =`, `window.open`, a GET form
on any web page), and on every request from a page of the same registrable
domain (a sibling subdomain's <img> as well). Each such request the policy
denies counted toward `lockout.after_denies`, so any page a member of staff
opened could lock them out of every app (and fill the SIEM with lockouts). The
browser says who started the request in Fetch Metadata's Sec-Fetch-Site, a
header no page can set or change; a deny it says another site caused is still
a deny, logged as one, but is not counted. A browser from before Fetch Metadata
still names the page in Origin (with every POST, and no page can set it either):
an Origin of another host says the same, as it does to the policy
(from_another_site) and to Go's CrossOriginProtection. Such pages could as well fill the
user's rate-limit bucket (`<img>` tags of a sibling subdomain), so these
requests have a bucket of their own (gateway/shared/check.py limit_for).
"""

from __future__ import annotations

from aiohttp import web

from gateway.audit.chain import NOT_COUNTED_LABEL
from gateway.identity import BROWSER_CREDENTIALS, Identity

# The decision-log label of a deny that was not counted; its value is the
# Sec-Fetch-Site the browser sent, or CROSS_ORIGIN. (Named in gateway/audit/chain.py, where the
# shipping formats read it too.)
LABEL = NOT_COUNTED_LABEL
# `same-site` too: a sibling subdomain (the marketing site, a shop on
# shop.<domain>, a hosted page under the company's domain) is a site other
# than the gateway's, and gets the Lax cookie sent with even an <img>.
OTHER_SITES = frozenset({"cross-site", "same-site"})
# The label's value when no Sec-Fetch-Site came and the Origin named another host
# (an older browser's page on a sibling subdomain, or on any site with a client
# certificate): which site is not known without the public suffix list.
CROSS_ORIGIN = "cross-origin"


def another_sites_request(request: web.Request, identity: Identity) -> str | None:
    """The Sec-Fetch-Site value (`cross-site` or `same-site`) when the browser says
    a page on another site made this request, authenticated by a credential the
    browser attaches by itself, or CROSS_ORIGIN when, without Sec-Fetch-Site, its
    Origin names another host; None for a deny that counts.

    Of the gateway's credentials, the session cookie and a client certificate
    installed in a browser are the ones it sends on its own, whichever page
    asks (gateway/screening/websocket.py; the policy's from_another_site); a
    bearer token (Authorization) is sent by the client that holds it, so its
    denies count whatever the headers say. A service's certificate sends no
    Sec-Fetch-Site, and its denies count. A request without Sec-Fetch-Site
    counts, to fail closed, unless its Origin names another host: browsers from
    before Fetch Metadata (Chrome 76, Firefox 90, Safari 16.4) send the page's
    Origin with every POST (so the policy refuses another host's by it, and an
    uncounted deny keeps a sibling subdomain's page from locking the user out
    with them), and clients holding a session cookie (a script, a stolen
    cookie) send neither, and a lockout is what stops them probing. A header
    sent twice, or with a value the standard does not have, is no browser's
    either, and counts. A client that sends `cross-site` or another host's
    Origin itself is not locked out (no header can tell it from a browser);
    its denies are still logged, labelled (LABEL), for the SIEM to see."""
    if identity.method not in BROWSER_CREDENTIALS:
        return None
    values = request.headers.getall("Sec-Fetch-Site", [])
    if not values:
        return CROSS_ORIGIN if _another_hosts_origin(request) else None
    if len(values) != 1 or values[0] not in OTHER_SITES:
        return None
    return values[0]


def _another_hosts_origin(request: web.Request) -> bool:
    """Whether the one Origin a browser sent names a host other than the request's
    Host, compared as the policy's origin_host does (scheme ignored, the rest
    exactly, as Go does); `null` (a sandboxed frame, which any page can make)
    is another. An empty Origin, or one sent twice, is no browser's."""
    origins = request.headers.getall("Origin", [])
    if len(origins) != 1 or not origins[0]:
        return False
    if origins[0] == "null":
        return True
    parts = origins[0].split("://")
    return len(parts) == 2 and bool(parts[1]) and parts[1] != request.host
