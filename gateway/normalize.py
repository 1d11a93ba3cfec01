"""Request path normalization: reject what could be read two ways, don't guess.

The policy must see exactly the path the upstream will get. So percent-encoded
unreserved characters are decoded (`%7E` -> `~`), every other encoding is kept
(upper-cased), and anything an upstream might resolve differently from us is
refused: encoded `/` or `\\`, `.` and `..` segments (raw or encoded), empty
segments (`//`), NUL and other control characters, bad percent-encoding and
invalid UTF-8.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%(?P<hex>.{0,2})", re.DOTALL)
_HEX = frozenset("0123456789abcdefABCDEF")
MAX_PATH_BYTES = 8192


class PathRejected(ValueError):
    """The request path is refused; the message says why, for the 400 body."""


@dataclass(frozen=True)
class NormalizedPath:
    path: str  # normalized, without the query
    query: str  # raw query string, without '?'
    segments: tuple[str, ...]  # decoded segments, for the policy's parsed_path

    @property
    def path_with_query(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def parsed_query(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True)


def _decode_unreserved(match: re.Match[str]) -> str:
    digits = match.group("hex")
    if len(digits) != 2 or not set(digits) <= _HEX:
        raise PathRejected(f"bad percent-encoding {match.group(0)!r}")
    char = chr(int(digits, 16))
    if char in _UNRESERVED:
        return char
    if char in "/\\":
        raise PathRejected("encoded slash or backslash in path")
    if char == "\0" or ord(char) < 0x20 or char == "\x7f":
        raise PathRejected("encoded control character in path")
    return "%" + digits.upper()


def normalize(raw_target: str) -> NormalizedPath:
    """Normalize a request target (`/a/b?q`), or raise PathRejected."""
    if len(raw_target.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise PathRejected("path too long")
    raw_path, _, query = raw_target.partition("?")
    if not raw_path.startswith("/"):
        raise PathRejected("path must start with '/'")
    if "\\" in raw_path:
        raise PathRejected("backslash in path")
    if any(ord(c) < 0x20 or c == "\x7f" for c in raw_target):
        raise PathRejected("control character in path")
    if not raw_path.isascii():
        raise PathRejected("non-ASCII character in path (must be percent-encoded)")
    path = _PERCENT.sub(_decode_unreserved, raw_path)
    segments = path[1:].split("/")
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            raise PathRejected("'.' or '..' segment in path")
        if segment == "" and index != len(segments) - 1:
            raise PathRejected("empty segment ('//') in path")
    if "%" not in path:
        return NormalizedPath(path, query, tuple(segments))
    decoded = []
    for segment in segments:
        try:
            decoded.append(_unquote_utf8(segment))
        except UnicodeDecodeError as error:
            raise PathRejected("path is not valid UTF-8") from error
    return NormalizedPath(path, query, tuple(decoded))


def _unquote_utf8(segment: str) -> str:
    raw = bytearray()
    index = 0
    while index < len(segment):
        char = segment[index]
        if char == "%":
            raw.append(int(segment[index + 1 : index + 3], 16))
            index += 3
        else:
            raw.extend(char.encode("utf-8"))
            index += 1
    return raw.decode("utf-8", "strict")
