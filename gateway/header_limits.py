"""Request header caps: too many or too large header fields are refused with a 431
(and logged) before anything else reads them.

Two limits, in this order: aiohttp's parser (``parser_limits``: a field over
16 KiB, or more header lines than the gateway's cap plus a margin) answers a
plain 400 itself, before the gateway sees the request, so that is not a
decision-log event; the gateway's cap (``limits.max_request_headers`` and
``limits.max_request_header_bytes``) is lower and bites first for everything in
between, as a logged refusal.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config import LimitsConfig

# aiohttp's own hard limits. A field (name + value) over this is a 400 from aiohttp.
MAX_FIELD_SIZE = 16384
# Header lines aiohttp still parses above the gateway's cap, so that a request just
# over it gets the gateway's logged 431 (at the default cap: aiohttp's own default,
# 128). Parsed header bytes stay bounded by lines x MAX_FIELD_SIZE.
_PARSER_MARGIN = 28


def parser_limits(limits: LimitsConfig) -> dict[str, int]:
    """aiohttp ``handler_args`` for its header parser."""
    return {
        "max_field_size": MAX_FIELD_SIZE,
        "max_headers": limits.max_request_headers + _PARSER_MARGIN,
    }


def header_overflow(raw_headers: Sequence[tuple[bytes, bytes]], limits: LimitsConfig) -> str | None:
    """Why these header fields are too many or too large, or None if they fit."""
    count = len(raw_headers)
    if count > limits.max_request_headers:
        return f"{count} header fields; at most {limits.max_request_headers}"
    # Name, value, ": " and CRLF: roughly the bytes on the wire.
    size = sum(len(name) + len(value) for name, value in raw_headers) + 4 * count
    if size > limits.max_request_header_bytes:
        return f"{size} bytes of header fields; at most {limits.max_request_header_bytes}"
    return None
