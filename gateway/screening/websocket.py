"""A WebSocket opening handshake that can't be answered (RFC 6455 4.2.1), refused
before the policy is asked or an upstream is contacted.

aiohttp's WebSocketResponse answers a bad handshake with a plain 400 of its own,
after the gateway had logged an allow and opened the upstream's WebSocket: the
decision log said allow for a request that got a 400. Refused here, it is one
logged refusal, and the client gets the status the log records.
"""

from __future__ import annotations

import base64

from aiohttp import HttpVersion11, web

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
