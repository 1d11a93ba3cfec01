"""Why a decision failed closed, as its decision-log event says it: OPA's ``error``.

A decision that failed closed (the policy raised, timed out, answered nothing or
an answer the contract can't read) is logged with ``error: {code, message}``
beside ``result``, as OPA's decision-log events carry the evaluation's error.
The message is the engine's (``file:line:col: what``): a Rego runtime error can
quote the values it failed on, and those came from the request, so a value of
the decision input found in the message is masked before it is logged, and so
is any JWT or run of characters that reads as a token or key. The location is
kept; the message is cut to MAX_ERROR_MESSAGE_CHARS and shown with control
characters escaped (one line, inert in any log viewer or SIEM).
"""

from __future__ import annotations

import re
from typing import Any

from gateway.audit.chain import REDACTED
from gateway.audit.redaction import mask_jwts
from policy_engine.errors import (
    EvaluationTimeout,
    PolicyError,
    UndefinedPath,
    UndefinedResult,
    shown,
)

# OPA's topdown error codes where one names the failure (a conflict; a query
# cancelled, as OPA cancels one past its timeout), and OPA's `undefined_document`
# and `internal_error`; the others are Portcullis'.
CONFLICT = "eval_conflict_error"
TIMEOUT = "eval_cancel_error"
UNDEFINED = "undefined_document"
EVALUATION = "eval_error"
INTERNAL = "internal_error"
MALFORMED_DECISION = "malformed_decision"
NO_POLICY = "policy_not_loaded"
# The most characters of an error's message in an event (after masking): a
# location, an engine's sentence and some of what it quotes.
MAX_ERROR_MESSAGE_CHARS = 512
# Input values shorter than this are not looked for (a method, "true"): too
# common to tell a quote from the engine's own words.
_MIN_SECRET_CHARS = 4
# A value quoted cut (`repr(value)[:80]`) is found by its first characters.
_PREFIX_CHARS = 24
# What reads as a token, a key or base64 (20 or more such characters, not part of
# a path): masked even when no input value is found in it, since a policy may
# have changed the value (upper(), base64.decode) before a built-in quoted it.
_TOKENISH = re.compile(r"(?<![\w/.-])[A-Za-z0-9_+=-]{20,}(?![\w/.-])")
# The leading "file:line[:col]: " of an engine's message: the policy's, kept whole.
_LOCATION = re.compile(r"^\S+?:\d+(?::\d+)?: ")


def error_code(error: BaseException) -> str:
    """The code of an evaluation that raised ``error``."""
    if isinstance(error, EvaluationTimeout):
        return TIMEOUT
    if isinstance(error, (UndefinedResult, UndefinedPath)):
        return UNDEFINED
    if not isinstance(error, PolicyError):
        return INTERNAL
    if "conflict" in str(error):  # regorus: "rule conflicts with rule at f:3:1", ...
        return CONFLICT
    return EVALUATION


def logged_error(code: str, message: str, document: Any) -> dict[str, str]:
    """``{code, message}`` for the event: ``message`` with each value of the
    decision input ``document`` it quotes (and any JWT) masked, on one line,
    at most MAX_ERROR_MESSAGE_CHARS characters."""
    # Bounded before it is searched: an engine's message may be a page long.
    message = message[: MAX_ERROR_MESSAGE_CHARS * 4]
    location = _LOCATION.match(message)
    head = location.group() if location else ""
    text = mask_jwts(_mask_values(message[len(head) :], document))
    text = _TOKENISH.sub(REDACTED, text)
    text = shown(head + text)
    if len(text) > MAX_ERROR_MESSAGE_CHARS:
        more = len(text) - MAX_ERROR_MESSAGE_CHARS
        text = f"{text[:MAX_ERROR_MESSAGE_CHARS]}...[{more} more chars]"
    return {"code": shown(code)[:64], "message": text}


def _mask_values(text: str, document: Any) -> str:
    """``text`` with every string value of ``document`` it holds masked,
    longest first; one of _PREFIX_CHARS or more, also where it is quoted cut."""
    values = sorted(set(_strings(document)), key=len, reverse=True)
    for value in values:
        probe = value[:_PREFIX_CHARS]
        if probe not in text:
            continue
        if len(value) <= _PREFIX_CHARS:
            text = text.replace(value, REDACTED)
            continue
        text = _mask_prefixes(text, value, probe)
    return text


def _mask_prefixes(text: str, value: str, probe: str) -> str:
    """``text`` with each run of ``value``'s first characters (at least the
    probe's) masked."""
    shown_parts: list[str] = []
    start = 0
    while (found := text.find(probe, start)) >= 0:
        end = found + len(probe)
        while end < len(text) and end - found < len(value) and text[end] == value[end - found]:
            end += 1
        shown_parts.append(text[start:found] + REDACTED)
        start = end
    return "".join(shown_parts) + text[start:]


def _strings(value: Any) -> list[str]:
    """Every string value of a JSON-like value at least _MIN_SECRET_CHARS long."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if len(item) >= _MIN_SECRET_CHARS:
                found.append(item)
        elif isinstance(item, dict):  # its keys name fields ("address"), not secrets
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found
