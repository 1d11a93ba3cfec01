"""Which replayed answers can be compared: the input fields a policy reads that a
logged input lacks or the log masked.

A replayed decision is the policy's answer to the input as logged. Where the
policy reads a field the logged input lacks (written by a gateway that didn't
set it yet: `source.principal`, `protocol`, `destination` before they were
added) or one the log masked or cut (an API key header, `?token=`), that answer
is not the one the live input would get: a deny on the field never fires, a
`not` of it always holds. Such a decision is counted as not comparable, never
as unchanged. What a policy reads is read off its modules
(:func:`policy_engine.input_reads.input_reads`, as the decision memo and `policy
check` do); an OPA URL's is not known, so it counts as reading all of `input`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.audit.redaction import pointer_parts
from gateway.policy.decision import DECISION_PATH
from gateway.policy.input_contract import (
    LEFT_OUT,
    contract_leaves,
    left_out_of_every_log,
    rego_ref,
)
from policy_engine import PolicyEngine
from policy_engine.input_reads import input_reads
from portcullis.replay.events import LoggedDecision

Path = tuple[str, ...]
# Why a field's logged value is not the live one (the report's words).
ABSENT, MASKED, CUT = "absent", "masked", "cut"
WHYS = (ABSENT, MASKED, CUT)


def policy_reads(engine: PolicyEngine) -> frozenset[Path] | None:
    """The input paths the gateway's decision can read on ``engine``; None when
    they are not known (an OPA URL)."""
    compiled = getattr(engine, "compiled", None)
    if compiled is None:
        return None
    return input_reads(compiled.shapes, DECISION_PATH, ()).reads


class Comparability:
    """For the policies replayed (the candidate, and a baseline policy if given):
    which fields of a logged decision's input their answers depend on that the
    live input held otherwise."""

    def __init__(self, reads: Iterable[frozenset[Path] | None]) -> None:
        paths: set[Path] = set()
        self.reads_unknown = False
        for read in reads:
            if read is None:
                self.reads_unknown = True
                read = frozenset({()})
            paths |= read
        self.reads = tuple(sorted(paths))
        # The contract's paths read, by parent: one walk and one set check per parent.
        under: dict[Path, set[str]] = {}
        for path in paths:
            for leaf in contract_leaves(path):
                if not left_out_of_every_log(leaf):
                    under.setdefault(leaf[:-1], set()).add(leaf[-1])
        self.under = tuple((parent, frozenset(keys)) for parent, keys in sorted(under.items()))

    def unknown(self, logged: LoggedDecision) -> list[tuple[str, str]]:
        """(field as Rego writes it, why) for each field read that the logged input
        lacks or holds masked or cut; empty when the answer can be compared."""
        found: list[tuple[str, str]] = []
        document = logged.input
        for parent, keys in self.under:
            # Inline, for the logged input that holds them all (nearly every one).
            node: Any = document
            for key in parent:
                node = node.get(key) if type(node) is dict else None
            if type(node) is not dict or not node.keys() >= keys:
                self._absent(document, found)
                break
        if logged.differs_from_live:
            for pointers, why in ((logged.masked, MASKED), (logged.truncated, CUT)):
                for pointer in pointers:
                    parts = pointer_parts(pointer)
                    if parts[:1] != ("input",):
                        continue
                    path = parts[1:]
                    if any(_overlap(path, read) for read in self.reads):
                        field = (rego_ref(path), why)
                        if field not in found:
                            found.append(field)
        return found

    def _absent(self, document: dict[str, Any], found: list[tuple[str, str]]) -> None:
        for parent, keys in self.under:
            for path in lacked_under(document, parent, keys):
                field = (rego_ref(path), ABSENT)
                if field not in found:
                    found.append(field)


def _overlap(path: Path, read: Path) -> bool:
    """Whether reading ``read`` reads (part of) ``path``: one is the other or under it."""
    shorter = min(len(path), len(read))
    return path[:shorter] == read[:shorter]


def lacked_under(document: dict[str, Any], parent: Path, keys: frozenset[str]) -> list[Path]:
    """What a logged decision input lacks of ``parent + (key,)`` for each of ``keys``
    (:func:`contract_leaves` paths) while the live one would hold it, in one walk:
    the first key missing on the way to ``parent``, else each of ``keys`` missing
    under it."""
    node: Any = document
    for depth, key in enumerate(parent):
        if type(node) is not dict:
            return []  # a value the log holds as logged: replayed as it is
        if key not in node:
            return _unless_left_out(document, parent[: depth + 1])
        node = node[key]
    if type(node) is not dict or node.keys() >= keys:
        return []
    return [
        path
        for key in sorted(keys - node.keys())
        for path in _unless_left_out(document, (*parent, key))
    ]


def _unless_left_out(document: dict[str, Any], missing: Path) -> list[Path]:
    left_out = LEFT_OUT.get(missing)
    return [] if left_out is not None and left_out(document) else [missing]
