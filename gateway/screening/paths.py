"""Request path normalization: reject what could be read two ways, don't guess.

The policy must see exactly the path the upstream will get. So percent-encoded
unreserved characters are decoded (`%7E` -> `~`), every other encoding is kept
(upper-cased), and anything an upstream might resolve differently from us is
refused:

- a fragment (`#`): a client never sends one, and a URL parser on the way to
  the upstream would cut the path there;
- encoded `/` or `\\`, raw backslashes, `.` and `..` segments (raw or
  encoded), empty segments (`//`), NUL and other control characters, bad
  percent-encoding, invalid or overlong UTF-8, raw non-ASCII bytes;
- double encoding: an encoded `%` followed by two hex digits (`%2572`, `%252e`)
  or by `u` and four (`%25u0072`, IIS and .NET's `%uXXXX`), which a backend that
  decodes twice reads as another character (`r`, `.`). An encoded `%` followed by
  anything else (`100%25`, `%25zz`) is a literal `%` however often it is decoded;
- path parameters (`;` raw or encoded: Tomcat, Jetty and Spring drop `;x=1`
  and read `..;` as `..`), unless the route opts in with `path_params: allow`;
  then the policy's segments have the parameters stripped and the upstream
  gets the original;
- segments ending in `.` or whitespace (IIS trims them: `admin.` is `admin`), or
  starting with whitespace (a backend that strips the segment reads past it);
- look-alikes of ASCII: a non-ASCII character whose case folding, upper or lower
  case or NFKC form holds an ASCII character (U+017F long s -> S, U+0131 dotless
  i -> I, the Kelvin sign -> k, fullwidth letters and full stop, ligatures such
  as U+FB01 fi, sharp s -> ss): Java's equalsIgnoreCase, case-insensitive regexes
  with Unicode case and NFKC normalisation read `refun%C5%BF` as `refuns` while
  the policy's lower() does not;
- invisible format characters (Unicode category Cf: zero-width space and joiners,
  bidi controls, soft hyphen), which a backend may drop.
Other non-ASCII (`café`, `日本`) is a path like any other.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%(?P<hex>.{0,2})", re.DOTALL)
_HEX = frozenset("0123456789abcdefABCDEF")
# One search, not a loop over the target's characters in Python (0.5 ms for 8 KiB).
_CONTROL_OR_SPACE = re.compile("[\x00-\x20\x7f]")
# In a normalized path every '%' starts a triplet, so this only matches an encoded
# '%' whose next characters would decode again.
_DOUBLE_ENCODED = re.compile(r"%25(?:[0-9A-Fa-f]{2}|[uU][0-9A-Fa-f]{4})")
MAX_PATH_BYTES = 8192
# An escape that decodes to a query separator: a query holding one can't be
# decoded whole and then split.
_ENCODED_SEPARATOR = re.compile("%(?:26|3[Dd])")


class PathRejected(ValueError):
    """The request path is refused; the message says why, for the 400 body."""


@dataclass(frozen=True)
class NormalizedPath:
    path: str  # normalized, without the query: exactly what the upstream gets
    query: str  # raw query string, without '?'
    segments: tuple[str, ...]  # decoded segments, parameters stripped: the policy's parsed_path
    has_params: bool  # a segment carries `;parameters` (refused unless the route allows)
    routing_path: str  # `path` with the parameters stripped, for route matching

    @property
    def path_with_query(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def parsed_query(self) -> dict[str, list[str]]:
        """The policy's parsed_query: what `parse_qs(query, keep_blank_values=True)`
        answers (`&`-separated, empty pieces skipped, `+` read as a space, then
        percent-decoded as UTF-8 with U+FFFD for what is not), at a fraction of
        its cost: parse_qs makes two unquote calls and a tuple for every piece
        (~1 ms for the 1,000 pieces any client may send), an unquote call costs
        ~1.5 µs however short its text, so here `+` is replaced in one pass and the
        whole query is unquoted in one call, then split.

        Decoding first gives the same pieces as decoding each: no escape spans a
        raw `&` or `=` (neither is a hex digit), and a UTF-8 decoder meeting an
        ASCII byte inside a sequence replaces what came before it and goes on
        from that byte, as it does at the end of a piece (`a=%C3&b=%A9` is two
        U+FFFD). Only a decoded `&` or `=` (`%26`, `%3D`) would be read as a
        separator: such a query is decoded piece by piece."""
        query = self.query.replace("+", " ") if "+" in self.query else self.query
        piece_by_piece = "%" in query and _ENCODED_SEPARATOR.search(query) is not None
        if "%" in query and not piece_by_piece:
            query = unquote(query)
        return _parsed_pairs(query, piece_by_piece)


def _parsed_pairs(query: str, piece_by_piece: bool) -> dict[str, list[str]]:
    """A query's `&`-separated `name=value` pairs (empty ones skipped), each name's
    values in order. ``piece_by_piece`` (a query holding `%26` or `%3D`, `+`
    already read as spaces): each name and value holding a `%` is unquoted on
    its own."""
    parsed: dict[str, list[str]] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        if piece_by_piece:
            if "%" in name:
                name = unquote(name)
            if "%" in value:
                value = unquote(value)
        values = parsed.get(name)
        if values is None:
            parsed[name] = [value]
        else:
            values.append(value)
    return parsed


def query_overflow(query: str, limit: int) -> str | None:
    """Why `query` (without '?') holds too many parameters, or None if it fits.

    Every piece between separators counts, empty ones too (Go's ParseQuery counts
    so): each costs the parse, the policy's input and the decision log's masking.
    `;` separates too, as the masking splits on it (Rack before 3, Java servlet
    containers), so `a=1;b=2` is two. Counted in C, before any of that work."""
    if not query:
        return None
    count = query.count("&") + query.count(";") + 1
    if count > limit:
        return f"{count} query parameters ('&' or ';' separated); at most {limit}"
    return None


def _decode_unreserved(match: re.Match[str]) -> str:
    digits = match.group("hex")
    if len(digits) != 2 or not set(digits) <= _HEX:
        raise PathRejected(f"bad percent-encoding {match.group(0)!r}")
    char = chr(int(digits, 16))
    if char in _UNRESERVED:
        return char
    if char in "/\\":
        raise PathRejected("encoded slash or backslash in path")
    if char == ";":
        raise PathRejected("encoded ';' in path")
    if char == "\0" or ord(char) < 0x20 or char == "\x7f":
        raise PathRejected("encoded control character in path")
    return "%" + digits.upper()


def normalize(raw_target: str) -> NormalizedPath:
    """Normalize a request target (`/a/b?q`), or raise PathRejected."""
    if len(raw_target.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise PathRejected("path too long")
    if "#" in raw_target:
        raise PathRejected("'#' in request target (a fragment is never sent to a server)")
    if not raw_target.isascii():
        raise PathRejected("non-ASCII character in request target (must be percent-encoded)")
    if _CONTROL_OR_SPACE.search(raw_target) is not None:
        raise PathRejected("control character or space in request target")
    raw_path, _, query = raw_target.partition("?")
    if not raw_path.startswith("/"):
        raise PathRejected("path must start with '/'")
    if "\\" in raw_path:
        raise PathRejected("backslash in path")
    path = _PERCENT.sub(_decode_unreserved, raw_path)
    # Checked after decoding unreserved characters: `%25%37%32` reaches the upstream
    # as `%2572`.
    double = _DOUBLE_ENCODED.search(path) if "%25" in path else None
    if double is not None:
        raise PathRejected(
            f"double percent-encoding {double.group(0)!r} in path"
            " (a backend that decodes twice reads another character)"
        )
    raw_segments = path[1:].split("/")
    has_params = ";" in path
    segments = [s.partition(";")[0] for s in raw_segments] if has_params else raw_segments
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            raise PathRejected("'.' or '..' segment in path")
        if segment == "" and (index != last or raw_segments[index]):
            raise PathRejected("empty segment in path ('//' or a segment of only parameters)")
    routing_path = "/" + "/".join(segments) if has_params else path
    if "%" in path:
        try:
            segments = [_unquote_utf8(segment) for segment in segments]
        except UnicodeDecodeError as error:
            raise PathRejected("path is not valid UTF-8") from error
    for segment in segments:
        if segment and (segment[-1] == "." or segment[-1].isspace()):
            raise PathRejected("path segment ends in '.' or whitespace")
    if "%" in path:  # only a decoded segment can start with a space or be non-ASCII
        for segment in segments:
            if segment and segment[0].isspace():
                raise PathRejected("path segment starts with whitespace")
            if not segment.isascii():
                _refuse_look_alikes(segment)
    return NormalizedPath(path, query, tuple(segments), has_params, routing_path)


def _refuse_look_alikes(segment: str) -> None:
    for char in segment:
        if not char.isascii():
            problem = _look_alike(char)
            if problem is not None:
                raise PathRejected(f"{problem} (U+{ord(char):04X}) in path")


@functools.lru_cache(maxsize=4096)
def _look_alike(char: str) -> str | None:
    """Why a non-ASCII character is refused in a path segment, or None."""
    if unicodedata.category(char) == "Cf":
        return "invisible format character"
    forms = (char.casefold(), char.upper(), char.lower(), unicodedata.normalize("NFKC", char))
    if any(c.isascii() for form in forms for c in form):
        return "look-alike of an ASCII character under case folding or NFKC"
    return None


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
