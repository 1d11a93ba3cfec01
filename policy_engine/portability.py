"""Rego that means one thing on OPA and another on regorus: found in the AST.

A variable that only a `not` mentions (`not input.roles[_] == "admin"`) makes OPA
refuse the module as unsafe; regorus reads it as "for no such value". Warned.

The other known divergence: under `not`, OPA first evaluates the arguments of a call
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
from policy_engine.errors import Problem
from policy_engine.policy_set import PolicySet
from policy_engine.rego_ast import ground_prefix, module_shape, ref_path, source_position

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


UNSAFE = (
    "var {name} is unsafe: nothing outside the `not` binds it, so OPA refuses the "
    "module (rego_unsafe_var_error) while regorus reads the `not` as 'no value of "
    "{name} makes this true'; write that as a helper rule (`not helper`, with "
    "`helper if <the expression>`)"
)
UNBOUND = (
    "var {name} is unsafe: nothing binds it (`some {name} in ...`, `{name} := ...`, "
    "an index `xs[{name}]`), so OPA refuses the module (rego_unsafe_var_error); "
    "regorus leaves the rule undefined"
)


def portability_warnings(policy_set: PolicySet) -> list[Problem]:
    """Warnings for a policy set that loads (see undefined_under_not and
    unsafe_under_not), in the order of the files and lines they are about."""
    engine = new_engine(policy_set)
    entries = json.loads(engine.get_ast_as_json())
    found = undefined_under_not(entries) + unsafe_under_not(entries)
    return sorted(found, key=lambda p: (p.file, p.line or 0, p.col or 0))


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
                span = source_position(node, lines)
                problems.append(
                    Problem(file, f"warning: {WARNING.format(what=what)}", span[0], span[1])
                )
    return problems


def unsafe_under_not(ast_entries: list[dict[str, Any]]) -> list[Problem]:
    """A warning per variable that nothing binds where OPA looks for a binding: one
    a `not` mentions (`not input.roles[_] == "admin"`, `some x; not p[x]`), which
    regorus evaluates (as "for no such value"), and one an operator or a call
    mentions in a query where otherwise only a `not` or `some x` does, which it
    loads. OPA refuses both. A variable is bound by the rule's function arguments,
    by the query around it (a comprehension's, `every`'s), or by an expression of
    its query that isn't negated: `x := ...`, either side of `=`, `some x in ...`,
    an index `xs[x]`."""
    names = {"input", "data"}
    for entry in ast_entries:
        names |= _rule_names(entry["ast"]) | set(module_shape(entry).imports)
    problems: list[Problem] = []
    for entry in ast_entries:
        scope = _Scope(entry, names, problems)
        for raw in entry["ast"].get("rules", []):
            spec = raw.get("Spec")
            if not isinstance(spec, dict):
                continue
            head = next(iter(spec["head"].values()))
            arguments = set(_names(_vars(head.get("args", []))))
            for body in spec.get("bodies", []):
                scope.check(body["query"], arguments)
    return problems


class _Scope:
    """One module's queries, checked for variables nothing binds."""

    def __init__(self, entry: dict[str, Any], names: set[str], problems: list[Problem]):
        self.file = entry["source"]["file"]
        contents = str(entry["source"].get("contents", ""))
        self.source = contents.encode()
        self.lines = contents.splitlines()
        self.names = names
        self.problems = problems

    def check(self, query: dict[str, Any], outer: set[str]) -> None:
        literals = [stmt["literal"] for stmt in query.get("stmts", [])]
        bound = outer | self.names
        binding: list[dict[str, Any]] = []
        for literal in literals:
            binding += _binding(literal)
        bound |= set(_names(binding)) - {"_"}
        said: set[str] = set()
        for literal in literals:
            if "NotExpr" in literal:
                unsafe = [v for v in _vars(literal["NotExpr"]["expr"]) if _unbound(v, bound)]
                self._warn(unsafe, UNSAFE, said)
            else:
                held = {id(var) for var in binding}
                mentioned = [v for v in _vars(literal) if id(v) not in held]
                self._warn([v for v in mentioned if _unbound(v, bound)], UNBOUND, said)
        for literal in literals:
            for kind, nested in _nested_queries(literal):
                extra = set()
                if kind == "Every":  # its key and value are spans: their names from the source
                    extra = {self._name_at(nested.get(part)) for part in ("key", "value")}
                self.check(nested["query"], bound | extra)

    def _warn(self, unsafe: list[dict[str, Any]], text: str, said: set[str]) -> None:
        """One warning per name and query: the first place it is unsafe."""
        for var in unsafe:
            name = str(var["value"])
            if name in said and name != "_":
                continue
            said.add(name)
            line, col = source_position({"Var": var}, self.lines)
            message = f"warning: {text.format(name=name)}"
            self.problems.append(Problem(self.file, message, line, col))

    def _name_at(self, span: Any) -> str:
        if not isinstance(span, dict) or "start" not in span:
            return ""
        return self.source[span["start"] : span["end"]].decode("utf-8", "replace")


def _unbound(var: dict[str, Any], bound: set[str]) -> bool:
    """`_` is a new variable wherever it is written."""
    return var.get("value") == "_" or var.get("value") not in bound


def _binding(literal: dict[str, Any]) -> list[dict[str, Any]]:
    """The Var nodes a literal that isn't negated binds (see unsafe_under_not)."""
    kind, body = next(iter(literal.items()))
    if kind == "SomeIn":
        return [*_vars(body.get("key")), *_vars(body["value"]), *_indices(body["collection"])]
    if kind != "Expr":  # `some x` declares, `every` binds inside only, `not` never
        return []
    expression = body["expr"]
    call = expression.get("Call")
    if isinstance(call, dict):  # a builtin's output: `min(s, x)`, `io.jwt.decode(t, [h, p, s])`
        return list(_vars(call["params"]))
    assign = expression.get("AssignExpr")
    if isinstance(assign, dict):
        value = assign["rhs"]
        # `=` unifies both sides; `:=` binds its left from a right that must be bound.
        values = list(_vars(value)) if assign.get("op") == "Eq" else list(_indices(value))
        return [*_vars(assign["lhs"]), *values]
    return list(_indices(expression))


def _indices(node: Any) -> Iterator[dict[str, Any]]:
    """Variables written as a reference's index (`xs[x]`): they iterate, so bind."""
    if isinstance(node, dict):
        if isinstance(node.get("query"), dict):
            return
        for key, value in node.items():
            if key == "RefBrack" and isinstance(value, dict):
                index = value.get("index")
                if isinstance(index, dict) and isinstance(index.get("Var"), dict):
                    yield index["Var"]
            if key != "fcn":
                yield from _indices(value)
    elif isinstance(node, list):
        for value in node:
            yield from _indices(value)


def _vars(node: Any) -> Iterator[dict[str, Any]]:
    """The Var nodes of an expression, less function names and what has a query of
    its own (a comprehension, `every`: their variables are theirs)."""
    if isinstance(node, dict):
        if isinstance(node.get("query"), dict):
            return
        for key, value in node.items():
            if key == "Var" and isinstance(value, dict):
                yield value
            elif key != "fcn":
                yield from _vars(value)
    elif isinstance(node, list):
        for value in node:
            yield from _vars(value)


def _names(variables: Any) -> Iterator[str]:
    for var in variables:
        if isinstance(var.get("value"), str):
            yield var["value"]


def _nested_queries(node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """The queries directly inside a literal: comprehensions' and `every`'s, each
    with the kind of node that holds it."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict) and isinstance(value.get("query"), dict):
                yield key, value
            else:
                yield from _nested_queries(value)
    elif isinstance(node, list):
        for value in node:
            yield from _nested_queries(value)


def _rule_names(ast: dict[str, Any]) -> set[str]:
    names = set()
    for raw in ast.get("rules", []):
        spec = raw.get("Spec") or raw.get("Default") or {}
        head = spec.get("head")
        refr = next(iter(head.values()))["refr"] if isinstance(head, dict) else spec.get("refr")
        path = ground_prefix(refr)[0] if refr is not None else ()
        if path:  # `p[0] := 1` too
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
