"""Evaluate parsed HCL expressions the way Terraform would at plan time, or say
"unknown".

A value is plain Python data (str, int, float, bool, None, list, dict) or
UNKNOWN where the scanner can't see it (unset variables, data sources,
attributes computed at apply, functions it doesn't implement). Unknowns
propagate: the scanner never guesses a value a rule could misjudge.

merge() and concat() with an unknown argument give a PartialMap or a
PartialList: the part of the result that is certain whatever the unknown
holds, and a mark that there may be more. It is neither a dict nor a list, so
whatever needs the whole value (iteration, length, equality, for_each, a
template) finds it unknown; only what reads a certain part of it (an
attribute or key, lookup(), contains()) sees that part.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from iac_scanner.hcl import Expr, sub_expressions


class _Unknown:
    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __bool__(self) -> bool:
        raise TypeError("UNKNOWN has no truth value")


UNKNOWN: Any = _Unknown()


class Partial:
    """A map or list of which only part is known: `known` is certainly in it
    (a map's keys, a list's elements, some values of which may be UNKNOWN),
    and it may hold more the scanner can't name."""

    __slots__ = ("known",)
    known: Any

    def __bool__(self) -> bool:
        raise TypeError("a partly known value has no truth value")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.known == other.known

    __hash__ = None  # type: ignore[assignment]


class PartialMap(Partial):
    """Every key of `known` is in the map with that value (UNKNOWN where it may
    be overridden); the map may have other keys."""

    def __init__(self, known: dict[str, Any]) -> None:
        self.known = known

    def __repr__(self) -> str:
        return f"PartialMap({self.known!r})"

    def get(self, key: str) -> Any:
        """The value at key: known, or UNKNOWN (the key may be among the rest)."""
        return self.known.get(key, UNKNOWN)


class PartialList(Partial):
    """Every element of `known` is in the list (at positions the scanner may
    not know); the list may have other elements."""

    def __init__(self, known: list[Any]) -> None:
        self.known = known

    def __repr__(self) -> str:
        return f"PartialList({self.known!r})"


def is_unknown(value: Any) -> bool:
    """Whether value is unknown as a whole: UNKNOWN, or only partly known."""
    return value is UNKNOWN or isinstance(value, Partial)


def has_unknown(value: Any) -> bool:
    """Whether UNKNOWN appears anywhere inside value (a partly known value
    always has an unknown part)."""
    if is_unknown(value):
        return True
    if isinstance(value, dict):
        return any(has_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(has_unknown(v) for v in value)
    return False


class Namespace:
    """A name that is only meaningful traversed: `var`, `local`, `module`, a
    resource type. Subclasses answer `attr`; a Namespace is never a value."""

    def attr(self, name: str) -> Any:
        return UNKNOWN

    def index(self, key: Any) -> Any:
        return UNKNOWN


class MapNamespace(Namespace):
    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def attr(self, name: str) -> Any:
        return self.values.get(name, UNKNOWN)


UNKNOWN_NAMESPACE = Namespace()


class TooLarge(RecursionError):
    """A value, or the work to build it, larger than the scanner evaluates (a
    string doubled through locals, setproduct of large sets, loops in loops):
    a pull request could exhaust the CI runner with a few lines. Like nesting
    too deep it is an error naming the resource, never an unknown that passes,
    so it is a RecursionError: it goes through try() and can() and every
    place that reports nesting too deep reports it."""


class Budget:
    """What one scan may build while evaluating expressions: characters of
    strings and elements of collections, together. A real configuration uses
    a small part of it; without it an expression's cost has no bound."""

    LIMIT = 20_000_000

    def __init__(self) -> None:
        self.left = self.LIMIT

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise TooLarge(
                f"building it takes more than the {self.LIMIT:,} characters and elements "
                "the scanner evaluates in one scan"
            )


class Context:
    """What names mean where an expression is evaluated: local names (for-loop
    variables, count, each, self) over a resolver for the module's roots."""

    def __init__(
        self,
        resolve: Callable[[str], Any],
        names: dict[str, Any] | None = None,
        references: Callable[[str, list[Any]], set[str]] | None = None,
        on_read: Callable[[Path, bytes], None] | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.resolve = resolve
        self.budget = budget or Budget()
        self.names = names or {}
        self.references_of = references
        # Told of every file an expression reads (file()), for the scan cache.
        self.on_read = on_read

    def child(self, names: dict[str, Any]) -> Context:
        return Context(
            self.resolve, {**self.names, **names}, self.references_of, self.on_read, self.budget
        )

    def lookup(self, name: str) -> Any:
        if name in self.names:
            return self.names[name]
        return self.resolve(name)


class Unsupported(Exception):
    """An expression the evaluator does not model; the caller treats it as unknown."""


def evaluate(expr: Expr, ctx: Context) -> Any:
    """expr's value, UNKNOWN where it can't be known. An expression, or a
    chain of references, nested deeper than Python recurses raises
    RecursionError: the caller reports it (an unknown would pass in silence)."""
    try:
        value = _eval(expr, ctx)
    except (Unsupported, TypeError, ValueError, KeyError, IndexError, ZeroDivisionError):
        return UNKNOWN
    except (ArithmeticError, AttributeError):
        return UNKNOWN
    return _finish(value)


def _finish(value: Any) -> Any:
    if isinstance(value, Namespace):
        return UNKNOWN
    if isinstance(value, PartialMap):
        return PartialMap({k: _finish(v) for k, v in value.known.items()})
    if isinstance(value, PartialList):
        return PartialList([_finish(v) for v in value.known])
    if isinstance(value, list):
        return [_finish(v) for v in value]
    if isinstance(value, dict):
        return {k: _finish(v) for k, v in value.items()}
    return value


def _eval(expr: Expr, ctx: Context) -> Any:
    kind = expr[0]
    if kind == "lit":
        return expr[1]
    if kind == "tpl":
        return _template(expr[1], ctx)
    if kind == "name":
        return ctx.lookup(expr[1])
    if kind == "attr":
        return get_attr(_eval(expr[1], ctx), expr[2])
    if kind == "index":
        return get_index(_eval(expr[1], ctx), _eval(expr[2], ctx))
    if kind == "splat":
        return _splat(_eval(expr[1], ctx), expr[2], ctx)
    if kind == "tuple":
        return [_value(_eval(item, ctx)) for item in expr[1]]
    if kind == "object":
        result: dict[str, Any] = {}
        for key_expr, value_expr in expr[1]:
            key = _eval(key_expr, ctx)
            if key is UNKNOWN:
                return UNKNOWN
            result[to_string(key)] = _value(_eval(value_expr, ctx))
        return result
    if kind == "cond":
        test = _eval(expr[1], ctx)
        if test is UNKNOWN:
            return UNKNOWN
        return _eval(expr[2] if to_bool(test) else expr[3], ctx)
    if kind == "op":
        return _binary(expr[1], expr[2], expr[3], ctx)
    if kind == "not":
        value = _eval(expr[1], ctx)
        return UNKNOWN if value is UNKNOWN else not to_bool(value)
    if kind == "neg":
        value = _eval(expr[1], ctx)
        return UNKNOWN if value is UNKNOWN else -to_number(value)
    if kind == "call":
        return _call(expr[1], expr[2], expr[3], ctx)
    if kind == "for":
        return _for(expr, ctx)
    raise Unsupported(kind)


def _value(value: Any) -> Any:
    return UNKNOWN if isinstance(value, Namespace) else value


def get_attr(target: Any, name: str) -> Any:
    if target is UNKNOWN or isinstance(target, PartialList):
        return UNKNOWN
    if isinstance(target, PartialMap):
        return target.get(name)
    if isinstance(target, Namespace):
        return target.attr(name)
    if isinstance(target, dict):
        if name not in target:
            raise Unsupported(f"no attribute {name}")
        return target[name]
    if isinstance(target, list):
        # Terraform 0.11 style `resource.name.*.attr` reached through `.0`.
        raise Unsupported("attribute of a list")
    raise Unsupported("attribute of a primitive")


def get_index(target: Any, key: Any) -> Any:
    if target is UNKNOWN or key is UNKNOWN or isinstance(target, PartialList):
        # A partly known list's elements are at positions the scanner can't name.
        return UNKNOWN
    if isinstance(target, PartialMap):
        return target.get(to_string(key))
    if isinstance(target, Namespace):
        return target.index(key)
    if isinstance(target, list):
        position = int(to_number(key))
        if not 0 <= position < len(target):
            raise Unsupported("index out of range")
        return target[position]
    if isinstance(target, dict):
        name = to_string(key)
        if name not in target:
            raise Unsupported(f"no key {name}")
        return target[name]
    raise Unsupported("index of a primitive")


def _splat(target: Any, operations: list[list[Any]], ctx: Context) -> Any:
    if is_unknown(target):
        return UNKNOWN
    if target is None:
        return []
    items = target if isinstance(target, list) else [target]
    result = []
    for item in items:
        value = item
        for operation in operations:
            if operation[0] == "attr":
                value = get_attr(value, operation[1])
            else:
                value = get_index(value, _eval(operation[1], ctx))
        result.append(_value(value))
    return result


_DIRECTIVES = ("tif", "tfor")


def _template(parts: list[Any], ctx: Context) -> Any:
    if len(parts) == 1 and not isinstance(parts[0], str) and parts[0][0] not in _DIRECTIVES:
        return _eval(parts[0], ctx)
    pieces = []
    for part in parts:
        if isinstance(part, str):
            value: Any = part
        elif part[0] == "tif":
            value = _template_if(part, ctx)
        elif part[0] == "tfor":
            value = _template_for(part, ctx)
        else:
            value = _eval(part, ctx)
        if is_unknown(value) or isinstance(value, Namespace):
            return UNKNOWN
        text = to_string(value)
        ctx.budget.spend(len(text))
        pieces.append(text)
    return "".join(pieces)


def _template_if(part: list[Any], ctx: Context) -> Any:
    test = _value(_eval(part[1], ctx))
    if test is UNKNOWN:
        return UNKNOWN
    return _template_text(part[2] if to_bool(test) else part[3], ctx)


def _template_for(part: list[Any], ctx: Context) -> Any:
    _, key_var, value_var, collection_expr, body = part
    collection = _value(_eval(collection_expr, ctx))
    if is_unknown(collection):
        return UNKNOWN
    pieces = []
    for key, item in _iterate(collection):
        names = {value_var: item}
        if key_var is not None:
            names[key_var] = key
        text = _template_text(body, ctx.child(names))
        if text is UNKNOWN:
            return UNKNOWN
        ctx.budget.spend(len(text))
        pieces.append(text)
    return "".join(pieces)


def _template_text(parts: list[Any], ctx: Context) -> Any:
    """A directive's body as a string (never its single value: it is text)."""
    if not parts:
        return ""
    return _template([*parts, ""], ctx) if len(parts) == 1 else _template(parts, ctx)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}


def _binary(operator: str, left_expr: Expr, right_expr: Expr, ctx: Context) -> Any:
    left = _value(_eval(left_expr, ctx))
    if operator in ("&&", "||"):
        if left is not UNKNOWN:
            if operator == "&&" and not to_bool(left):
                return False
            if operator == "||" and to_bool(left):
                return True
        right = _value(_eval(right_expr, ctx))
        if right is UNKNOWN:
            return UNKNOWN
        if left is UNKNOWN:
            # false && x is false, true || x is true, whatever x is.
            if operator == "&&" and not to_bool(right):
                return False
            if operator == "||" and to_bool(right):
                return True
            return UNKNOWN
        return to_bool(right)
    right = _value(_eval(right_expr, ctx))
    if operator in ("==", "!="):
        if has_unknown(left) or has_unknown(right):
            return UNKNOWN
        equal = _normalise(left) == _normalise(right)
        return equal if operator == "==" else not equal
    if left is UNKNOWN or right is UNKNOWN:
        return UNKNOWN
    a, b = to_number(left), to_number(right)
    if operator in _COMPARE:
        return _COMPARE[operator](a, b)
    if operator == "+":
        return _number(a + b)
    if operator == "-":
        return _number(a - b)
    if operator == "*":
        return _number(a * b)
    if operator == "/":
        return _number(a / b)
    if operator == "%":
        return _number(math.fmod(a, b))
    raise Unsupported(operator)


def _normalise(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Terraform's numbers are 512-bit floats; a bigger integer is only a way to
# make each multiplication cost more (a local squared through a chain of locals).
MAX_INT_BITS = 1024


def _number(value: float) -> int | float:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise TooLarge(f"a number of more than {MAX_INT_BITS} bits")
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _call(name: str, arg_exprs: list[Expr], expand: bool, ctx: Context) -> Any:
    from iac_scanner.functions import FUNCTIONS, LAZY_FUNCTIONS

    name = name.removeprefix("provider::terraform::")
    if name in LAZY_FUNCTIONS:
        return LAZY_FUNCTIONS[name](arg_exprs, ctx)
    function = FUNCTIONS.get(name)
    if function is None:
        return UNKNOWN
    args = [_value(_eval(a, ctx)) for a in arg_exprs]
    if expand:
        if not args or is_unknown(args[-1]):
            return UNKNOWN
        last = args.pop()
        args.extend(last if isinstance(last, list) else list(last.values()))
    try:
        result = function(*args)
    except (Unsupported, RecursionError):
        raise
    except Exception as error:
        # A wrong argument type is an error in Terraform too: unknown here.
        raise Unsupported(f"{name}: {error}") from error
    if isinstance(result, str | list | dict):
        ctx.budget.spend(len(result))
    return result


def evaluate_lazily(expr: Expr, ctx: Context) -> Any:
    """For try()/can(): raises on an error instead of turning it into UNKNOWN."""
    return _value(_eval(expr, ctx))


def _for(expr: Expr, ctx: Context) -> Any:
    _, key_var, value_var, collection_expr, key_expr, value_expr, condition, grouping = expr
    collection = _value(_eval(collection_expr, ctx))
    if is_unknown(collection):
        # A for over a partly known collection would miss what it can't name.
        return UNKNOWN
    object_result: dict[str, Any] = {}
    list_result: list[Any] = []
    for key, item in _iterate(collection):
        ctx.budget.spend(1)
        names = {value_var: item}
        if key_var is not None:
            names[key_var] = key
        inner = ctx.child(names)
        if condition is not None:
            keep = _value(_eval(condition, inner))
            if keep is UNKNOWN:
                return UNKNOWN
            if not to_bool(keep):
                continue
        value = _value(_eval(value_expr, inner))
        if key_expr is None:
            list_result.append(value)
            continue
        result_key = _value(_eval(key_expr, inner))
        if result_key is UNKNOWN:
            return UNKNOWN
        result_key = to_string(result_key)
        if grouping:
            object_result.setdefault(result_key, []).append(value)
        else:
            object_result[result_key] = value
    return list_result if key_expr is None else object_result


def _iterate(collection: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(collection, dict):
        for key in sorted(collection):
            yield key, collection[key]
    elif isinstance(collection, list):
        yield from enumerate(collection)
    else:
        raise Unsupported("for over a primitive")


# Terraform's automatic type conversions.


def to_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value
    raise Unsupported(f"not a string: {type(value).__name__}")


def to_number(value: Any) -> int | float:
    if isinstance(value, bool):
        raise Unsupported("bool is not a number")
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            return float(text)
    raise Unsupported("not a number")


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value == "true":
        return True
    if value == "false":
        return False
    raise Unsupported("not a bool")


# Static analysis: which resources an expression refers to.

ROOT_NAMES = frozenset({"var", "local", "module", "data", "count", "each", "path", "self"})
ROOT_NAMES = ROOT_NAMES | {"terraform"}


def traversal(expr: Expr) -> tuple[str, list[Any]] | None:
    """`a.b[0].c` as ("a", [["attr","b"], ["index", expr], ["attr","c"]])."""
    operations: list[Any] = []
    while True:
        kind = expr[0]
        if kind == "name":
            operations.reverse()
            return expr[1], operations
        if kind == "attr":
            operations.append(["attr", expr[2]])
            expr = expr[1]
        elif kind == "index":
            operations.append(["index", expr[2]])
            expr = expr[1]
        elif kind == "splat":
            operations.append(["splat", None])
            expr = expr[1]
        else:
            return None


def references(expr: Expr, ctx: Context) -> set[str]:
    """Addresses of the resources (and data sources) `expr` refers to, through
    locals, variables and module outputs."""
    found: set[str] = set()
    _collect(expr, ctx, set(ctx.names), found)
    return found


def _collect(expr: Expr, ctx: Context, bound: set[str], found: set[str]) -> None:
    kind = expr[0]
    if kind in ("attr", "index", "splat", "name"):
        chain = traversal(expr)
        if chain is not None:
            root, operations = chain
            if root not in bound and ctx.references_of is not None:
                found |= ctx.references_of(root, operations)
            for operation in operations:
                if operation[0] == "index":
                    _collect(operation[1], ctx, bound, found)
            return
        if kind == "splat":
            _collect(expr[1], ctx, bound, found)
            for operation in expr[2]:
                if operation[0] == "index":
                    _collect(operation[1], ctx, bound, found)
            return
    children: list[Expr] = []
    if kind in ("attr", "not", "neg"):
        children = [expr[1]]
    elif kind == "index":
        children = [expr[1], expr[2]]
    elif kind == "tpl":
        children = [part for part in expr[1] if not isinstance(part, str)]
    elif kind == "tif":
        children = [expr[1], *[p for p in (*expr[2], *expr[3]) if not isinstance(p, str)]]
    elif kind == "tfor":
        _collect(expr[3], ctx, bound, found)
        inner_names = bound | {expr[2]} | ({expr[1]} if expr[1] else set())
        for part in expr[4]:
            if not isinstance(part, str):
                _collect(part, ctx, inner_names, found)
        return
    elif kind == "tuple":
        children = list(expr[1])
    elif kind == "object":
        children = [part for pair in expr[1] for part in pair]
    elif kind == "cond":
        children = [expr[1], expr[2], expr[3]]
    elif kind == "op":
        children = [expr[2], expr[3]]
    elif kind == "call":
        children = list(expr[2])
    elif kind == "for":
        _, key_var, value_var, collection, key_expr, value_expr, condition, _ = expr
        _collect(collection, ctx, bound, found)
        inner = bound | {value_var} | ({key_var} if key_var else set())
        for part in (key_expr, value_expr, condition):
            if part is not None:
                _collect(part, ctx, inner, found)
        return
    for child in children:
        _collect(child, ctx, bound, found)


def local_names(expr: Expr) -> set[str]:
    """The locals expr names (`local.NAME`)."""
    names: set[str] = set()
    pending = [expr]
    while pending:
        current = pending.pop()
        chain = traversal(current) if current[0] in ("attr", "index") else None
        if chain is not None and chain[0] == "local" and chain[1] and chain[1][0][0] == "attr":
            names.add(chain[1][0][1])
        pending.extend(sub_expressions(current))
    return names
