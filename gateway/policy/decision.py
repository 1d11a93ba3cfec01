"""Ask the policy: the decision input, the call, and fail-closed handling of the answer."""

from __future__ import annotations

import itertools
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway.config import Route
from gateway.identity import ANONYMOUS, Identity
from gateway.policy import failure
from gateway.screening.paths import NormalizedPath
from gateway.screening.trusted_headers import (
    GATEWAY_OWNED,
    HOP_BY_HOP,
    fold,
)
from policy_engine import PolicyEngine, PolicyError

DECISION_REF = "data.portcullis.gateway.decision"
# The same rule as a path under data.
DECISION_PATH = tuple(DECISION_REF.split("."))[1:]
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-portcullis-assertion"}
)
REDACTED = "**REDACTED**"
# A decision whose policy answered no valid_until_ns (distinct from its null).
NOT_GIVEN: Any = type("NotGiven", (), {"__repr__": lambda self: "NOT_GIVEN"})()
# The reason of a deny for an answer the contract can't read (allow not a boolean,
# reasons not a list): the policy has a bug, and it fails closed like an error.
MALFORMED = "policy returned a malformed decision"
_MALFORMED = failure.MALFORMED_DECISION
# The most characters a decision's reasons, headers and step_up may hold (a shadow
# policy's divergence event holds as many bytes: shadow_worker.ANSWER_MAX): each
# goes whole into a deny's body, the upstream request or the decision log and its
# sinks, so a policy answering megabytes would cost that per request.
MAX_ANSWER_CHARS = 64 * 1024
# A header name is an RFC 9110 token; a value holds no control character but HTAB
# (CR or LF would end the header line, NUL is refused by servers).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Headers a decision may not set upstream: those that frame or route the message
# (a Transfer-Encoding or Content-Length of the policy's own makes the backend read
# the next pooled request as this one's body), hop-by-hop fields, what the gateway
# alone says about the client (X-Forwarded-*, Forwarded, X-Real-IP) and its
# signed assertion. Compared folded (`_` as `-`), as CGI backends read them.
_NOT_FROM_POLICY = (
    HOP_BY_HOP
    | GATEWAY_OWNED
    | {
        "content-length",
        "expect",
        "x-portcullis-assertion",
    }
)


@dataclass
class Decision:
    decision_id: str
    allow: bool
    http_status: int
    reasons: list[str]
    headers: dict[str, str] = field(default_factory=dict)
    step_up: dict[str, Any] | None = None
    eval_ns: int = 0
    # Why it failed closed (the server log's words, unmasked) and its code
    # (gateway/policy/failure.py): the decision log's `error`.
    error: str | None = None
    error_code: str | None = None
    # The policy's answer as it came (the decision memo reads valid_until_ns there).
    policy_result: Any = field(default=None, repr=False)
    memo_hit: bool = False

    def result(self) -> dict[str, Any]:
        """The decision as the policy contract spells it (for the log and the deny body)."""
        return {
            "allow": self.allow,
            "reasons": self.reasons,
            "http_status": self.http_status,
            "headers": self.headers,
            "step_up": self.step_up,
        }

    @property
    def valid_until(self) -> Any:
        """The policy's ``valid_until_ns`` as it answered it (for a memo hit, the
        evaluation's it reuses), or NOT_GIVEN when it answered none."""
        result = self.policy_result
        if isinstance(result, dict):
            return result.get("valid_until_ns", NOT_GIVEN)
        return NOT_GIVEN


def lets_through(ref: str, value: Any) -> bool:
    """Whether a compiled answer would let a request through (an allow of the
    decision): the embedded engine has its interpreter confirm it, since the
    compiled VM turns a rule's error into that rule not firing (EmbeddedEngine)."""
    return ref == DECISION_REF and isinstance(value, dict) and value.get("allow") is True


def decision_input(
    request: web.Request,
    path: NormalizedPath,
    route: Route,
    identity: Identity,
    request_id: str,
    *,
    signals: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The OPA-Envoy-shaped input of the decision contract (README "Decision contract");
    `signals` (input.signals) only with shared state (gateway/shared/). The fields
    an OPA-Envoy policy reads that the gateway knows are where Envoy puts them
    (protocol, destination, source.principal): a ported rule reading one that
    was missing would never fire."""
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in SECRET_HEADERS:
            value = REDACTED
        # A repeated header reaches the upstream as every copy: the policy sees them
        # all too, joined with "," as Envoy's ext_authz input does.
        headers[lower] = f"{headers[lower]},{value}" if lower in headers else value
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport else None
    local = transport.get_extra_info("sockname") if transport else None
    source: dict[str, Any] = {
        "address": {
            "socketAddress": {
                "address": peer[0] if peer else "",
                "portValue": peer[1] if peer else 0,
            }
        }
    }
    if identity.principal is not None:  # a certificate the gateway took: its CA is known
        source["principal"] = identity.principal
    document = {
        "attributes": {
            "request": {
                "http": {
                    "method": request.method,
                    "host": request.host,
                    "path": path.path_with_query,
                    "scheme": request.scheme,
                    "headers": headers,
                    "id": request_id,
                    "protocol": _PROTOCOLS.get(request.version) or _protocol(request.version),
                }
            },
            "source": source,
            "destination": {
                "address": {
                    "socketAddress": {
                        "address": local[0] if local else "",
                        "portValue": local[1] if local else 0,
                    }
                }
            },
        },
        "parsed_path": list(path.segments),
        "parsed_query": path.parsed_query() if path.query else {},
        "route": {"app": route.app, "upstream": route.upstream, "path_prefix": route.path_prefix},
        "identity": identity.to_input(),
        "now_ns": time.time_ns(),
    }
    if signals is not None:
        document["signals"] = signals
    return document


# Envoy's names of the request's protocol (Http::Utility::getProtocolString).
_PROTOCOLS = {(1, 1): "HTTP/1.1", (1, 0): "HTTP/1.0"}


def _protocol(version: Any) -> str:
    major, minor = version
    return f"HTTP/{major}" if major > 1 else f"HTTP/{major}.{minor}"


def refusal_input(
    request: web.Request,
    route: Route | None,
    identity: Identity,
    request_id: str,
    path: NormalizedPath | None = None,
) -> dict[str, Any]:
    """The decision input of a request the gateway refused before asking the policy.

    Same shape as :func:`decision_input`, so a SIEM reads probing like any other
    decision; without a normalized path, ``path`` is the raw target as received
    (shortened) and ``parsed_path`` is empty."""
    if path is not None and route is not None:
        document = decision_input(request, path, route, identity, request_id)
    else:
        document = decision_input(request, path or _RAW, route or _NO_ROUTE, identity, request_id)
        if path is None:
            document["attributes"]["request"]["http"]["path"] = _shorten(request.raw_path)
        if route is None:
            document["route"] = None
    _make_readable(document["attributes"]["request"]["http"])
    return document


# The parameters of an authorization response (RFC 6749 4.1.2 and 4.1.2.1, RFC
# 9207, OIDC Session Management): a sign-in event names these, any other by REDACTED.
_CALLBACK_PARAMETERS = frozenset(
    {"code", "state", "iss", "error", "error_description", "error_uri", "session_state"}
)


def sign_in_input(request: web.Request, identity: Identity, request_id: str) -> dict[str, Any]:
    """The decision input of a sign-in event (the callback): :func:`refusal_input`'s,
    with the value of every query parameter masked. The callback's query is the
    provider's answer: its code, its state (which names the browser's pre-auth
    cookie) and an error_description that may repeat either; a browser can carry
    them in a Referer too. So a header value holding a URL is masked the same
    way, and parsed_query is empty."""
    document = refusal_input(request, None, identity, request_id)
    http = document["attributes"]["request"]["http"]
    http["path"] = readable(_shorten(_query_masked(request.raw_path)))
    http["headers"] = {
        name: _query_masked(value) if "?" in value or "#" in value else value
        for name, value in http["headers"].items()
    }
    document["parsed_query"] = {}
    return document


def _query_masked(target: str) -> str:
    """``target`` with each query parameter's value REDACTED, the names of an
    authorization response's parameters kept (others REDACTED too), and any
    fragment REDACTED whole."""
    target, hash_, _ = target.partition("#")
    path, question, query = target.partition("?")
    if question:
        shown = []
        for pair in re.split("[&;]", query):
            if not pair:
                continue
            name, equals, _ = pair.partition("=")
            name = name if name in _CALLBACK_PARAMETERS else REDACTED
            shown.append(f"{name}={REDACTED}" if equals else name)
        path += "?" + "&".join(shown)
    return path + (f"#{REDACTED}" if hash_ else "")


def unparsed_input(peer: Any, head: bytes, request_id: str) -> dict[str, Any]:
    """The decision input of a request aiohttp's parser refused before any handler
    ran: only the peer and the start of the request line are known. ``method`` and
    ``path`` are the line's first two words, ``request_line`` its first 512 bytes,
    non-UTF-8 bytes shown as ``\\xNN``; all three are empty when ``head`` is (where
    the refused request began is not known)."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "backslashreplace")
    # Split at any whitespace: a refused line may hold tabs or spaces too many, and
    # a method of `GET\t/cb?code=...` would be logged as no URL, unmasked.
    words = line.split() or [""]
    address, port = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("", 0)
    return {
        "attributes": {
            "request": {
                "http": {
                    "method": words[0][:32],
                    "host": "",
                    "path": words[1][:2048] if len(words) > 1 else "",
                    "request_line": line[:512],
                    "scheme": "",
                    "headers": {},
                    "id": request_id,
                }
            },
            "source": {"address": {"socketAddress": {"address": address, "portValue": port}}},
        },
        "parsed_path": [],
        "parsed_query": {},
        "route": None,
        "identity": ANONYMOUS.to_input(),
        "now_ns": time.time_ns(),
    }


def readable(text: str) -> str:
    """`text` with the bytes aiohttp could not decode (lone surrogates from
    surrogateescape) shown as U+FFFD, so the event can be written as UTF-8 JSON."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _make_readable(http: dict[str, Any]) -> None:
    """A refused request may be refused for undecodable bytes: its logged method,
    host, path and headers are made readable (in place)."""
    for key in ("method", "host", "path"):
        if isinstance(http.get(key), str):
            http[key] = readable(http[key])
    headers = http["headers"]
    if not all(name.isascii() and value.isascii() for name, value in headers.items()):
        http["headers"] = {readable(name): readable(value) for name, value in headers.items()}


def _shorten(raw: str, limit: int = 2048) -> str:
    return raw if len(raw) <= limit else raw[:limit] + f"...[{len(raw) - limit} more chars]"


_RAW = NormalizedPath("", "", (), False, "")
_NO_ROUTE = Route("-", "", "")


def deny(
    decision_id: str, status: int, reason: str, error: str | None = None, code: str | None = None
) -> Decision:
    """A deny; one with an ``error`` failed closed, and ``code`` says how."""
    return Decision(decision_id, False, status, [reason], error=error, error_code=code)


class DecisionIds:
    """Unique, UUID-shaped decision ids: a random per-process prefix and a counter
    (uuid4 per request costs a getrandom syscall on the hot path)."""

    def __init__(self) -> None:
        self._prefix = str(uuid.uuid4())[:24]
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"


async def decide(
    engine: PolicyEngine | None, document: dict[str, Any], decision_id: str
) -> Decision:
    """The policy's decision; any error, timeout or malformed answer is a deny."""
    if engine is None:
        return deny(decision_id, 503, "no policy loaded", "no policy loaded", failure.NO_POLICY)
    started = time.perf_counter_ns()
    try:
        result = await engine.evaluate(DECISION_REF, document)
    except PolicyError as error:
        reason, code = "policy evaluation failed", failure.error_code(error)
        return _timed(deny(decision_id, 403, reason, str(error), code), started)
    except Exception as error:  # an engine's own fault: still a deny, and a logged one
        why = f"unexpected {type(error).__name__}: {str(error)[:200]}"
        code = failure.INTERNAL
        return _timed(deny(decision_id, 403, "policy evaluation failed", why, code), started)
    return _timed(_from_result(decision_id, result), started)


def _timed(decision: Decision, started: int) -> Decision:
    decision.eval_ns = time.perf_counter_ns() - started
    return decision


def as_read(result: Any) -> dict[str, Any]:
    """A decision result as the gateway reads it (fail closed): what a logged
    result from a hand-edited log means, in the contract's shape."""
    return _from_result("", result).result()


def _from_result(decision_id: str, result: Any) -> Decision:
    if not isinstance(result, dict):
        why = repr(result)[:200]
        return deny(decision_id, 403, "policy returned no decision object", why, _MALFORMED)
    raw_allow, raw_reasons = result.get("allow"), result.get("reasons")
    if not isinstance(raw_allow, bool):  # "true", 1, null: never an allow
        why = f"policy returned allow {repr(raw_allow)[:80]}, not true or false"
        return deny(decision_id, 403, MALFORMED, why, _MALFORMED)
    if raw_reasons is not None and not isinstance(raw_reasons, list):
        why = f"policy returned reasons {repr(raw_reasons)[:80]}, not a list"
        return deny(decision_id, 403, MALFORMED, why, _MALFORMED)
    allow = raw_allow
    # (Runs for every request and replayed decision: an allow's empty reasons and
    # a deny's empty headers skip the comprehensions.)
    reasons = [r for r in raw_reasons if isinstance(r, str)] if raw_reasons else []
    status = result.get("http_status")
    if allow:
        status = 200
    elif not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
        status = 403
    headers = result.get("headers") or {}
    if not isinstance(headers, dict):  # the upstream would miss what it was to be told
        why = f"policy returned headers {repr(headers)[:80]}, not an object"
        return deny(decision_id, 403, MALFORMED, why, _MALFORMED)
    for name, value in headers.items():
        unsendable = _unsendable_header(name, value)
        if unsendable is not None:
            why = f"policy returned header {unsendable}"
            return deny(decision_id, 403, MALFORMED, why, _MALFORMED)
    step_up = result.get("step_up")
    step_up = step_up if isinstance(step_up, dict) and not allow else None
    too_long = _too_long(reasons, headers, step_up)
    if too_long is not None:
        why = f"policy returned {too_long}"
        return deny(decision_id, 403, MALFORMED, why, _MALFORMED)
    return Decision(decision_id, allow, status, reasons, headers, step_up, policy_result=result)


def _too_long(reasons: list[str], headers: dict[str, str], step_up: Any) -> str | None:
    """What makes a decision's answer too long to send and log, or None."""
    size = sum(map(len, reasons)) + sum(len(name) + len(value) for name, value in headers.items())
    if step_up is not None:
        try:
            size += len(orjson.dumps(step_up))
        except TypeError as error:  # nested too deeply, an integer over 64 bits
            return f"a step_up JSON can't hold ({error})"
    if size > MAX_ANSWER_CHARS:
        return f"{size} characters of reasons, headers and step_up, over {MAX_ANSWER_CHARS}"
    return None


def _unsendable_header(name: str, value: Any) -> str | None:
    """Why a decision's header can't go to the upstream as asked, or None."""
    if not isinstance(value, str):  # an identity the upstream reads, dropped, is worse
        return f"{name!r} value {repr(value)[:80]}: not a string"
    if not _TOKEN.fullmatch(name):
        return f"name {name[:80]!r}: not an HTTP header name"
    if _CONTROL.search(value):
        return f"{name!r} value {value[:80]!r}: holds a control character"
    folded = fold(name)
    if folded in _NOT_FROM_POLICY or folded.startswith("x-forwarded-"):
        return f"{name!r}: only the gateway sets this header"
    return None
