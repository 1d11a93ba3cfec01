"""The ``opa`` format: the log's own records, as OPA's decision-log API takes them.

Decision events already use OPA's field names (``decision_id``, ``timestamp``,
``path``, ``input``, ``result``, ``labels``, ``metrics``, ``bundles``); the
record is shipped whole with its chain fields (``seq``, ``prev_hash``) plus
``chain_hash``, the hash of its own line. A chain signature is shipped whole
too, with ``line_hash``, so it is a head `audit verify --head` accepts.

Since the record ships whole, most lines need no parsing: :func:`encode_line`
ships the line's own bytes with the hash spliced in, and reads only the few
fields the shipper and the sinks use. The rest go through :func:`format`."""

from __future__ import annotations

from typing import Any, TypedDict

import msgspec

from gateway.audit.chain import SIGNATURE_TYPE


def format(record: dict[str, Any], digest: str) -> dict[str, Any]:
    if record.get("type") == SIGNATURE_TYPE:
        return {**record, "line_hash": digest}
    return {**record, "chain_hash": digest}


class _Result(TypedDict, total=False):
    allow: Any


class _Labels(TypedDict, total=False):
    shadow: Any


class _Head(TypedDict, total=False):
    """What the shipper and the sinks read of a record (the syslog header, HEC's
    time, the batch's seq and first time), and the two keys this format adds:
    the rest of the line is checked as JSON but not turned into objects."""

    type: Any
    decision_id: Any
    timestamp: Any
    signed_at: Any
    read_at: Any
    path: Any
    seq: Any
    result: _Result
    labels: _Labels
    chain_hash: Any
    line_hash: Any


_HEAD = msgspec.json.Decoder(_Head)


def encode_line(raw: bytes, digest: str) -> tuple[dict[str, Any], bytes] | None:
    """The record's head fields (a dict of those the line has: ``type``,
    ``decision_id``, ``timestamp``, ``signed_at``, ``read_at``, ``path``, ``seq``,
    ``result.allow``, ``labels.shadow``) and :func:`format`'s JSON of it,
    made from the line's bytes; None if the line must be parsed instead.

    The bytes are the line's with ``"chain_hash"`` (``"line_hash"``) added
    before its closing brace: what the writer wrote, byte for byte. Taken only
    for a line that is one JSON object of valid UTF-8 (msgspec checks the
    whole text: escapes, lone surrogates, nesting), written compactly from
    ``{`` to ``}`` and with no CR (a JSON-lines reader may break lines there),
    with no key of those names already (the record's own would stay beside
    the added one), and with a ``seq`` a 64-bit integer holds, if an integer.
    Anything else (a damaged line, lone surrogates the writer's fallback
    escaped, a ``result`` that is no object) is parsed and formatted as before.
    So a record orjson can't write again ships as written here, not as a
    damaged record: one nested deeper than its 254 levels (a policy's
    ``step_up``: the writer's stdlib fallback wrote it), or holding a number
    no 64-bit type holds elsewhere than its seq (a hand-edited line). (About
    2.5 us a record against 5.5 parsed and encoded again.)"""
    if raw[:1] != b"{" or raw[-1:] != b"}" or raw[-2:-1] in _NOT_BEFORE_CLOSE:
        return None
    if b"\r" in raw:  # between tokens (a string's is escaped): it would split a JSON line
        return None
    if not raw.isascii():
        try:
            raw.decode()
        except UnicodeDecodeError:
            return None
    try:
        head: dict[str, Any] = _HEAD.decode(raw)  # type: ignore[assignment]
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None
    if "chain_hash" in head or "line_hash" in head:
        return None
    seq = head.get("seq")
    if type(seq) is int and not -(2**63) <= seq < 2**64:
        return None  # parsed, it is a float, not the log's seq (which orjson can't send on)
    key = b',"line_hash":"' if head.get("type") == SIGNATURE_TYPE else b',"chain_hash":"'
    return head, b"".join((raw[:-1], key, digest.encode(), b'"}'))


# The byte before a line's closing brace, when a key can't follow it: an empty
# object's opening brace, or whitespace (compact JSON has none there; a CR is
# refused before).
_NOT_BEFORE_CLOSE = frozenset({b"{", b" ", b"\t", b"\n"})
