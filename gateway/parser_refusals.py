"""What aiohttp's parser found wrong with a request it refused, in words never quoting it."""

from __future__ import annotations

import re

from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    ContentLengthError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)

# The parser's messages quote the bytes it choked on (an Authorization header
# with a stray control byte, a token in the target), and the reason of a refusal
# goes to the decision log, every SIEM sink and the server log unmasked. So a
# reason is built only from the parts of a message known to be the parser's own
# words; a message of any other shape gets a description of its kind alone.

# llhttp (aiohttp's C parser): "<llhttp's reason>:\n\n  b'<the line>'\n  <spaces>^",
# after "Bad status line:\n  " for the request line. The reason is a constant of
# llhttp's; the request's bytes are only ever in the quoted line and below it.
_LLHTTP = re.compile(
    r"(?:Bad status line:\n  )?(?P<what>[^\n]+?):\n\n  b(?P<q>['\"])[^\n]*(?P=q)\n *\^",
)
# llhttp's reasons, word for word (its source, as aiohttp 3.14 bundles it). Only
# these are taken from a message of llhttp's shape: aiohttp's pure-Python parser
# raises some errors with the client's bytes as the whole message (a chunk-size
# line), and a client can shape those like llhttp's. A reason a newer llhttp adds
# is described by its kind until it is listed here.
_LLHTTP_REASONS = frozenset(
    {
        "Chunk size overflow",
        "Content-Length can't be present with Transfer-Encoding",
        "Content-Length overflow",
        "Data after `Connection: close`",
        "Duplicate Content-Length",
        "Empty Content-Length",
        "Expected CRLF",
        "Expected CRLF after version",
        "Expected HTTP/, RTSP/ or ICE/",
        "Expected HTTP/2 Connection Preface",
        "Expected LF after CR",
        "Expected LF after chunk data",
        "Expected LF after chunk size",
        "Expected LF after headers",
        "Expected SOURCE method for ICE/x.x request",
        "Expected dot",
        "Expected space after method",
        "Expected space after version",
        "Invalid EOF state",
        "Invalid HTTP version",
        "Invalid `Transfer-Encoding` header value",
        "Invalid char in url fragment start",
        "Invalid char in url path",
        "Invalid char in url query",
        "Invalid character in Content-Length",
        "Invalid character in chunk extensions",
        "Invalid character in chunk extensions name",
        "Invalid character in chunk extensions quote value",
        "Invalid character in chunk extensions quoted value",
        "Invalid character in chunk extensions value",
        "Invalid character in chunk size",
        "Invalid characters in url",
        "Invalid header field char",
        "Invalid header token",
        "Invalid header value char",
        "Invalid major version",
        "Invalid method encountered",
        "Invalid method for HTTP/x.x request",
        "Invalid method for RTSP/x.x request",
        "Invalid minor version",
        "Invalid quoted-pair in chunk extensions quoted value",
        "Invalid response status",
        "Invalid status code",
        "Invalid word encountered",
        "Missing expected CR after chunk data",
        "Missing expected CR after chunk extension name",
        "Missing expected CR after chunk extension value",
        "Missing expected CR after chunk size",
        "Missing expected CR after header value",
        "Missing expected CR after response line",
        "Missing expected LF after header value",
        "Pause on CONNECT/Upgrade",
        "Pause on PRI/Upgrade",
        "Request has invalid `Transfer-Encoding`",
        "Transfer-Encoding can't be present with Content-Length",
        "Unexpected char in url schema",
        "Unexpected char in url server",
        "Unexpected space after start line",
        "Unexpected start char in url",
        "Unexpected whitespace after header value",
    }
)

# Messages aiohttp raises word for word, quoting nothing.
_FIXED = frozenset(
    {
        "Bad line ending, expected CRLF",
        "Data after `Connection: close`",
        "Missing 'Host' header in request.",
        "Not enough data to satisfy transfer length header.",
        "Received HTTPS traffic on an HTTP port",
        "Request has invalid `Transfer-Encoding`",
        "Too many headers received",
        "Too many trailers received",
        "Transfer-Encoding can't be present with Content-Length",
    }
)
# aiohttp's own words around a number or a header name it checks against a list.
_LINE_TOO_LONG = re.compile(r"Got more than (\d{1,12}) bytes when reading")
_CONTENT_LENGTH_SHORT = re.compile(
    r"Not enough data to satisfy content length header \(received \d{1,20} of \d{1,20} bytes\)\."
)
_DUPLICATE = re.compile(r"Duplicate '([A-Za-z-]{1,40})' header found\.")
_BAD_HEADER_NAMED = re.compile(r"Invalid HTTP header: '([A-Za-z0-9-]{1,40})'")
# Header names aiohttp refuses twice (its SINGLETON_HEADERS) or names itself.
_NAMED_HEADERS = frozenset(
    {
        "content-length",
        "content-location",
        "content-range",
        "content-type",
        "etag",
        "host",
        "max-forwards",
        "sec-websocket-key1",
        "server",
        "transfer-encoding",
        "user-agent",
    }
)

# What is said of a message not recognised above, most specific kind first.
_KINDS: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (LineTooLong, "Line too long"),
    (InvalidHeader, "Invalid HTTP header"),
    (BadHttpMethod, "Bad HTTP method"),
    (BadStatusLine, "Bad request line"),
    (InvalidURLError, "Invalid request target"),
    (TransferEncodingError, "Invalid transfer encoding"),
    (ContentLengthError, "Body shorter than its Content-Length"),
    (ContentEncodingError, "Invalid content encoding"),
    (BadHttpMessage, "Bad HTTP message"),
)


def describe(exc: HttpProcessingError) -> str:
    """What the parser found wrong, for a SOC analyst ("Invalid header value char"),
    without a byte of the request: a refusal's reason is never masked."""
    said = exc.message or ""
    llhttp = _LLHTTP.fullmatch(said)
    if llhttp and llhttp["what"] in _LLHTTP_REASONS:
        return llhttp["what"]
    if said in _FIXED or _CONTENT_LENGTH_SHORT.fullmatch(said):
        return said.rstrip(".")
    if isinstance(exc, LineTooLong) and (too_long := _LINE_TOO_LONG.match(said)):
        return f"Line too long (over {too_long[1]} bytes)"
    named = _DUPLICATE.fullmatch(said) or _BAD_HEADER_NAMED.fullmatch(said)
    if named and named[1].lower() in _NAMED_HEADERS:
        return said.rstrip(".")
    for kind, words in _KINDS:
        if isinstance(exc, kind):
            return words
    return "Unreadable HTTP request"
