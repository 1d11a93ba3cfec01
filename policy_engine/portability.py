"""Rego that means one thing on OPA and another on regorus: found in the AST.

The known divergence: under `not`, OPA first evaluates the arguments of a call
(and a call used as an operand, `not f(x) in s`, `not count(x) > 1`) outside
the negation. When such an argument is undefined (`input.x` absent, a rule with
no value, a function with no result), OPA leaves the whole `not` undefined and
the rule body fails, where regorus says the `not` holds. `policy check` warns on
every such place; bind the value with a default first (`object.get`, a helper
rule tested with `not helper`) and both engines agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from policy_engine.embedded import new_engine
from policy_engine.errors import Problem, character_column
from policy_engine.policy_set import PolicySet
from policy_engine.rego_ast import module_shape, ref_path

WARNING = (
    "`not` over {what}: if it is undefined, OPA treats the whole `not` as undefined "
    "(the rule fails) while regorus treats it as true; test it in a helper rule "
    "(`not helper`) or give it a default with object.get"
)
_REFS = ("RefDot", "RefBrack")
# Nodes whose bodies are queries of their own: a `not` doesn't reach inside.
_COMPREHENSIONS = ("ArrayCompr", "SetCompr", "ObjectCompr")


def portability_warnings(policy_set: PolicySet) -> list[Problem]:
    """Warnings for a policy set that loads (see undefined_under_not)."""
    engine = new_engine(policy_set)
    return undefined_under_not(json.loads(engine.get_ast_as_json()))


def undefined_under_not(ast_entries: list[dict[str, Any]]) -> list[Problem]:
    """A warning per place where OPA and regorus disagree on `not` (see module doc)."""
    problems = []
    for entry in ast_entries:
        ast = entry["ast"]
        file = entry["source"]["file"]
        rules = _rule_names(ast) | set(module_shape(entry).imports) | {"data"}
        lines = str(entry["source"].get("contents", "")).splitlines()
        for negated in _find(ast.get("rules", []), "NotExpr"):
            for node, what in _risky(negated["expr"], rules, top=True):
                span = _span(node, lines)
                problems.append(
                    Problem(file, f"warning: {WARNING.format(what=what)}", span[0], span[1])
                )
    return problems


def _rule_names(ast: dict[str, Any]) -> set[str]:
    names = set()
    for raw in ast.get("rules", []):
        spec = raw.get("Spec") or raw.get("Default") or {}
        head = spec.get("head")
        refr = next(iter(head.values()))["refr"] if isinstance(head, dict) else spec.get("refr")
        path = ref_path(refr) if refr is not None else None
        if path:
            names.add(path[0])
    return names


def _find(node: Any, kind: str) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if kind in node and isinstance(node[kind], dict):
            yield node[kind]
        for value in node.values():
            yield from _find(value, kind)
    elif isinstance(node, list):
        for value in node:
            yield from _find(value, kind)


def _risky(node: Any, rules: set[str], *, top: bool) -> Iterator[tuple[Any, str]]:
    """Parts of a negated expression whose undefinedness OPA lifts out of the `not`."""
    if not isinstance(node, dict) or len(node) != 1:
        return
    kind, body = next(iter(node.items()))
    if kind in _COMPREHENSIONS or not isinstance(body, dict):
        return
    if kind == "Call":
        path = ref_path(body["fcn"]) or ("a function",)
        name = ".".join(path)
        if not top and path[0] in rules:
            yield node, f"the result of {name}(...) used as an operand"
            return
        for param in body.get("params", []):
            if _may_be_undefined(param, rules):
                yield param, f"an argument of {name}(...) that may be undefined"
            else:
                yield from _risky(param, rules, top=False)
        return
    if kind == "RefBrack" and _may_be_undefined(body.get("index"), rules):
        yield body["index"], "an index that may be undefined"
        return
    for key, value in body.items():
        if key not in ("span", "eidx", "refr", "fcn"):
            children = value if isinstance(value, list) else [value]
            for child in children:
                yield from _risky(child, rules, top=False)


def _may_be_undefined(node: Any, rules: set[str]) -> bool:
    if not isinstance(node, dict) or len(node) != 1:
        return False
    kind, body = next(iter(node.items()))
    if kind in _REFS:
        return True
    if kind == "Call":  # a user function may have no value; a builtin, undefined arguments
        path = ref_path(body["fcn"]) or ("",)
        return path[0] in rules or any(_may_be_undefined(p, rules) for p in body["params"])
    return kind == "Var" and isinstance(body, dict) and body.get("value") in rules


def _span(node: Any, lines: list[str]) -> tuple[int | None, int | None]:
    """Where a node starts (the `input` of `input.a.b`), in characters."""
    body = next(iter(node.values())) if isinstance(node, dict) and node else {}
    while isinstance(body, dict):  # down to the leftmost part: `f` of `f(x)`, `a` of `a.b`
        inner = body.get("fcn") or body.get("refr")
        if not isinstance(inner, dict) or not inner:
            break
        body = next(iter(inner.values()))
    span = body.get("span") if isinstance(body, dict) else None
    if not isinstance(span, dict) or not isinstance(span.get("line"), int):
        return None, None
    line, column = span["line"], span.get("col")
    if isinstance(column, int) and 0 < line <= len(lines):
        column = character_column(lines[line - 1], column)
    return line, column
