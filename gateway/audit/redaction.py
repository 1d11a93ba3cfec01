"""What one decision-log event may hold: secrets masked, header values shortened.

Runs in the writer thread, on the way to the file, so the request path pays
nothing for it and the policy still sees the request as it came. Every change
is listed in the event, as OPA does for masking: ``masked`` holds the JSON
pointers whose value is ``**REDACTED**`` (wholly, or a query string's secret
values inside it), ``truncated`` the pointers of shortened header values, and
the headers object's own pointer when headers past the per-event budget were
left out. The caller's dicts are never changed: containers on the way to a
changed value are copied.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from gateway.audit.chain import REDACTED

if TYPE_CHECKING:
    from gateway.config import DecisionLogConfig

# Credential-bearing headers, masked in every event whatever the config says.
ALWAYS_MASKED_HEADERS = frozenset(
    {"authorization", "cookie", "proxy-authorization", "x-portcullis-assertion", "set-cookie"}
)
# API keys and tokens sent in headers of their own (`decision_log.mask_headers`).
DEFAULT_MASKED_HEADERS = (
    "x-api-key",
    "api-key",
    "apikey",
    "x-auth-token",
    "x-access-token",
    "x-csrf-token",
    "x-xsrf-token",
    "x-amz-security-token",
    "x-goog-api-key",
    "private-token",
    "x-vault-token",
    "ocp-apim-subscription-key",
)
# Query parameters that carry credentials: OAuth (RFC 6749, 6750), signed URLs
# (S3, GCS), and what APIs commonly name a key (`decision_log.mask_query_params`).
# Compared case-insensitively, with `-` read as `_`.
DEFAULT_MASKED_QUERY_PARAMS = (
    "access_token",
    "code",
    "id_token",
    "refresh_token",
    "client_secret",
    "api_key",
    "apikey",
    "key",
    "token",
    "auth",
    "password",
    "secret",
    "sig",
    "signature",
    "x_amz_signature",
    "x_amz_credential",
    "x_amz_security_token",
    "x_goog_signature",
)
DEFAULT_MAX_HEADER_VALUE_CHARS = 1024
DEFAULT_MAX_HEADER_CHARS = 16384

_HTTP = ("input", "attributes", "request", "http")
_HEADERS = (*_HTTP, "headers")
PATH_POINTER = "/input/attributes/request/http/path"
HEADERS_POINTER = "/input/attributes/request/http/headers"
# Headers whose value is a URL: a secret in their query string is masked too.
_URL_HEADERS = frozenset({"referer"})


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
        headers, pointers = set(ALWAYS_MASKED_HEADERS), []
        for entry in mask_headers:
            if entry.startswith("/"):
                pointers.append(parse_pointer(entry))
            else:
                headers.add(entry.lower())
        self._headers = frozenset(headers)
        self._pointers = pointers
        self._params = frozenset(_param_key(name) for name in mask_query_params)
        self._value_limit = max_header_value_chars
        self._budget = max_header_chars

    @classmethod
    def from_config(cls, config: DecisionLogConfig) -> Redactor:
        return cls(
            mask_headers=config.mask_headers,
            mask_query_params=config.mask_query_params,
            max_header_value_chars=config.max_header_value_chars,
            max_header_chars=config.max_header_chars,
        )

    def apply(self, event: dict[str, Any]) -> tuple[list[str], list[str]]:
        """Redact ``event["input"]`` in place of the reference (copy-on-write);
        returns the masked and the truncated pointers."""
        masked: list[str] = []
        truncated: list[str] = []
        given = event["input"]
        parsed = given.get("parsed_query") if isinstance(given, dict) else None
        if not isinstance(parsed, dict):
            parsed = {}
        secret_params = [name for name in parsed if _param_key(str(name)) in self._params]
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
            path = http.get("path")
            # parsed_query is the path's query parsed: when it names no secret, the
            # path holds none either (only a refusal's raw target comes without it).
            if isinstance(path, str) and "?" in path and (secret_params or not parsed):
                hidden = self.mask_query(path)
                if hidden != path:
                    changes["path"] = hidden
                    masked.append(PATH_POINTER)
            if changes:
                event["input"] = given = _replaced(given, _HTTP[1:], {**http, **changes})
        if secret_params:
            parsed = dict(parsed)
            for name in secret_params:
                values = parsed[name]
                parsed[name] = [REDACTED] * len(values) if isinstance(values, list) else REDACTED
                masked.append(format_pointer(("input", "parsed_query", str(name))))
            event["input"] = {**given, "parsed_query": parsed}
        for pointer in self._pointers:
            if _replace(event, pointer):
                masked.append(format_pointer(pointer))
        return masked, truncated

    def mask_query(self, target: str) -> str:
        """``target`` with the value of every secret query parameter replaced; the
        rest byte for byte (a parameter is split as `parse_qs` splits it: on `&`)."""
        if not self._params:
            return target
        head, _, query = target.partition("?")
        parts = query.split("&")
        changed = False
        for index, part in enumerate(parts):
            name, equals, _ = part.partition("=")
            if equals and _param_key(name, encoded=True) in self._params:
                parts[index] = f"{name}={REDACTED}"
                changed = True
        return f"{head}?{'&'.join(parts)}" if changed else target

    def _redact_headers(
        self, headers: dict[str, Any], masked: list[str], truncated: list[str]
    ) -> dict[str, Any] | None:
        """The headers to log, or None when they are logged as given."""
        kept: dict[str, Any] = {}
        changed = omitted = False
        budget = self._budget
        limit = self._value_limit
        secret = self._headers
        for name, value in headers.items():
            key = name if type(name) is str else str(name)
            lower = key.lower()
            was_masked = was_truncated = False
            if lower in secret:
                logged: Any = REDACTED
                was_masked = True
            elif type(value) is str and len(value) <= limit and lower not in _URL_HEADERS:
                logged = value
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
        masked = False
        if lower in _URL_HEADERS and "?" in value:
            hidden = self.mask_query(value)
            masked = hidden != value
            value = hidden
        if len(value) <= limit:
            return value, masked, False
        return f"{value[:limit]}...[truncated {len(value) - limit} chars]", masked, True


def _param_key(name: str, *, encoded: bool = False) -> str:
    if encoded and ("%" in name or "+" in name):
        name = unquote_plus(name)
    return name.lower().replace("-", "_")


def parse_pointer(pointer: str) -> tuple[str, ...]:
    """``/input/a~1b`` -> ("input", "a/b"); ValueError unless inside /input/ or /result/."""
    parts = tuple(p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:])
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
    if isinstance(node, list) and key.isdigit() and int(key) < len(node):
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
