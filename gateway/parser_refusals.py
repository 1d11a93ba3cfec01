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
# What llhttp's reasons are made of ("Expected HTTP/, RTSP/ or ICE/", "Data after
# `Connection: close`"): anything else is not one of them.
_WORDS = re.compile(r"[A-Za-z][A-Za-z0-9 ,./:'`_()-]{0,99}")

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
    if llhttp and _WORDS.fullmatch(llhttp["what"]):
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
