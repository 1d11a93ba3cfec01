"""Why a decision failed closed, as its decision-log event says it: OPA's ``error``.

A decision that failed closed (the policy raised, timed out, answered nothing or
an answer the contract can't read) is logged with ``error: {code, message}``
beside ``result``, as OPA's decision-log events carry the evaluation's error.
The message is the engine's (``file:line:col: what``): a Rego runtime error can
quote the values it failed on, and those came from the request, often changed
first (lower(), base64.decode, split, a JSON rendering with its escapes), so no
search for the input's values finds them all. An engine's message therefore
keeps its location, the policy's locations and the engine's own words
(engine_words.py); each run of anything else is masked as one. The message is
on one line, cut to MAX_ERROR_MESSAGE_CHARS at a word's end.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.audit.chain import REDACTED
from gateway.policy.engine_words import ENGINE_WORDS
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
# The leading "file:line[:col]: " of an engine's message, or the "data.x.y: " of
# one without a place: the policy's, kept whole.
_LOCATION = re.compile(r"^(?:\S+?:\d+(?::\d+)?|data(?:\.\w+)+): ")
# A word of an engine's sentence, as it writes them: "`sum`", "syntax.", "(got".
_WORD = re.compile(r"[`(]?([A-Za-z][\w./]*?)[`.,:;)]*")
# A place in the policy ("rule conflicts with rule at f.rego:7:1": no quote or
# bracket, as a rendered value's end has) and the name of a Python exception (an
# engine's own fault: "unexpected KeyError:").
_KEPT = re.compile(
    r"[^\s\"'`{}\[\](),;]+\.rego:\d+(?::\d+)?[.,:;]?|[A-Z][A-Za-z]*(?:Error|Exception):?"
)
# Failures whose message is Portcullis' own sentence, quoting no request value.
_OWN_WORDS = frozenset({"eval_cancel_error", "undefined_document", "policy_not_loaded"})


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
    """``{code, message}`` for the event: ``message`` with what the engine quoted
    (any word not its own, and each value of the decision input ``document``)
    masked, on one line, at most MAX_ERROR_MESSAGE_CHARS characters."""
    # Bounded before it is searched: an engine's message may be a page long.
    message = message[: MAX_ERROR_MESSAGE_CHARS * 4]
    location = _LOCATION.match(message)
    head = location.group() if location else ""
    text = _mask_values(message[len(head) :], document)
    if code not in _OWN_WORDS:
        text = _engine_words(text)
    text = shown(head + text)
    if len(text) > MAX_ERROR_MESSAGE_CHARS:
        cut = text.rfind(" ", 0, MAX_ERROR_MESSAGE_CHARS + 1)
        kept = text[: cut if cut > 0 else MAX_ERROR_MESSAGE_CHARS]
        text = f"{kept}...[{len(text) - len(kept)} more chars]"
    return {"code": shown(code)[:64], "message": text}


def _engine_words(text: str) -> str:
    """``text``'s words that are the engine's or a place in the policy, one space
    apart; each run of other words masked as one (with the punctuation after it)."""
    said: list[str] = []
    masked, in_run = "", False
    for word in text.split():
        if _is_engines(word):
            if in_run:
                said.append(REDACTED + masked)
                in_run = False
            said.append(word)
            continue
        in_run = True
        masked = word[-1] if word[-1] in ".,:;" else ""  # the sentence's, after a quote
    if in_run:
        said.append(REDACTED + masked)
    return " ".join(said)


def _is_engines(word: str) -> bool:
    if _KEPT.fullmatch(word):
        return True
    found = _WORD.fullmatch(word)
    return found is not None and all(
        part in ENGINE_WORDS for part in re.split(r"[./]", found.group(1))
    )


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
