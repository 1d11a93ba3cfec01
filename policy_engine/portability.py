"""Rego that means one thing on OPA and another on regorus: found in the AST.

The known divergence: under `not`, OPA first evaluates the arguments of a call
(and a call used as an operand, `not f(x) in s`, `not count(x) > 1`) outside
the negation. When such an argument is undefined (`input.x` absent, a rule with
no value, a function with no result), OPA leaves the whole `not` undefined and
the rule body fails, where regorus says the `not` holds. OPA compiles the
operators to calls too (`x in s` is `internal.member_2(x, s)`, `x > 1` is
`gt(x, 1)`), so their operands are arguments: `not "admin" in input.roles`
diverges when `input.roles` is absent. `==` and `=` are unification, not calls:
a reference on either side stays inside the `not` (`not input.x == 1` agrees),
but one inside an array, set or object (`not [input.x] == [1]`) doesn't, as in
any argument. `policy check` warns on every such place; bind the value with a
default first (`object.get`, a helper rule tested with `not helper`) and both
engines agree.
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
_COMPOSITES = ("Array", "Set", "Object")
_SCALARS = ("String", "RawString", "Number", "Bool", "Null")
# Operators OPA evaluates as builtin calls (`x in s` too), as Rego spells them.
_OPERATORS = ("BoolExpr", "ArithExpr", "BinExpr")
_SYMBOLS = {
    "Ne": "!=",
    "Lt": "<",
    "Le": "<=",
    "Gt": ">",
    "Ge": ">=",
    "Add": "+",
    "Sub": "-",
    "Mul": "*",
    "Div": "/",
    "Mod": "%",
    "Union": "|",
    "Intersection": "&",
}
_UNIFICATIONS = (("BoolExpr", "Eq"), ("AssignExpr", "Eq"))
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
        # Names whose value may be undefined: the module's rules less those that
        # always have one, its imports, and `data`.
        rules = _rule_names(ast) - _always_defined(ast)
        rules |= set(module_shape(entry).imports) | {"data"}
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


def _always_defined(ast: dict[str, Any]) -> set[str]:
    """Rules that have a value whatever the input: a `default`, or a definition with
    no body whose value is written out (`admins := {"admin"}`, `roles contains "x"`)
    or built by a comprehension (empty when its query fails)."""
    names = set()
    for raw in ast.get("rules", []):
        if "Default" in raw:
            value, refr = raw["Default"]["value"], raw["Default"]["refr"]
        elif "Spec" in raw and not raw["Spec"].get("bodies"):
            kind, head = next(iter(raw["Spec"]["head"].items()))
            if kind == "Func":  # `f(1) := true` has no value for f(2)
                continue
            refr = head["refr"]
            value = head.get("key") if kind == "Set" else (head.get("assign") or {}).get("value")
        else:
            continue
        path = ref_path(refr)
        if path and value is not None and _always_has_value(value):
            names.add(path[0])
    return names


def _always_has_value(node: Any) -> bool:
    """A literal, a comprehension, or an array, set or object of them."""
    if not isinstance(node, dict) or len(node) != 1:
        return False
    kind, body = next(iter(node.items()))
    if kind in _COMPOSITES and isinstance(body, dict):
        return all(_always_has_value(element) for element in _elements(body))
    return kind in _SCALARS or kind in _COMPREHENSIONS


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
            part = _undefined_part(param, rules)
            if part is not None:
                yield part, f"an argument of {name}(...) that may be undefined"
            else:
                yield from _risky(param, rules, top=False)
        return
    if (kind, body.get("op")) in _UNIFICATIONS:
        symbol = "==" if kind == "BoolExpr" else "="
        # A reference or rule as a whole side stays inside the `not`; one within
        # an array, set or object is an argument, as in a call.
        for side in (body["lhs"], body["rhs"]):
            whole = _is_name(side, rules) or _is_call(side)
            part = None if whole else _undefined_part(side, rules)
            if part is not None:
                yield part, f"a value inside an operand of `{symbol}` that may be undefined"
            else:
                yield from _risky(side, rules, top=False)
        return
    if kind == "Membership" or kind in _OPERATORS:
        if kind == "Membership":  # `k, v in o` has a key; `v in c` has None there
            symbol, operands = "in", [body.get("key"), body["value"], body["collection"]]
        else:
            symbol = _SYMBOLS.get(str(body["op"]), str(body["op"]))
            operands = [body["lhs"], body["rhs"]]
        for operand in operands:
            part = None if _is_call(operand) else _undefined_part(operand, rules)
            if part is not None:
                yield part, f"an operand of `{symbol}` that may be undefined"
            else:  # a call's own arguments, or the operands of an operator within
                yield from _risky(operand, rules, top=False)
        return
    if kind == "RefBrack" and _undefined_part(body.get("index"), rules) is not None:
        yield body["index"], "an index that may be undefined"
        return
    for key, value in body.items():
        if key not in ("span", "eidx", "refr", "fcn"):
            children = value if isinstance(value, list) else [value]
            for child in children:
                yield from _risky(child, rules, top=False)


def _is_call(node: Any) -> bool:
    return isinstance(node, dict) and "Call" in node


def _is_name(node: Any, rules: set[str]) -> bool:
    """A reference (`input.x`, `o.tags`) or a rule's name, as a whole."""
    if not isinstance(node, dict) or len(node) != 1:
        return False
    kind, body = next(iter(node.items()))
    return kind in _REFS or (
        kind == "Var" and isinstance(body, dict) and body.get("value") in rules
    )


def _undefined_part(node: Any, rules: set[str]) -> Any | None:
    """The part of an argument that may be undefined (the argument itself, or the
    first element of an array, set or object that may be), or None."""
    if not isinstance(node, dict) or len(node) != 1:
        return None
    kind, body = next(iter(node.items()))
    if kind in _COMPOSITES and isinstance(body, dict):
        for element in _elements(body):
            part = _undefined_part(element, rules)
            if part is not None:
                return part
        return None
    return node if _may_be_undefined(node, rules) else None


def _elements(body: dict[str, Any]) -> Iterator[Any]:
    """An array's or set's items, an object's keys and values."""
    yield from body.get("items", [])
    for field in body.get("fields", []):
        yield from field[1:]  # [span, key, value]


def _may_be_undefined(node: Any, rules: set[str]) -> bool:
    if not isinstance(node, dict) or len(node) != 1:
        return False
    kind, body = next(iter(node.items()))
    if kind in _REFS:
        return True
    if kind in _COMPOSITES:
        return _undefined_part(node, rules) is not None
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
