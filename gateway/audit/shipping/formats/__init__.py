"""Record formats, one module per format: opa (the log's own records), ocsf, ecs.

Each module has ``format(record, digest) -> dict``: ``record`` is a parsed log
line (a decision event or a ``chain_signature``), ``digest`` the line's chain
hash. Every output carries ``decision_id`` (events), ``seq`` and the chain hash,
so the SIEM can spot gaps and duplicates, and a chain signature keeps its record
whole, so `portcullis audit verify --head` can use the SIEM's copy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Formatter = Callable[[dict[str, Any], str], dict[str, Any]]
FORMATS = ("opa", "ocsf", "ecs")


def formatter(name: str) -> Formatter:
    """The ``format`` function of a format by name."""
    if name == "ocsf":
        from gateway.audit.shipping.formats import ocsf

        return ocsf.format
    if name == "ecs":
        from gateway.audit.shipping.formats import ecs

        return ecs.format
    from gateway.audit.shipping.formats import opa

    return opa.format
