"""Apply `optional(type, default)` from a variable's type constraint, as
Terraform does when it converts the given value to the declared type: an
absent (or null) optional attribute takes its default, or null when it has
none. Without this `var.cfg.acl` would be an error (unknown to the scanner)
where Terraform sees the default."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iac_scanner.expressions import UNKNOWN, PartialList, PartialMap
from iac_scanner.hcl import Expr


def with_defaults(type_expr: Expr, value: Any, literal: Callable[[Expr], Any]) -> Any:
    """value with the type's optional attribute defaults filled in."""
    if value is UNKNOWN or value is None or type_expr[0] != "call":
        return value
    name, args = type_expr[1], type_expr[2]
    if name == "optional" and args:
        return with_defaults(args[0], value, literal)
    if name == "object" and args and args[0][0] == "object" and isinstance(value, dict):
        return _object(args[0][1], value, literal)
    if name == "object" and args and args[0][0] == "object" and isinstance(value, PartialMap):
        # merge() with an unknown argument: a key it certainly has takes its
        # default when null, as in a known object; a key it doesn't show may
        # be among the unknown ones, so it stays unknown (not its default).
        return PartialMap(_object(args[0][1], value.known, literal, present_only=True))
    if name == "map" and args and isinstance(value, PartialMap):
        return PartialMap({k: with_defaults(args[0], v, literal) for k, v in value.known.items()})
    if name in ("list", "set") and args and isinstance(value, PartialList):
        return PartialList([with_defaults(args[0], item, literal) for item in value.known])
    if name == "tuple" and isinstance(value, PartialList):
        # Its elements' positions, so their types, are not known.
        return UNKNOWN
    if name in ("list", "set") and args and isinstance(value, list):
        return [with_defaults(args[0], item, literal) for item in value]
    if name == "map" and args and isinstance(value, dict):
        return {k: with_defaults(args[0], v, literal) for k, v in value.items()}
    if name == "tuple" and args and args[0][0] == "tuple" and isinstance(value, list):
        types = args[0][1]
        return [
            with_defaults(types[i], item, literal) if i < len(types) else item
            for i, item in enumerate(value)
        ]
    return value


def _object(
    attributes: list[list[Expr]],
    value: dict[str, Any],
    literal: Any,
    *,
    present_only: bool = False,
) -> dict[str, Any]:
    result = dict(value)
    for key_expr, attr_type in attributes:
        if key_expr[0] != "lit":
            continue
        key = str(key_expr[1])
        if present_only and key not in result:
            continue
        optional = attr_type[0] == "call" and attr_type[1] == "optional"
        if optional and result.get(key) is None:
            args = attr_type[2]
            default = literal(args[1]) if len(args) > 1 else None
            result[key] = with_defaults(args[0], default, literal) if args else default
        elif key in result:
            result[key] = with_defaults(attr_type, result[key], literal)
    return result
