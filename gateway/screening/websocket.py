"""WebSocket opening handshakes refused before the policy is asked or an upstream
is contacted: one that can't be answered (RFC 6455 4.2.1), and one another web
site's page opened on a signed-in browser's credentials.

aiohttp's WebSocketResponse answers a bad handshake with a plain 400 of its own,
after the gateway had logged an allow and opened the upstream's WebSocket: the
decision log said allow for a request that got a 400. Refused here, it is one
logged refusal, and the client gets the status the log records.

Cross-site WebSocket hijacking: a page's script may open a WebSocket to any
host, and the browser attaches the credentials it holds for that host, with no
same-origin policy on what the script then reads and sends. The session cookie
is SameSite=Lax, which a sibling subdomain's page (same site) still gets sent;
a client certificate installed in the browser is presented to any page's
request. The browser names the page in Origin (RFC 6455 4.1, 10.2), a header no
script can set; a handshake on either credential from another origin is refused
(as gorilla/websocket's and Rails Action Cable's defaults do), so the upstream,
which sees only the gateway's assertion of the user, never has to tell.
"""

from __future__ import annotations

import base64
from collections.abc import Collection

from aiohttp import HttpVersion11, web

from gateway.identity import BROWSER_CREDENTIALS, Identity
from gateway.screening.headers import Refusal

# The one version this gateway speaks (and asks its upstreams for): RFC 6455 4.2.2
# answers any other with 426 and the versions the server does speak.
VERSION = "13"


def handshake_refusal(request: web.Request) -> Refusal | None:
    """Why a WebSocket upgrade request (gateway.forward.is_websocket) can't be
    answered with one, or None. At least as strict as aiohttp's own checks, so
    what passes here never becomes its unlogged 400."""
    if request.method != "GET":
        return Refusal(400, "websocket_handshake", "a WebSocket handshake must be a GET")
    if request.version < HttpVersion11:
        return Refusal(400, "websocket_handshake", "a WebSocket handshake needs HTTP/1.1")
    if request.body_exists:
        # The upstream's handshake would carry the client's Content-Length with no
        # body after it (aiohttp's client sends none): the upstream would take the
        # first bytes of the WebSocket stream for that body and read every frame
        # after them out of step.
        return Refusal(400, "websocket_handshake", "a WebSocket handshake has no body")
    version = request.headers.get("Sec-WebSocket-Version")
    if version != VERSION:
        shown = "no Sec-WebSocket-Version" if version is None else f"{version[:20]!r}"
        return Refusal(
            426, "websocket_handshake", f"Sec-WebSocket-Version {VERSION} only, got {shown}"
        )
    key = request.headers.get("Sec-WebSocket-Key")
    if key is None:
        return Refusal(400, "websocket_handshake", "no Sec-WebSocket-Key")
    try:
        nonce = base64.b64decode(key, validate=True)
    except ValueError:  # binascii.Error, or a key that isn't ASCII
        nonce = b""
    if len(nonce) != 16:
        return Refusal(400, "websocket_handshake", "Sec-WebSocket-Key is not 16 bytes in base64")
    return None


# The default port of each scheme, which an origin (RFC 6454 6.1) leaves out.
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def cross_origin_refusal(
    request: web.Request, identity: Identity, scheme: str, allowed: Collection[str] = ()
) -> Refusal | None:
    """Why a WebSocket handshake may not use the credential it came with, or None.

    Only the credentials a browser attaches by itself are checked: the session
    cookie and a client certificate (a bearer token is never sent by a browser
    on its own, and a page's script can't set Authorization on a WebSocket).
    The page's Origin must be the gateway's own: `scheme` (the one the browser
    used: sign_in.external_url's, else the connection's) and the Host the
    request came to; or, exactly as written, one of `allowed` (the app's
    `allowed_origins` in the catalogue: its own front end on another host,
    which the policy lets send writes too). A session with no Origin is refused
    too, as every browser sends one; a client certificate with none is a
    service's, and passes. An Origin sent twice, or `null` (a sandboxed frame,
    a file:// page), is no page of the gateway's."""
    if identity.method not in BROWSER_CREDENTIALS:
        return None
    origins = request.headers.getall("Origin", [])
    if not origins:
        if identity.method == "mtls":
            return None
        return Refusal(403, "websocket_origin", "a WebSocket on a session needs the page's Origin")
    credential = "session" if identity.method == "session" else "client certificate"
    if len(origins) > 1:
        return Refusal(403, "websocket_origin", "Origin sent more than once")
    own = _origin(scheme, request.host)
    if origins[0] != "null" and origins[0] in allowed:
        return None
    given_scheme, separator, authority = origins[0].partition("://")
    if not separator or _origin(given_scheme, authority) != own:
        return Refusal(
            403,
            "websocket_origin",
            f"a page of {origins[0][:100]!r} may not open a WebSocket on the gateway's "
            f"{credential} (only {own})",
        )
    return None


def _origin(scheme: str, authority: str) -> str:
    """An origin as RFC 6454 serializes it: lower case, no default port."""
    scheme, authority = scheme.lower(), authority.lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default and authority.endswith(default):
        authority = authority[: -len(default)]
    return f"{scheme}://{authority}"
