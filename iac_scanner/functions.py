"""Terraform's built-in functions that configurations use to compute values a
rule may look at (tags, names, policies, CIDRs). Any other function yields
UNKNOWN, as does a function given an unknown argument it would need."""

from __future__ import annotations

import base64
import functools
import ipaddress
import itertools
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iac_scanner.expressions import (
    MAX_INT_BITS,
    UNKNOWN,
    Context,
    PartialList,
    PartialMap,
    TooLarge,
    Unsupported,
    evaluate_lazily,
    has_unknown,
    is_unknown,
    to_bool,
    to_number,
    to_string,
)
from iac_scanner.hcl import Expr

Function = Callable[..., Any]


def _strict(function: Function) -> Function:
    """The function needs every argument fully known."""

    @functools.wraps(function)
    def wrapper(*args: Any) -> Any:
        if any(has_unknown(a) for a in args):
            return UNKNOWN
        return function(*args)

    return wrapper


def _shallow(function: Function) -> Function:
    """The function needs its arguments known at the top level only: unknown
    elements inside lists and maps pass through (length, keys, element...).
    A partly known map or list is unknown to it: it would need the whole."""

    @functools.wraps(function)
    def wrapper(*args: Any) -> Any:
        if any(is_unknown(a) for a in args):
            return UNKNOWN
        return function(*args)

    return wrapper


def _items(collection: Any) -> list[Any]:
    if isinstance(collection, list):
        return collection
    if isinstance(collection, dict):
        return list(collection.values())
    raise Unsupported("not a collection")


def merge(*maps: Any) -> Any:
    """merge(): later maps win. With an unknown (or partly known) argument,
    what is certain whatever it holds: a key a known map sets after the last
    unknown has that value; a key set before it is in the result (merge never
    drops a key) with a value it may override, so UNKNOWN; and there may be
    keys the scanner can't name. Nothing certain at all: UNKNOWN."""
    result: dict[str, Any] = {}
    partial = False
    for m in maps:
        if m is None:
            continue
        if m is UNKNOWN or isinstance(m, PartialMap):
            partial = True
            known = m.known if isinstance(m, PartialMap) else {}
            result = {key: UNKNOWN for key in result}
            result.update(known)
            continue
        if not isinstance(m, dict):
            raise Unsupported("merge of a non-map")
        result.update(m)
    if not partial:
        return result
    return PartialMap(result) if result else UNKNOWN


def concat(*lists: Any) -> Any:
    """concat(): with an unknown (or partly known) list among them, the known
    lists' elements are certainly in the result, at positions that may not be
    known, among others the scanner can't name. Nothing certain: UNKNOWN."""
    if not any(item is UNKNOWN or isinstance(item, PartialList) for item in lists):
        return _concat(*lists)
    known = [item.known if isinstance(item, PartialList) else item for item in lists]
    result = _concat(*(item for item in known if item is not UNKNOWN))
    return PartialList(result) if result else UNKNOWN


def _concat(*lists: Any) -> list[Any]:
    """concat() of lists that are all known (for the functions built on it)."""
    result: list[Any] = []
    for item in lists:
        result.extend(_items(item))
    return result


def _length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    return len(_items(value))


def _lookup(mapping: Any, key: Any, *default: Any) -> Any:
    if mapping is UNKNOWN or key is UNKNOWN:
        return UNKNOWN
    if isinstance(mapping, PartialMap):
        # A key it certainly has; any other may be among the keys not known,
        # so neither its value nor the default is certain.
        return mapping.get(to_string(key))
    if not isinstance(mapping, dict):
        raise Unsupported("lookup in a non-map")
    key = to_string(key)
    if key in mapping:
        return mapping[key]
    if default:
        return default[0]
    raise Unsupported("lookup of a missing key")


def _element(collection: Any, index: Any) -> Any:
    items = _items(collection)
    if not items:
        raise Unsupported("element of an empty list")
    return items[int(to_number(index)) % len(items)]


def _coalesce(*values: Any) -> Any:
    for value in values:
        if value is UNKNOWN:
            return UNKNOWN
        if value is not None and value != "":
            return value
    raise Unsupported("coalesce of nothing")


def _coalescelist(*lists: Any) -> Any:
    for value in lists:
        if value is UNKNOWN:
            return UNKNOWN
        if _items(value):
            return value
    raise Unsupported("coalescelist of nothing")


def _format(spec: str, *args: Any) -> str:
    values = iter(args)

    def replace(match: re.Match[str]) -> str:
        verb = match.group(2)
        if verb == "%":
            return "%"
        value = next(values)
        if verb in ("s", "v"):
            return to_string(value) if not isinstance(value, list | dict) else json.dumps(value)
        if verb == "d":
            return str(int(to_number(value)))
        if verb == "q":
            return json.dumps(to_string(value))
        if verb == "t":
            return "true" if to_bool(value) else "false"
        if verb == "f":
            return ("%" + match.group(1) + "f") % to_number(value)
        raise Unsupported(f"format verb {verb}")

    return re.sub(r"%([-+# 0-9.]*)([a-zA-Z%])", replace, spec)


def _flatten(value: Any) -> list[Any]:
    result: list[Any] = []
    for item in _items(value):
        if is_unknown(item):
            # Partly known, it is a list whose elements can't all be named.
            raise Unsupported("flatten of an unknown element")
        if isinstance(item, list):
            result.extend(_flatten(item))
        else:
            result.append(item)
    return result


def _distinct(value: Any) -> list[Any]:
    result: list[Any] = []
    for item in _items(value):
        if item not in result:
            result.append(item)
    return result


def _toset(value: Any) -> list[Any]:
    items = _distinct(value)
    if all(isinstance(i, str) for i in items):
        return sorted(items)
    return items


def _tomap(value: Any) -> Any:
    if not isinstance(value, dict):
        raise Unsupported("tomap of a non-map")
    return value


def _tostring(value: Any) -> Any:
    return None if value is None else to_string(value)


def _tonumber(value: Any) -> Any:
    return None if value is None else to_number(value)


def _tobool(value: Any) -> Any:
    return None if value is None else to_bool(value)


def _keys(value: Any) -> list[str]:
    if not isinstance(value, dict):
        raise Unsupported("keys of a non-map")
    return sorted(value)


def _values(value: Any) -> list[Any]:
    if not isinstance(value, dict):
        raise Unsupported("values of a non-map")
    return [value[k] for k in sorted(value)]


def _zipmap(keys: Any, values: Any) -> dict[str, Any]:
    return {to_string(k): v for k, v in zip(_items(keys), _items(values), strict=True)}


def _cidrsubnet(prefix: str, newbits: Any, netnum: Any) -> str:
    # Computed, not found by walking the subnets: an IPv6 prefix has billions
    # of them, and a netnum that large hung the scan.
    network = ipaddress.ip_network(prefix, strict=False)
    new_prefix = network.prefixlen + int(to_number(newbits))
    index = int(to_number(netnum))
    if not network.prefixlen <= new_prefix <= network.max_prefixlen:
        raise Unsupported("cidrsubnet prefix out of range")
    if not 0 <= index < 2 ** (new_prefix - network.prefixlen):
        raise Unsupported("cidrsubnet number out of range")
    start = network.network_address + (index << (network.max_prefixlen - new_prefix))
    return str(ipaddress.ip_network(f"{start}/{new_prefix}"))


def _cidrhost(prefix: str, hostnum: Any) -> str:
    network = ipaddress.ip_network(prefix, strict=False)
    number = int(to_number(hostnum))
    base = network.broadcast_address + 1 if number < 0 else network.network_address
    return str(base + number)


# The most elements one function call builds (setproduct), before building them.
_MAX_ELEMENTS = 1_000_000


def _pow(base: Any, exponent: Any) -> Any:
    a, b = to_number(base), to_number(exponent)
    big = isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and b > 0
    if big and b * math.log2(abs(a)) > MAX_INT_BITS:
        raise TooLarge(f"pow() of more than {MAX_INT_BITS} bits")
    return a**b


def _substr(text: str, offset: Any, length: Any) -> str:
    start = int(to_number(offset))
    size = int(to_number(length))
    if start < 0:
        start += len(text)
    return text[start:] if size == -1 else text[start : start + size]


def _range(*args: Any) -> list[Any]:
    numbers: list[int | float] = [to_number(a) for a in args]
    start: int | float
    stop: int | float
    step: int | float
    if len(numbers) == 1:
        start, stop, step = 0, numbers[0], 1
    elif len(numbers) == 2:
        start, stop, step = numbers[0], numbers[1], 1 if numbers[1] >= numbers[0] else -1
    else:
        start, stop, step = numbers
    if step == 0 or abs((stop - start) / step) > 1024:
        raise Unsupported("range too large")
    result = []
    value = start
    while (step > 0 and value < stop) or (step < 0 and value > stop):
        result.append(value)
        value += step
    return result


def _regex(pattern: str, text: str) -> Any:
    match = re.search(_go_regex(pattern), text)
    if match is None:
        raise Unsupported("regex did not match")
    if match.groupdict():
        return match.groupdict()
    if match.groups():
        return list(match.groups())
    return match.group(0)


def _go_regex(pattern: str) -> str:
    return re.sub(r"\(\?P?<", "(?P<", pattern)


def _replace(text: str, search: str, replacement: str) -> str:
    if len(search) > 1 and search.startswith("/") and search.endswith("/"):
        return re.sub(_go_regex(search[1:-1]), re.sub(r"\$(\d)", r"\\\1", replacement), text)
    return text.replace(search, replacement)


def _one(value: Any) -> Any:
    items = _items(value)
    if len(items) > 1:
        raise Unsupported("one() of several")
    return items[0] if items else None


def _jsonencode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _jsondecode(text: str) -> Any:
    return json.loads(text)


def _yamldecode(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _sort(value: Any) -> list[str]:
    return sorted(to_string(v) for v in _items(value))


def _contains(collection: Any, value: Any) -> Any:
    if has_unknown(value):
        return UNKNOWN
    if isinstance(collection, PartialList):
        # Certainly true when a known element is value; otherwise it may be
        # among the elements not known.
        known = [v for v in collection.known if not has_unknown(v)]
        return True if value in known else UNKNOWN
    if has_unknown(collection):
        return UNKNOWN
    return value in _items(collection)


def _setop(operation: str) -> Function:
    def apply(*sets: Any) -> list[Any]:
        first = _items(sets[0])
        others = [_items(s) for s in sets[1:]]
        if operation == "union":
            return _toset(_concat(*sets))
        if operation == "intersection":
            return _toset([v for v in first if all(v in o for o in others)])
        return _toset([v for v in first if not any(v in o for o in others)])

    return apply


def _setproduct(*sets: Any) -> list[Any]:
    # Every combination of one element from each argument, in order: how a
    # configuration pairs each rule with each CIDR for a for_each.
    if len(sets) < 2:
        raise Unsupported("setproduct needs two or more sets")
    if math.prod(len(_items(s)) for s in sets) > _MAX_ELEMENTS:
        raise TooLarge(f"setproduct of more than {_MAX_ELEMENTS:,} combinations")
    return [list(combination) for combination in itertools.product(*(_items(s) for s in sets))]


def _slice(value: Any, start: Any, end: Any) -> list[Any]:
    return _items(value)[int(to_number(start)) : int(to_number(end))]


def _chunklist(value: Any, size: Any) -> list[Any]:
    items = _items(value)
    step = int(to_number(size))
    if step <= 0:
        return [items]
    return [items[i : i + step] for i in range(0, len(items), step)]


def _transpose(value: Any) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for key in sorted(value):
        for item in value[key]:
            result.setdefault(item, []).append(key)
    return result


FUNCTIONS: dict[str, Function] = {
    "merge": merge,
    "concat": concat,
    "length": _shallow(_length),
    "lookup": _lookup,
    "element": _shallow(_element),
    "coalesce": _coalesce,
    "coalescelist": _coalescelist,
    "format": _strict(_format),
    "formatlist": _strict(
        lambda spec, *lists: [
            _format(spec, *row)
            for row in zip(
                *[_items(x) if isinstance(x, list) else None for x in lists], strict=True
            )
        ]
    ),
    "join": _strict(lambda sep, *lists: sep.join(to_string(v) for v in _concat(*lists))),
    "split": _strict(lambda sep, text: text.split(sep) if text else []),
    "lower": _strict(lambda s: s.lower()),
    "upper": _strict(lambda s: s.upper()),
    "title": _strict(lambda s: s.title()),
    "trimspace": _strict(lambda s: s.strip()),
    "trim": _strict(lambda s, chars: s.strip(chars)),
    "trimprefix": _strict(lambda s, p: s.removeprefix(p)),
    "trimsuffix": _strict(lambda s, p: s.removesuffix(p)),
    "chomp": _strict(lambda s: s.rstrip("\r\n")),
    "replace": _strict(_replace),
    "substr": _strict(_substr),
    "startswith": _strict(lambda s, p: s.startswith(p)),
    "endswith": _strict(lambda s, p: s.endswith(p)),
    "strcontains": _strict(lambda s, p: p in s),
    "regex": _strict(_regex),
    "regexall": _strict(lambda p, s: [m.group(0) for m in re.finditer(_go_regex(p), s)]),
    "tostring": _shallow(_tostring),
    "tonumber": _shallow(_tonumber),
    "tobool": _shallow(_tobool),
    "tolist": _shallow(lambda v: _items(v)),
    "toset": _strict(_toset),
    "tomap": _shallow(_tomap),
    "keys": _shallow(_keys),
    "values": _shallow(_values),
    "zipmap": _shallow(_zipmap),
    "contains": _contains,
    "index": _strict(lambda items, v: _items(items).index(v)),
    "flatten": _shallow(_flatten),
    "distinct": _strict(_distinct),
    "compact": _strict(lambda items: [v for v in _items(items) if v not in (None, "")]),
    "reverse": _shallow(lambda items: list(reversed(_items(items)))),
    "sort": _strict(_sort),
    "slice": _shallow(_slice),
    "chunklist": _shallow(_chunklist),
    "one": _shallow(_one),
    "setproduct": _strict(_setproduct),
    "setunion": _strict(_setop("union")),
    "setintersection": _strict(_setop("intersection")),
    "setsubtract": _strict(_setop("subtract")),
    "transpose": _strict(_transpose),
    "range": _strict(_range),
    "min": _strict(lambda *n: min(to_number(x) for x in n)),
    "max": _strict(lambda *n: max(to_number(x) for x in n)),
    "sum": _strict(lambda items: sum(to_number(x) for x in _items(items))),
    "abs": _strict(lambda n: abs(to_number(n))),
    "ceil": _strict(lambda n: math.ceil(to_number(n))),
    "floor": _strict(lambda n: math.floor(to_number(n))),
    "pow": _strict(_pow),
    "signum": _strict(lambda n: (to_number(n) > 0) - (to_number(n) < 0)),
    "parseint": _strict(lambda s, base: int(to_string(s), int(to_number(base)))),
    "jsonencode": _strict(_jsonencode),
    "jsondecode": _strict(_jsondecode),
    "yamldecode": _strict(_yamldecode),
    "base64encode": _strict(lambda s: base64.b64encode(s.encode()).decode()),
    "base64decode": _strict(lambda s: base64.b64decode(s).decode()),
    "cidrsubnet": _strict(_cidrsubnet),
    "cidrhost": _strict(_cidrhost),
    "cidrnetmask": _strict(lambda p: str(ipaddress.ip_network(p, strict=False).netmask)),
}


def _try(args: list[Expr], ctx: Context) -> Any:
    for arg in args:
        try:
            value = evaluate_lazily(arg, ctx)
        except (Unsupported, TypeError, ValueError, KeyError, IndexError, ArithmeticError):
            continue
        # An unknown might have failed at apply: don't pick a later fallback.
        return value
    return UNKNOWN


def _can(args: list[Expr], ctx: Context) -> Any:
    try:
        value = evaluate_lazily(args[0], ctx)
    except (Unsupported, TypeError, ValueError, KeyError, IndexError, ArithmeticError):
        return False
    return UNKNOWN if has_unknown(value) else True


_MAX_FILE_BYTES = 1_000_000


def _read_in_tree(path: Any, ctx: Context) -> str | None:
    """A file's text, read relative to the module directory as Terraform does,
    only when it lies inside the scanned tree (the root module's or this
    module's directory): a configuration can't make the scanner read, or
    report parts of, files elsewhere on the machine. None when it can't."""
    if not isinstance(path, str):
        return None
    base = ctx.lookup("path")
    module_dir = base.attr("module") if hasattr(base, "attr") else None
    root_dir = base.attr("root") if hasattr(base, "attr") else None
    if not isinstance(module_dir, str) or not isinstance(root_dir, str):
        return None
    target = Path(path)
    if not target.is_absolute():
        target = Path(module_dir) / target
    try:
        resolved = target.resolve(strict=True)
        allowed = [Path(module_dir).resolve(), Path(root_dir).resolve()]
        if not any(resolved.is_relative_to(d) for d in allowed):
            return None
        if resolved.stat().st_size > _MAX_FILE_BYTES:
            return None
        content = resolved.read_bytes()
    except (OSError, RuntimeError):
        return None
    if ctx.on_read is not None:
        ctx.on_read(resolved, content)
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def _file(args: list[Expr], ctx: Context) -> Any:
    """file(path): the file's text, as Terraform reads it at plan."""
    path = evaluate_lazily(args[0], ctx) if args else UNKNOWN
    text = _read_in_tree(path, ctx)
    return UNKNOWN if text is None else text


def _no_module_names(name: str) -> Any:
    raise Unsupported(f"templatefile templates see only their vars, not {name}")


def _templatefile(args: list[Expr], ctx: Context) -> Any:
    """templatefile(path, vars): the template rendered with only vars in scope
    (as in Terraform, it can't see the module's variables or locals);
    %{if}/%{for} directives included. Unknown when any of it is."""
    if len(args) != 2:
        return UNKNOWN
    path = evaluate_lazily(args[0], ctx)
    variables = evaluate_lazily(args[1], ctx)
    text = _read_in_tree(path, ctx)
    if text is None or not isinstance(variables, dict):
        return UNKNOWN
    from iac_scanner.expressions import evaluate
    from iac_scanner.hcl import template_from_text

    template = template_from_text(text)
    if template[0] == "opaque":
        return UNKNOWN
    names = {"path": ctx.lookup("path"), **variables}
    scope = Context(_no_module_names, names, None, ctx.on_read, ctx.budget)
    return evaluate(template, scope)


LAZY_FUNCTIONS: dict[str, Callable[[list[Expr], Context], Any]] = {
    "try": _try,
    "can": _can,
    "file": _file,
    "templatefile": _templatefile,
}
