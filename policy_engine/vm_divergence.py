"""Rego that regorus' compiled VM (RVM) evaluates otherwise than its interpreter
and OPA: found in the AST, so the gateway never runs such a policy on the VM.

The VM (gordon-to-regorus 0.13) does not stop a body at `x := <undefined>`: the
assignment fails on the interpreter and on OPA, but the VM goes on with `x`
undefined, and only a later expression that uses `x` fails. A `not` over an
expression with `x` in it is then true. So `o := input.origin` followed by
`not startswith(o, "a")` holds on the VM for a request without an Origin, where
the interpreter and OPA find the rule undefined. The same holds through further
assignments (`p := concat("", [o])`, then `not startswith(p, "a")`) and inside
comprehensions. A positive use of the variable before the `not` (`o` alone, a
comparison, a call) makes the body fail there, as it should; `=` (unification)
and `some x in ...` fail at once on the VM too. A query nested in a later
statement (a comprehension, an `every`) sees the variable as it is, undefined:
`count([1 | not startswith(o, "a")]) == 1` holds on the VM, so a `not` there is
a first use under `not` as well, and so is one in the value the rule gives
(`p := count([1 | not startswith(o, "a")]) if { o := ... }`, an `else`'s value).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from policy_engine.errors import Problem
from policy_engine.rego_ast import source_position

WARNING = (
    "`{name} := ...` is used first under `not`: if its value is undefined, "
    "regorus' compiled VM goes on and the `not` holds, where its interpreter and "
    "OPA find the rule undefined; use {name} before the `not` (`{name}` alone on a "
    "line), so the gateway can decide this policy on its compiled VM"
)
# Values that are always defined: an assignment of one can't be undefined.
_LITERALS = ("String", "RawString", "Number", "Bool", "Null")


def unfinished_assignments(ast_entries: list[dict[str, Any]]) -> list[Problem]:
    """A warning per variable assigned a value that may be undefined and used
    first under a `not`, in every query of every module (rule bodies,
    comprehensions, `every`), or in a comprehension of the rule's value."""
    problems = []
    for entry in ast_entries:
        file = entry["source"]["file"]
        lines = str(entry["source"].get("contents", "")).splitlines()
        rules = entry["ast"].get("rules", [])
        values = _rule_values(rules)
        for query in _queries(rules):
            for _, var in _used_first_under_not(query, {}, values.get(id(query))):
                line, column = source_position({"Var": var}, lines)
                problems.append(
                    Problem(file, f"warning: {WARNING.format(name=var['value'])}", line, column)
                )
    return problems


def _queries(node: Any) -> Iterator[dict[str, Any]]:
    """Every query (a list of statements) in the AST, nested ones too."""
    if isinstance(node, dict):
        if isinstance(node.get("stmts"), list):
            yield node
        for key, value in node.items():
            if key != "span" and isinstance(value, dict | list):  # no query in a span
                yield from _queries(value)
    elif isinstance(node, list):
        for value in node:
            if isinstance(value, dict | list):
                yield from _queries(value)


def _rule_values(rules: Any) -> dict[int, Any]:
    """id(a rule body's query) -> what the rule gives when that body holds (its
    head, or an `else`'s value), which the VM evaluates with the body's variables
    as they are: `p := count([1 | not startswith(o, "a")]) if { o := ... }`.
    Only values with a `not` in them: the others can't hold one."""
    values: dict[int, Any] = {}
    for rule in rules if isinstance(rules, list) else []:
        spec = next(iter(rule.values()), None) if isinstance(rule, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("bodies"), list):
            continue
        head_has_not = _has_not(spec.get("head"))
        for body in spec["bodies"]:
            if not isinstance(body, dict) or not isinstance(body.get("query"), dict):
                continue
            value = body.get("assign")
            if value is None and head_has_not:
                values[id(body["query"])] = spec.get("head")
            elif value is not None and _has_not(value):
                values[id(body["query"])] = value
    return values


def _used_first_under_not(
    query: dict[str, Any], inherited: dict[str, dict[str, Any]], then: Any = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, the Var node where it was assigned) of each assigned variable whose
    first use in this query, directly, through another assignment or in a query
    nested in a statement, is under a `not`. ``inherited``: the enclosing
    query's such variables still unused where this query is written; ``then``:
    what is evaluated once the query holds (a rule's value), its comprehensions
    last."""
    if not _has_not(query["stmts"]) and not _has_not(then):
        return  # most queries: nothing to find, and nothing to build to find it
    # name -> the Var node where it was assigned a value that may be undefined
    pending: dict[str, dict[str, Any]] = dict(inherited)
    # Expressions a statement of their own already required to be defined (and
    # not false): `override.groups` on one line, `groups := override.groups` next.
    checked: set[str] = set()
    for statement in query["stmts"]:
        literal = statement.get("literal", {})
        kind, body = next(iter(literal.items())) if literal else ("", {})
        mentioned = set(_var_names(body))
        if kind == "NotExpr":
            for name in sorted(mentioned & pending.keys()):
                yield name, pending.pop(name)
            continue
        # A comprehension or `every` in this statement runs with the variables as
        # they are: its own `not` over one that is undefined holds on the VM.
        for nested in _queries(body):
            for name, _ in list(_used_first_under_not(nested, pending)):
                if name in pending:
                    yield name, pending.pop(name)
        assignment = _assignment(kind, body)
        if assignment is not None:
            target, value = assignment
            # An assignment passes an undefined value on rather than failing.
            from_pending = [name for name in _var_names(value) if name in pending]
            if from_pending or (_may_be_undefined(value) and _shape(value) not in checked):
                origin = pending[from_pending[0]] if from_pending else target
                pending.setdefault(target["value"], origin)
            continue
        if kind == "Expr":
            checked.add(_shape(body.get("expr")))
        for name in mentioned:  # a positive use fails the body there
            pending.pop(name, None)
    for nested in _queries(then):
        for name, _ in list(_used_first_under_not(nested, pending)):
            if name in pending:
                yield name, pending.pop(name)


def _has_not(node: Any) -> bool:
    """Whether a `not` is anywhere in these statements, nested queries included."""
    if isinstance(node, dict):
        return "NotExpr" in node or any(
            _has_not(value) for key, value in node.items() if key != "span"
        )
    if isinstance(node, list):
        return any(_has_not(value) for value in node)
    return False


def _shape(node: Any) -> str:
    """An expression without where it is written, to compare two."""
    if isinstance(node, dict):
        return (
            "{"
            + ",".join(
                f"{key}:{_shape(value)}"
                for key, value in sorted(node.items())
                if key not in ("span", "eidx", "sidx") and not _is_span(value)
            )
            + "}"
        )
    if isinstance(node, list):
        return "[" + ",".join(_shape(value) for value in node if not _is_span(value)) + "]"
    return repr(node)


def _is_span(node: Any) -> bool:
    return isinstance(node, dict) and "line" in node and "col" in node


def _assignment(kind: str, body: Any) -> tuple[dict[str, Any], Any] | None:
    """(the Var assigned, its value) of `x := value`, or None."""
    if kind != "Expr":
        return None
    expr = body.get("expr", {})
    assign = expr.get("AssignExpr") if isinstance(expr, dict) else None
    if not isinstance(assign, dict) or assign.get("op") != "ColEq":
        return None
    target = assign.get("lhs", {}).get("Var")
    if not isinstance(target, dict) or not isinstance(target.get("value"), str):
        return None
    return target, assign.get("rhs")


def _may_be_undefined(node: Any) -> bool:
    if isinstance(node, dict) and len(node) == 1:
        kind, body = next(iter(node.items()))
        if kind in _LITERALS:
            return False
        if kind in ("Array", "Set", "Object"):
            return any(_may_be_undefined(item) for item in _items(body))
    return True


def _items(body: Any) -> Iterator[Any]:
    if isinstance(body, dict):
        for key in ("items", "fields"):
            for item in body.get(key, []):
                if isinstance(item, list):  # an object's [span, key, value]
                    yield from item[1:]
                else:
                    yield item


def _var_names(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        var = node.get("Var")
        if isinstance(var, dict) and isinstance(var.get("value"), str):
            yield var["value"]
        for value in node.values():
            yield from _var_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _var_names(value)
