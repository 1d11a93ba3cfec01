"""Request headers refused before routing: too many or too large, bytes that are
not UTF-8, and a Host that is not a host[:port].

Every request, proxied or for the gateway's own pages, passes `screen` first, so
what the policy, the log and X-Forwarded-Host see is text a SIEM can read.

Header caps come in two layers, in this order: aiohttp's parser (``parser_limits``:
a field over 16 KiB, or more header lines than the gateway's cap plus a margin)
answers a plain 400 itself, before the gateway sees the request, so that is not a
decision-log event; the gateway's cap (``limits.max_request_headers`` and
``limits.max_request_header_bytes``) is lower and bites first for everything in
between, as a logged 431 refusal.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # gateway.config reads route hosts with host_name
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


# Their values are read by the identity step only (a token, a session cookie), are
# never logged (masked) and never judged as text: undecodable bytes there are a bad
# token (401 invalid_token) or no session, as for any other garbage.
_IDENTITY_HEADERS = frozenset({b"authorization", b"cookie"})
# RFC 3986 3.2.2 host, stricter for reg-name: letters, digits, '-', '.', '_', '~'.
# Sub-delims and percent-encoding are legal there but never in a DNS name, and
# only serve header or link injection downstream (X-Forwarded-Host).
_REG_NAME = re.compile(r"[A-Za-z0-9._~-]{1,253}")
_PORT = re.compile(r"[0-9]{0,5}")
_IPV_FUTURE = re.compile(r"v[0-9A-Fa-f]+\.[A-Za-z0-9._~!$&'()*+,;=:-]+")
MAX_HOST_CHARS = 260


class Refusal(NamedTuple):
    status: int
    rule: str
    reason: str


def screen(
    raw_headers: Sequence[tuple[bytes, bytes]], host: str | None, limits: LimitsConfig
) -> Refusal | None:
    """Why the request's headers are refused, or None. `host` is the Host header
    as received (None when an HTTP/1.0 request has none)."""
    overflow = header_overflow(raw_headers, limits)
    if overflow is not None:
        return Refusal(431, "headers_too_large", overflow)
    for name, value in raw_headers:
        # The fast path: nearly every header is ASCII.
        if (value.isascii() and name.isascii()) or name.lower() in _IDENTITY_HEADERS:
            continue
        problem = _undecodable(name, value)
        if problem is not None:
            return Refusal(400, "bad_header", problem)
    if host is not None:
        problem = bad_host(host)
        if problem is not None:
            return Refusal(400, "bad_host", problem)
    return None


def _undecodable(name: bytes, value: bytes) -> str | None:
    shown = name[:64].decode("utf-8", "backslashreplace")
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return f"header name {shown!r} is not valid UTF-8"
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"header {shown!r}: value is not valid UTF-8 (byte {error.start})"
    return None


@functools.lru_cache(maxsize=512)
def bad_host(host: str) -> str | None:
    """Why `host` is not a valid Host header value (RFC 9110 7.2: uri-host [":" port]),
    or None. Cached: a gateway sees the same few hosts again and again."""
    if not host:
        return "empty Host header"
    if len(host) > MAX_HOST_CHARS:
        return f"Host header longer than {MAX_HOST_CHARS} characters"
    if host.startswith("["):
        literal, bracket, port = host[1:].partition("]")
        if not bracket or not _ip_literal(literal):
            return "Host is not a valid IP literal ('[' IPv6 ']')"
        if port and not (port.startswith(":") and _valid_port(port[1:])):
            return "Host has an invalid port"
        return None
    name, colon, port = host.rpartition(":") if ":" in host else (host, "", "")
    if colon and not _valid_port(port):
        return "Host has an invalid port"
    if not _REG_NAME.fullmatch(name):
        return "Host is not a host name or IPv4 address (letters, digits, '-', '.', '_', '~')"
    return None


@functools.lru_cache(maxsize=512)
def host_name(host: str) -> str:
    """The host that `host` (a Host header value that passed `bad_host`, or a route's
    `host`) names, as routes are compared: without its port, in lower case, and an
    IPv6 literal kept in its brackets in RFC 5952 form (`[0:0::1]:8443` is `[::1]`),
    and a DNS name without the one trailing dot of its fully qualified form
    (`gw.example.` is `gw.example`, as DNS resolves both alike and Envoy's
    strip_trailing_host_dot reads them)."""
    if host.startswith("["):
        literal, bracket, _ = host[1:].partition("]")
        if bracket and not _IPV_FUTURE.fullmatch(literal):
            with contextlib.suppress(ValueError):
                return f"[{ipaddress.IPv6Address(literal).compressed}]"
        return f"[{literal.lower()}]" if bracket else host.lower()
    name = host.rpartition(":")[0] if ":" in host else host
    return (name[:-1] if name.endswith(".") else name).lower()


def _valid_port(port: str) -> bool:
    return _PORT.fullmatch(port) is not None and (not port or int(port) <= 65535)


def _ip_literal(literal: str) -> bool:
    if _IPV_FUTURE.fullmatch(literal):
        return True
    if "%" in literal:  # a zone id names an interface of the client's host, not ours
        return False
    try:
        ipaddress.IPv6Address(literal)
    except ValueError:
        return False
    return True
