"""What one decision-log event may hold: secrets masked, its size bounded.

Runs when the event is queued (``DecisionLog.record``), after the policy
decided: the policy still sees the request as it came. Every change
is listed in the event, as OPA does for masking: ``masked`` holds the JSON
pointers whose value is ``**REDACTED**`` (wholly, or a query string's secret
values inside it; many under one parent are listed as the parent), ``truncated``
the pointers of shortened header values, of a shortened path, of parsed_query
when keys or values were left out or cut, and the headers object's own pointer
when headers past the per-event budget were left out. The caller's dicts are
never changed: containers on the way to a changed value are copied.
"""

from __future__ import annotations

import bisect
import collections
import functools
import itertools
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from gateway.audit.chain import REDACTED

if TYPE_CHECKING:
    from gateway.config import DecisionLogConfig

# Credential-bearing headers, masked in every event whatever the config says: a
# header whose name (lower case, `_` read as `-`) contains one of these.
ALWAYS_MASKED_HEADERS = ("authoriz", "authoris", "cookie", "x-portcullis-assertion")
# Header names that carry tokens and keys (`decision_log.mask_headers`): a header is
# masked when its name, lower case with `_` read as `-`, contains an entry. Covers
# X-Api-Key, X_Api_Key, X-Forwarded-Access-Token, X-Amzn-Oidc-Accesstoken,
# X-Goog-IAP-JWT-Assertion, X-Session-Token, Authorisation, ...
DEFAULT_MASKED_HEADERS = (
    "token",
    "secret",
    "password",
    "passwd",
    "api-key",
    "apikey",
    "session",
    "assertion",
    "credential",
    "signature",
    "ocp-apim-subscription-key",
    # X-Functions-Key (Azure Functions), X-Auth-Key (Cloudflare), X-Amz-Server-Side-
    # Encryption-Customer-Key...: masking a nonce too (Sec-WebSocket-Key) costs nothing.
    "-key",
)
# Query parameters that carry credentials (`decision_log.mask_query_params`). A name
# is compared percent-decoded, lower case, with `.`, `-`, `[` and `]` read as `_`
# (PHP reads `access.token` and `access_token[]` as access_token), and matches an
# entry it equals, a `_`-separated word of it that equals an entry (or the entry
# plus `id`), or, for entries of 5 or more characters, its end (`accesstoken`,
# `jsessionid`). OAuth (RFC 6749, 6750), OIDC, SAML, signed URLs (S3, GCS).
DEFAULT_MASKED_QUERY_PARAMS = (
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "key",
    "apikey",
    "accesskey",
    "session",
    "sessionid",
    "sessid",
    "assertion",
    "jwt",
    "bearer",
    "signature",
    "sig",
    "code",
    "auth",
    "authorization",
    "credential",
    "samlresponse",
)
DEFAULT_MAX_HEADER_VALUE_CHARS = 1024
DEFAULT_MAX_HEADER_CHARS = 4096
# The logged path (with its query) and parsed_query: a client chooses their size.
MAX_PATH_CHARS = 1024
MAX_QUERY_KEYS = 32
MAX_QUERY_VALUES = 8  # per key
MAX_QUERY_KEY_CHARS = 64
MAX_QUERY_VALUE_CHARS = 128
MAX_QUERY_CHARS = 1024  # keys and values of parsed_query in all
# A URL in a query value holding a URL...: looked into this deep, then masked whole.
MAX_URL_DEPTH = 4
# More masked pointers than this under one parent are listed as the parent.
MAX_POINTERS_PER_PARENT = 16

_HTTP = ("input", "attributes", "request", "http")
_HEADERS = (*_HTTP, "headers")
PATH_POINTER = "/input/attributes/request/http/path"
HOST_POINTER = "/input/attributes/request/http/host"
ID_POINTER = "/input/attributes/request/http/id"
REQUEST_LINE_POINTER = "/input/attributes/request/http/request_line"
# Fields of input.attributes.request.http masked whole when they hold a JWT.
_JWT_MASKED_FIELDS = (("host", HOST_POINTER), ("id", ID_POINTER))
HEADERS_POINTER = "/input/attributes/request/http/headers"
QUERY_POINTER = "/input/parsed_query"
SEGMENTS_POINTER = "/input/parsed_path"
# A JWT (JWS or JWE compact form: a base64url JSON header, `eyJ`, then a dot)
# anywhere in a value: the whole value is masked, whatever the header's name.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
# Headers that carry tokens in their value under a harmless name: browsers can't
# set Authorization on a WebSocket, so apps send `access_token, <token>` (or
# Kubernetes' `base64url.bearer.authorization.k8s.io.<token>`) as a subprotocol.
_TOKEN_CARRIERS = frozenset({"sec-websocket-protocol"})
_CARRIER_HINTS = re.compile(r"token|bearer|auth|jwt|key|secret|session", re.IGNORECASE)
_PARAM_SPLIT = re.compile(r"([&;])")
# A refused request line's words: it may hold tabs, or spaces in its target.
_WHITESPACE = re.compile(r"\s")
_WHITESPACE_SPLIT = re.compile(r"(\s+)")
_LINE_SEPARATOR_SPLIT = re.compile(r"([&;\s])")
# What a URL holds when it may hold a secret; a target without any is logged as it is.
_MAYBE_SECRET = re.compile(r"[?#;%]|eyJ")
_NAME_SEPARATORS = str.maketrans(".-[]", "____")
# What _mask_pairs takes out of a lower-cased query before it searches it.
_SQUEEZE = str.maketrans("", "", "._-[]")
_MARKABLE = re.compile("[a-z0-9]+")
# A piece's value, from its first `=` to the next separator.
_VALUES = re.compile("=[^&;]*")
# A value percent-decodes to a JWT or a URL only if it holds `eyJ`, `?`, `#` or `;`
# or an escape of one of those characters (`%65` is `e`, `%79` `y`, `%4A` `J`):
# without one, a long value of escapes is not decoded (twice, ~0.3 ms for 8 KiB)
# to find nothing.
_DECODING_MARKS = ("eyJ", "?", "#", ";")
_ESCAPE_MARKS = ("%65", "%79", "%4a", "%3f", "%23", "%3b")


class Redactor:
    """Masks and shortens one event's ``input``; built once from the config."""

    def __init__(
        self,
        *,
        mask_headers: Iterable[str] = DEFAULT_MASKED_HEADERS,
        mask_query_params: Iterable[str] = DEFAULT_MASKED_QUERY_PARAMS,
        max_header_value_chars: int = DEFAULT_MAX_HEADER_VALUE_CHARS,
        max_header_chars: int = DEFAULT_MAX_HEADER_CHARS,
    ) -> None:
        """``mask_headers`` entries starting with ``/`` are JSON pointers into the
        event (``/input/identity/email``): any value can be masked that way."""
        if max_header_value_chars < 1 or max_header_chars < 1:
            raise ValueError("max_header_value_chars and max_header_chars must be positive")
        headers, pointers = list(ALWAYS_MASKED_HEADERS), []
        for entry in mask_headers:
            if entry.startswith("/"):
                pointers.append(parse_pointer(entry))
            else:
                headers.append(entry.lower().replace("_", "-"))
        self._header_parts = tuple(dict.fromkeys(headers))
        self._pointers = pointers
        self._params = frozenset(_param_key(name) for name in mask_query_params)
        self._param_suffixes = tuple(p.replace("_", "") for p in self._params if len(p) >= 5)
        self._suspect = _suspects(self._params)
        self._value_limit = max_header_value_chars
        self._budget = max_header_chars
        # Names repeat from event to event; a client may invent many, so bounded.
        self.secret_header = functools.lru_cache(maxsize=1024)(self._secret_header)
        self.secret_param = functools.lru_cache(maxsize=1024)(self._secret_param)

    @classmethod
    def from_config(cls, config: DecisionLogConfig) -> Redactor:
        return cls(
            mask_headers=config.mask_headers,
            mask_query_params=config.mask_query_params,
            max_header_value_chars=config.max_header_value_chars,
            max_header_chars=config.max_header_chars,
        )

    def _secret_header(self, lower: str) -> bool:
        folded = lower.replace("_", "-")
        return any(part in folded for part in self._header_parts)

    def _secret_param(self, name: str) -> bool:
        key = _param_key(name, encoded=True)
        if key in self._params:
            return True
        for word in key.split("_"):
            if word in self._params or (word.endswith("id") and word[:-2] in self._params):
                return True
        return key.replace("_", "").endswith(self._param_suffixes)

    def apply(self, event: dict[str, Any]) -> tuple[list[str], list[str]]:
        """Redact ``event["input"]`` in place of the reference (copy-on-write);
        returns the masked and the truncated pointers."""
        masked: list[str] = []
        truncated: list[str] = []
        given = event["input"]
        try:
            http = given["attributes"]["request"]["http"]
        except (KeyError, TypeError, IndexError):
            http = None
        if isinstance(http, dict):
            changes: dict[str, Any] = {}
            headers = http.get("headers")
            if isinstance(headers, dict):
                kept = self._redact_headers(headers, masked, truncated)
                if kept is not None:
                    changes["headers"] = kept
            # Host: <JWT> passes the Host checks (a reg-name) and routes like any; the
            # id is X-Request-Id's when the gateway took it (server.py), a backstop.
            for field, pointer in _JWT_MASKED_FIELDS:
                value = http.get(field)
                if type(value) is str and holds_jwt(value):
                    changes[field] = REDACTED
                    masked.append(pointer)
            line = http.get("request_line")  # a request the parser refused: its first line
            if isinstance(line, str):
                logged_line = self._mask_request_line(line)
                if logged_line != line:
                    changes["request_line"] = logged_line
                    masked.append(REQUEST_LINE_POINTER)
            path = http.get("path")
            if isinstance(path, str):
                logged = self.mask_url(path)
                if logged != path:
                    masked.append(PATH_POINTER)
                if len(logged) > MAX_PATH_CHARS:
                    logged = _cut(logged, MAX_PATH_CHARS)
                    truncated.append(PATH_POINTER)
                if logged is not path:
                    changes["path"] = logged
            if changes:
                event["input"] = given = _replaced(given, _HTTP[1:], {**http, **changes})
        segments = given.get("parsed_path") if isinstance(given, dict) else None
        if isinstance(segments, list):
            logged_segments = self._redact_segments(segments, masked)
            if logged_segments is not segments:
                event["input"] = given = {**given, "parsed_path": logged_segments}
                segments = logged_segments
        if isinstance(segments, list) and len(segments) > 8:  # short paths: nothing to count
            shortened = _bounded_segments(segments)
            if shortened is not None:
                event["input"] = given = {**given, "parsed_path": shortened}
                truncated.append(SEGMENTS_POINTER)
        parsed = given.get("parsed_query") if isinstance(given, dict) else None
        if isinstance(parsed, dict) and parsed:
            logged_query = self._redact_query(parsed, masked, truncated)
            if logged_query is not None:
                event["input"] = {**given, "parsed_query": logged_query}
        masked += self.mask_pointers(event)
        return _bounded(masked), truncated

    def mask_pointers(self, event: dict[str, Any], root: str | None = None) -> list[str]:
        """The configured pointers (``/input/...``, ``/result/...``), or only those
        under ``/root``, applied to ``event``; returns the pointers masked. Alone,
        for an event :meth:`apply` failed on."""
        return [
            format_pointer(pointer)
            for pointer in self._pointers
            if (root is None or pointer[0] == root) and _replace(event, pointer)
        ]

    def mask_url(self, target: str, depth: int = 0) -> str:
        """``target`` with its secrets masked, the rest byte for byte: in its query
        and its fragment (`#access_token=`, OAuth's implicit flow), the value of
        every secret parameter, of every parameter whose value (percent-decoded
        too) is JWT-shaped or is a URL holding a secret (`?next=https://app/cb?
        code=...`), and a JWT-shaped parameter without a value; in its path, a
        JWT-shaped segment (`/reset/<token>`) and the value of every secret
        `;name=value` path parameter (`;jsessionid=`). Parameters are split on
        `&` and on `;` (Rack before 3, Java servlet containers, Python before
        3.9.2)."""
        if not _MAYBE_SECRET.search(target):  # the usual path: nothing to look at
            return target
        query_at = target.find("?")
        fragment_at = target.find("#")
        end = min(i for i in (query_at, fragment_at, len(target)) if i >= 0)
        path, rest = self._mask_path(target[:end]), target[end:]
        if rest.startswith("?"):
            query, hash_, fragment = rest[1:].partition("#")
            rest = f"?{self._mask_pairs(query, depth)}"
            if hash_:
                rest += f"#{self._mask_pairs(fragment, depth)}"
        elif rest:
            rest = f"#{self._mask_pairs(rest[1:], depth)}"
        return path + rest

    def _mask_path(self, path: str) -> str:
        if ";" not in path and "eyJ" not in path and "%" not in path:
            return path
        segments = path.split("/")
        logged = [self._mask_segment(segment) for segment in segments]
        changed = any(a is not b for a, b in zip(logged, segments, strict=True))
        return "/".join(logged) if changed else path

    def _mask_segment(self, segment: str) -> str:
        """One path segment: REDACTED if JWT-shaped, else with the value of each
        secret `;name=value` parameter masked (itself if nothing is)."""
        if holds_jwt(segment):
            return REDACTED
        if ";" not in segment:
            return segment
        first, *params = segment.split(";")
        changed = False
        for index, param in enumerate(params):
            name, equals, value = param.partition("=")
            if equals and (self.secret_param(name) or holds_jwt(value)):
                params[index] = f"{name}={REDACTED}"
                changed = True
        return ";".join([first, *params]) if changed else segment

    def _mask_pairs(self, text: str, depth: int = 0) -> str:
        """``text`` (a query or a fragment) with each secret parameter's value masked.

        A client chooses how many parameters there are, and their names: looking
        at each in Python cost ~2 µs (~2 ms for a query at limits.max_query_params,
        ~5 ms when each name is percent-encoded). So the pieces that could hold a
        secret are found first, by searches in C (see _suspects) over the text
        lower-cased with the name separators taken out, and over its names
        percent-decoded the same way, and only those are looked at one by one."""
        suspect = self._suspect
        if suspect is None or not text.isascii():
            return self._mask_each_pair(text, depth)
        folded = text.lower().translate(_SQUEEZE)
        looked = _pieces_holding(suspect, folded)
        if "%" in text:
            escaped = _pieces_holding_escapes(folded)
            looked = sorted({*looked, *escaped, *_pieces_holding(suspect, _decoded_names(text))})
        if not looked:  # the usual query: nothing to look at
            return text
        # (str.split, not a regex's: a regex split of 8 KiB costs ~45 µs.)
        pieces = text.replace(";", "&").split("&")
        starts = list(itertools.accumulate(map(len, pieces), _past, initial=-1))
        shown: list[str] = []
        done = 0  # text[:done] is in shown
        for piece in looked:
            logged = self._mask_pair(pieces[piece], depth)
            if logged is not None:
                start = starts[piece] + 1
                shown += (text[done:start], logged)
                done = start + len(pieces[piece])
        return "".join((*shown, text[done:])) if shown else text

    def _mask_each_pair(self, text: str, depth: int) -> str:
        parts = _PARAM_SPLIT.split(text)
        changed = False
        for index in range(0, len(parts), 2):
            logged = self._mask_pair(parts[index], depth)
            if logged is not None:
                parts[index] = logged
                changed = True
        return "".join(parts) if changed else text

    def _mask_pair(self, pair: str, depth: int) -> str | None:
        """One `name=value` piece as logged, or None when it holds no secret."""
        name, equals, value = pair.partition("=")
        if holds_jwt(name):  # `?<JWT>`: a token with no name
            return REDACTED
        if equals and (
            self.secret_param(name)
            or (
                _may_decode_to_secret(value)
                and (holds_jwt(value) or self._url_secret(value, depth))
            )
        ):
            return f"{name}={REDACTED}"
        return None

    def _url_secret(self, value: str, depth: int) -> bool:
        """Whether a parameter's value (percent-decoded) is a URL holding a secret
        (a redirect target: `?next=https://app/cb?code=...`). Past MAX_URL_DEPTH
        URLs within URLs, any value still holding a query or fragment is one."""
        text = unquote_plus(value) if "%" in value or "+" in value else value
        if not ("?" in text or "#" in text or ";" in text):
            return False
        if depth >= MAX_URL_DEPTH:
            return "?" in text or "#" in text
        return self.mask_url(text, depth + 1) != text

    def _mask_request_line(self, line: str) -> str:
        """A request line as the client sent it (`GET /x?code=... HTTP/1.1`), one
        the parser refused, so perhaps with a tab or a space too many: each word
        masked as a URL up to the first holding a query or a fragment, the rest of
        the line as more of that query, each space or tab a separator too (`GET
        /cb?a=1 code=... HTTP/1.1`), and any JWT-shaped text."""
        marks = [at for at in (line.find("?"), line.find("#")) if at >= 0]
        space = _WHITESPACE.search(line, min(marks)) if marks else None
        end = space.start() if space is not None else len(line)
        words = _WHITESPACE_SPLIT.split(line[:end])
        words[0::2] = [self.mask_url(word) for word in words[0::2]]
        rest = line[end:]
        # One search over the rest, not one per word: a client chooses how many.
        probe = _WHITESPACE.sub("&", rest)
        masked = self._mask_pairs(probe)
        if masked != probe:  # a masked piece holds no separator: the pieces line up
            parts = _LINE_SEPARATOR_SPLIT.split(rest)
            parts[0::2] = masked.replace(";", "&").split("&")
            rest = "".join(parts)
        logged = "".join(words) + rest
        return _JWT.sub(REDACTED, logged) if "eyJ" in logged else logged

    def _redact_segments(self, segments: list[Any], masked: list[str]) -> list[Any]:
        """parsed_path with each segment holding a secret masked (see mask_url's
        path); the list itself when none does."""
        logged: list[Any] | None = None
        for index, segment in enumerate(segments):
            if type(segment) is not str or not (
                "eyJ" in segment or ";" in segment or "%" in segment
            ):
                continue  # the usual segment: nothing to look at
            shown = self._mask_segment(segment)
            if shown is not segment:
                logged = logged if logged is not None else list(segments)
                logged[index] = shown
                masked.append(format_pointer(("input", "parsed_path", str(index))))
        return logged if logged is not None else segments

    def _query_value(self, value: Any) -> tuple[Any, bool, bool]:
        """A parsed_query value to log, whether a secret in it was masked, whether it
        was cut: masked when JWT-shaped, with secret `;name=value` pairs masked
        inside (parse_qs splits on `&` only), cut at MAX_QUERY_VALUE_CHARS."""
        if not isinstance(value, str):
            return value, False, False
        if "eyJ" in value and _JWT.search(value):
            return REDACTED, True, False
        if ("?" in value or "#" in value) and self.mask_url(value, 1) != value:
            return REDACTED, True, False  # a URL holding a secret (a redirect target)
        masked = False
        if ";" in value:
            hidden = self._mask_pairs(value)
            masked, value = hidden != value, hidden
        if len(value) > MAX_QUERY_VALUE_CHARS:
            return _cut(value, MAX_QUERY_VALUE_CHARS), masked, True
        return value, masked, False

    def _redact_query(
        self, parsed: dict[Any, Any], masked: list[str], truncated: list[str]
    ) -> dict[str, Any] | None:
        """parsed_query to log (None: as given): secrets masked, and at most
        MAX_QUERY_KEYS keys of MAX_QUERY_VALUES values, about MAX_QUERY_CHARS in all."""
        logged: dict[str, Any] = {}
        budget = MAX_QUERY_CHARS
        changed = cut = False
        for count, (name, values) in enumerate(parsed.items()):
            if count >= MAX_QUERY_KEYS or budget <= 0:
                cut = True
                break
            key = str(name)
            if holds_jwt(key):  # `?<JWT>`: the token is the key
                key = REDACTED
                number = 2
                while key in logged:
                    key, number = f"{REDACTED} ({number})", number + 1
            if len(key) > MAX_QUERY_KEY_CHARS:
                key, cut = _cut(key, MAX_QUERY_KEY_CHARS), True
            items = values if isinstance(values, list) else [values]
            if len(items) > MAX_QUERY_VALUES:
                items, cut = items[:MAX_QUERY_VALUES], True
            secret = key.startswith(REDACTED) or self.secret_param(str(name))
            if secret:
                shown: list[Any] = [REDACTED] * len(items)
            else:
                shown = []
                for item in items:
                    value, was_masked, was_cut = self._query_value(item)
                    shown.append(value)
                    secret, cut = secret or was_masked, cut or was_cut
            if secret:
                masked.append(format_pointer(("input", "parsed_query", key)))
            logged[key] = shown if isinstance(values, list) else shown[0]
            budget -= len(key) + sum(len(v) for v in shown if isinstance(v, str))
            changed = (
                changed
                or secret
                or key != name
                or any(a is not b for a, b in zip(shown, items, strict=True))
            )
        if cut:
            truncated.append(QUERY_POINTER)
        return logged if changed or cut else None

    def _redact_headers(
        self, headers: dict[str, Any], masked: list[str], truncated: list[str]
    ) -> dict[str, Any] | None:
        """The headers to log, or None when they are logged as given."""
        kept: dict[str, Any] = {}
        changed = omitted = False
        budget = self._budget
        limit = self._value_limit
        secret = self.secret_header
        for name, value in headers.items():
            key = name if type(name) is str else str(name)
            lower = key.lower()
            was_masked = was_truncated = False
            if secret(lower):
                logged: Any = REDACTED
                was_masked = True
            elif (
                type(value) is str
                and len(value) <= limit
                and "?" not in value
                and "#" not in value
                and "eyJ" not in value
                and lower not in _TOKEN_CARRIERS
            ):
                logged = value  # the usual header: nothing to look at
            else:
                logged, was_masked, was_truncated = self._header_value(lower, value, limit)
            cost = len(key) + (len(logged) if type(logged) is str else 0)
            if cost > budget:
                omitted = True
                continue
            budget -= cost
            kept[key] = logged
            if was_masked:
                masked.append(header_pointer(key))
            if was_truncated:
                truncated.append(header_pointer(key))
            changed = changed or logged is not value
        if omitted:
            truncated.append(HEADERS_POINTER)
        return kept if changed or omitted else None

    def _header_value(self, lower: str, value: Any, limit: int) -> tuple[Any, bool, bool]:
        """The value to log, whether a secret in it was masked, whether it was cut."""
        if not isinstance(value, str):
            return value, False, False
        if "eyJ" in value and _JWT.search(value):
            return REDACTED, True, False
        if lower in _TOKEN_CARRIERS and _CARRIER_HINTS.search(value):
            return REDACTED, True, False
        masked = False
        if "?" in value or "#" in value:  # a URL (Referer, X-Original-URL, ...): its query
            hidden = self.mask_url(value)
            masked = hidden != value
            value = hidden
        if len(value) <= limit:
            return value, masked, False
        return _cut(value, limit), masked, True


def holds_jwt(text: str) -> bool:
    """Whether ``text``, or ``text`` percent-decoded, holds a JWT."""
    if "eyJ" in text and _JWT.search(text):
        return True
    if "%" not in text:
        return False
    decoded = unquote_plus(text)
    return "eyJ" in decoded and _JWT.search(decoded) is not None


def _bounded_segments(segments: list[Any]) -> list[Any] | None:
    """parsed_path's first segments up to MAX_PATH_CHARS in all (None: all fit)."""
    budget = MAX_PATH_CHARS
    for index, segment in enumerate(segments):
        budget -= len(segment) + 1 if isinstance(segment, str) else 1
        if budget < 0:
            return segments[:index]
    return None


def _cut(text: str, limit: int) -> str:
    return f"{text[:limit]}...[truncated {len(text) - limit} chars]"


def _bounded(pointers: list[str]) -> list[str]:
    """The masked pointers, those of a parent with many listed as the parent once:
    a query of 700 secret spellings is one pointer, not 700."""
    if len(pointers) <= MAX_POINTERS_PER_PARENT:
        return pointers
    parents = collections.Counter(pointer.rpartition("/")[0] for pointer in pointers)
    crowded = {parent for parent, count in parents.items() if count > MAX_POINTERS_PER_PARENT}
    if not crowded:
        return pointers
    listed = (p.rpartition("/")[0] if p.rpartition("/")[0] in crowded else p for p in pointers)
    return list(dict.fromkeys(listed))


def _may_decode_to_secret(value: str) -> bool:
    """Whether ``value``, percent-decoded or not, may hold a JWT or a URL (see
    _DECODING_MARKS): substring searches in C, each character read a few times
    (a regex stopping at every `%` of 2,600 cost ~0.2 ms)."""
    if any(mark in value for mark in _DECODING_MARKS):
        return True
    if "%" not in value:
        return False
    lower = value.lower()
    return any(mark in lower for mark in _ESCAPE_MARKS)


def _suspects(params: frozenset[str]) -> re.Pattern[str] | None:
    """What marks a query piece, lower-cased with `.`, `_`, `-`, `[` and `]` taken
    out, as one that may hold a secret (None: every piece may).

    A piece without `%` is decoded only by reading `+` as a space, so its name can
    be secret only if the squeezed piece holds an entry with its `_`s taken out
    (an entry equal to the name, a word of it, or its end all leave one there);
    its name or value holds a JWT only if it holds `eyj`; its value is a URL only
    if it holds `?` or `#`. A percent-encoded value may decode to a JWT or a URL
    only if it holds one of _ESCAPE_MARKS; a percent-encoded name is secret only
    if its decoded name holds an entry (both searched for in _mask_pairs). An
    entry of other characters than a-z and 0-9 (a space is `+` in a query) has
    no such mark: then every piece is looked at."""
    words = {param.replace("_", "") for param in params}
    if not all(_MARKABLE.fullmatch(word) for word in words):
        return None
    marks = {"?", "#", "eyj", *words}
    # A piece holding `apikey` holds `key`: the shorter one alone is searched for.
    marks = {mark for mark in marks if not any(m != mark and m in mark for m in marks)}
    return re.compile(_trie(sorted(marks)))


def _trie(words: list[str]) -> str:
    """A regex matching any of ``words`` (none a prefix of another), as a tree of
    alternatives each starting with a literal: the search skips in C to where one
    can start, and tries one branch there (a flat alternation tries each in turn,
    a character class first tries all at every character)."""
    branches: dict[str, list[str]] = {}
    for word in words:
        branches.setdefault(word[0], []).append(word[1:])
    alternatives = []
    for first, rests in branches.items():
        if len(rests) == 1:
            alternatives.append(re.escape(first + rests[0]))
        else:
            alternatives.append(f"{re.escape(first)}(?:{_trie(rests)})")
    return "|".join(alternatives)


def _pieces_holding(suspect: re.Pattern[str], folded: str) -> list[int]:
    """Which ``&``- or ``;``-separated pieces of ``folded`` ``suspect`` finds in, in
    order: a search in C, then a step in Python for each piece found."""
    found = suspect.search(folded)
    if found is None:
        return []
    ends = list(itertools.accumulate(map(len, folded.replace(";", "&").split("&")), _past))
    pieces = []
    while found is not None:
        piece = bisect.bisect_right(ends, found.start())
        pieces.append(piece)
        found = suspect.search(folded, ends[piece] + 1) if piece + 1 < len(ends) else None
    return pieces


def _pieces_holding_escapes(folded: str) -> list[int]:
    """Which pieces of ``folded`` hold one of _ESCAPE_MARKS (a value that may
    decode to a JWT or a URL): substring searches, which skip over a value of
    thousands of other escapes (a regex stops at each `%`, ~30 ns)."""
    ends: list[int] = []
    pieces = []
    for mark in _ESCAPE_MARKS:
        found = folded.find(mark)
        while found != -1:
            ends = ends or list(
                itertools.accumulate(map(len, folded.replace(";", "&").split("&")), _past)
            )
            piece = bisect.bisect_right(ends, found)
            pieces.append(piece)
            found = folded.find(mark, ends[piece] + 1)
    return pieces


def _decoded_names(text: str) -> str:
    """The names of ``text``'s pieces (each up to its first ``=``) as secret_param
    reads them, percent- and ``+``-decoded, lower-cased, separators taken out:
    decoded in one call, not one per piece (~6 µs each). Piece k of the result is
    piece k's name: values, which may hold thousands of escapes, are left out
    first, and an escaped ``&`` or ``;`` is read as a space (like them, no part of
    a name an entry matches), so decoding makes no separator."""
    names = _VALUES.sub("", text)
    for separator in ("%26", "%3B", "%3b"):
        names = names.replace(separator, "%20")
    return unquote_plus(names).lower().translate(_SQUEEZE)


def _past(end: int, length: int) -> int:
    """The next piece's end in _mask_pairs: one separator, then its length."""
    return end + 1 + length


def _param_key(name: str, *, encoded: bool = False) -> str:
    if encoded and ("%" in name or "+" in name):
        name = unquote_plus(name)
    return name.lower().translate(_NAME_SEPARATORS).strip("_")


def pointer_parts(pointer: str) -> tuple[str, ...]:
    """A JSON pointer's reference tokens (RFC 6901): ``/a~1b/c`` -> ("a/b", "c")."""
    return tuple(p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:])


def parse_pointer(pointer: str) -> tuple[str, ...]:
    """``/input/a~1b`` -> ("input", "a/b"); ValueError unless inside /input/ or /result/."""
    parts = pointer_parts(pointer)
    if len(parts) < 2 or parts[0] not in ("input", "result"):
        raise ValueError(f"mask pointer {pointer!r} must point inside /input/ or /result/")
    return parts


def format_pointer(parts: Sequence[str]) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def header_pointer(name: str) -> str:
    # Cached for the usual names only: a client chooses them, and may choose long ones.
    return _common_header_pointer(name) if len(name) <= 64 else format_pointer((*_HEADERS, name))


@functools.lru_cache(maxsize=256)
def _common_header_pointer(name: str) -> str:
    return format_pointer((*_HEADERS, name))


def _replaced(root: dict[str, Any], parts: Sequence[str], value: Any) -> Any:
    """A copy of ``root`` with root[parts] = value; the dicts on the way are copied."""
    if not parts:
        return value
    return {**root, parts[0]: _replaced(root[parts[0]], parts[1:], value)}


def _step(node: Any, key: str) -> tuple[bool, Any]:
    if isinstance(node, dict):
        return (key in node, node.get(key))
    if isinstance(node, list) and key.isascii() and key.isdigit() and int(key) < len(node):
        return True, node[int(key)]
    return False, None


def _walk(node: Any, parts: Sequence[str]) -> Any:
    for key in parts:
        found, node = _step(node, key)
        if not found:
            return None
    return node


def _replace(root: dict[str, Any], parts: Sequence[str]) -> bool:
    """Set root[parts] = REDACTED, copying every container on the way down.

    The caller's objects are shared below ``root``: they are never changed.
    """
    if not _step(_walk(root, parts[:-1]), parts[-1])[0]:
        return False
    node: Any = root
    for depth, key in enumerate(parts):
        last = depth == len(parts) - 1
        index: Any = int(key) if isinstance(node, list) else key
        child = REDACTED if last else node[index]
        if not last:
            child = dict(child) if isinstance(child, dict) else list(child)
        node[index] = child
        node = child
    return True
