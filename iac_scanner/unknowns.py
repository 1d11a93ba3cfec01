"""Say why a value is unknown, in the words a user can act on: "var.encrypted
has no value", "data.aws_vpc.main is read only at apply".

The evaluator's UNKNOWN carries no cause (keeping it a singleton keeps
evaluation cheap), so the cause is read back from the expression that set
the attribute: the names it refers to that have no value at plan time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from iac_scanner.expressions import has_unknown, traversal
from iac_scanner.hcl import Block, Expr, sub_expressions

# At most this many causes are named; the rest are summed up.
_MAX_CAUSES = 2


def _walk(expr: Any) -> Iterator[Expr]:
    """Every sub-expression of expr (traversals once, at their head)."""
    if not isinstance(expr, list) or not expr or not isinstance(expr[0], str):
        return
    yield expr
    kind = expr[0]
    chain = traversal(expr) if kind in ("attr", "index", "splat", "name") else None
    if chain is not None:
        for operation in chain[1]:
            if operation[0] == "index":
                yield from _walk(operation[1])
        return
    for child in sub_expressions(expr):
        yield from _walk(child)


def _expressions(block: Block, path: list[str]) -> list[Expr]:
    """The expressions that set `path` (its first segment) in a resource block."""
    if not path:
        return []
    name = path[0]
    if name in block["attrs"]:
        return [block["attrs"][name]]
    found: list[Expr] = []
    for inner in block["blocks"]:
        if inner["type"] == name or (inner["type"] == "dynamic" and inner["labels"][:1] == [name]):
            found.extend(inner["attrs"].values())
            for nested in inner["blocks"]:
                found.extend(_expressions(nested, [nested["type"]]))
    return found


@dataclass
class Scope:
    """What names mean in the module the block is in."""

    variable: Callable[[str], Any]
    local: Callable[[str], Expr | None]
    is_resource_type: Callable[[str], bool]
    known_function: Callable[[str], bool]


def describe(block: Block, path: list[str], scope: Scope) -> str:
    """Why the value at path is unknown, e.g. "var.encrypted has no value"."""
    causes: list[str] = []
    pending = list(_expressions(block, path))
    seen_locals: set[str] = set()
    while pending:
        for node in _walk(pending.pop(0)):
            chain = traversal(node) if node[0] in ("attr", "index", "name") else None
            if chain and chain[0] == "local" and chain[1] and chain[1][0][0] == "attr":
                name = chain[1][0][1]
                local = scope.local(name)
                if name not in seen_locals and local is not None:
                    seen_locals.add(name)
                    pending.append(local)
                continue
            cause = _cause(node, scope)
            if cause and cause not in causes:
                causes.append(cause)
    if not causes:
        if not _expressions(block, path):
            return "it is set by a block the scanner could not expand"
        return "an expression the scanner does not evaluate"
    text = "; ".join(causes[:_MAX_CAUSES])
    if len(causes) > _MAX_CAUSES:
        text += f"; and {len(causes) - _MAX_CAUSES} more"
    return text


def _cause(node: Expr, scope: Scope) -> str | None:
    if node[0] == "call":
        name = str(node[1]).removeprefix("provider::terraform::")
        return None if scope.known_function(name) else f"function {name}() is not evaluated"
    chain = traversal(node) if node[0] in ("attr", "index", "splat", "name") else None
    if chain is None:
        return None
    root, operations = chain
    names = [op[1] for op in operations if op[0] == "attr"]
    if root == "var" and names:
        value = scope.variable(names[0])
        return f"var.{names[0]} has no value" if has_unknown(value) else None
    if root == "data" and len(names) >= 2 and names[0] == "aws_iam_policy_document":
        # Computed from its configuration, unless part of that is unknown too.
        return f"data.{names[0]}.{names[1]} has values the scanner can't see"
    if root == "data" and len(names) >= 2:
        return f"data.{names[0]}.{names[1]} is read only at apply"
    if root == "module" and len(names) >= 2:
        return f"module.{names[0]}.{names[1]} is unknown"
    if root in ("count", "each"):
        return f"{root}.{'.'.join(names) or 'value'} is unknown (count/for_each not resolved)"
    if scope.is_resource_type(root) and len(names) >= 2:
        return f"{root}.{names[0]}.{names[1]} is known only after apply"
    return None
