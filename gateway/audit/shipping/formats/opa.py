"""The ``opa`` format: the log's own records, as OPA's decision-log API takes them.

Decision events already use OPA's field names (``decision_id``, ``timestamp``,
``path``, ``input``, ``result``, ``labels``, ``metrics``, ``bundles``); the
record is shipped whole with its chain fields (``seq``, ``prev_hash``) plus
``chain_hash``, the hash of its own line. A chain signature is shipped whole
too, with ``line_hash``, so it is a head `audit verify --head` accepts."""

from __future__ import annotations

from typing import Any

from gateway.audit.chain import SIGNATURE_TYPE


def format(record: dict[str, Any], digest: str) -> dict[str, Any]:
    if record.get("type") == SIGNATURE_TYPE:
        return {**record, "line_hash": digest}
    return {**record, "chain_hash": digest}
