"""Turn `terraform show -json` output (a plan, or a state) into the document.

Resources come from `planned_values` (or a state's `values`), what is known
only after apply from `resource_changes[].change.after_unknown`, and `refs`
from the `configuration` section's `expressions.*.references`, followed
through module outputs and module variables to the resources they end at, as
the HCL path follows them. Plans carry no source positions, so a resource's
line is where its address first appears in the plan file.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

from iac_scanner.modules import strip_unknown

_ADDRESS_LINE = re.compile(r'"address"\s*:\s*"((?:[^"\\]|\\.)*)"')
_RESOURCE_REF = re.compile(
    r"^((?:data\.)?[A-Za-z][A-Za-z0-9_-]*\.[A-Za-z_][A-Za-z0-9_-]*)(\[[^\]]*\])?"
)
_KEYS = re.compile(r"\[[^\]]*\]")
# `module.NAME`, a literal instance key if any, and the output read from it;
# Terraform writes no key it can't evaluate (`module.x[count.index].id` is
# recorded as `module.x` beside `count.index`), and then no output either.
_MODULE_OUTPUT = re.compile(
    r'^module\.([A-Za-z_][A-Za-z0-9_-]*)(\[(?:"(?:[^"\\]|\\.)*"|[0-9]+)\])?'
    r"\.([A-Za-z_][A-Za-z0-9_-]*)"
)
_VARIABLE = re.compile(r"^var\.([A-Za-z_][A-Za-z0-9_-]*)")
# One step of a module instance address: `module.NAME` with its key, if any.
_MODULE_STEP = re.compile(r'module\.[A-Za-z_][A-Za-z0-9_-]*(?:\[(?:"(?:[^"\\]|\\.)*"|[^\]]*)\])?')
# JSON brackets outside strings (strings are matched whole, so theirs are skipped).
_JSON_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class PlanError(Exception):
    """Not a readable Terraform plan or state JSON, located at line:column."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


def decode(raw: bytes) -> str:
    """Plan files written on Windows are often UTF-16 or carry a BOM."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    if raw.startswith(codecs.BOM_UTF8):
        return raw[len(codecs.BOM_UTF8) :].decode("utf-8")
    return raw.decode("utf-8")


def is_plan(document: Any) -> bool:
    return isinstance(document, dict) and any(
        key in document for key in ("planned_values", "resource_changes", "values")
    )


def load_plan(text: str, display: str) -> list[dict[str, Any]]:
    """The document's resources for a plan or state file's text. Raises PlanError."""
    try:
        document = json.loads(text)
    except ValueError as error:
        line = getattr(error, "lineno", 1)
        column = getattr(error, "colno", 1)
        reason = getattr(error, "msg", str(error))
        raise PlanError(f"not valid JSON: {reason}", line, column) from None
    except RecursionError:
        # Python's JSON reader recurses once per level and stops near 1,000.
        depth, line, column = _deepest(text)
        raise PlanError(
            f"JSON nested {depth} levels deep, deeper than the scanner reads "
            "(the policy engine evaluates values nested up to 100 levels)",
            line,
            column,
        ) from None
    if not is_plan(document):
        raise PlanError(
            "not a Terraform plan or state (`terraform show -json` output): "
            "no planned_values, resource_changes or values"
        )
    lines = _address_lines(text)
    changes = _changes(document.get("resource_changes"))
    configs, calls = _configuration(document.get("configuration"))
    follow = _References(calls)
    root = document.get("planned_values") or document.get("values") or {}
    resources: list[dict[str, Any]] = []
    for module_address, resource in _walk_module(root.get("root_module"), ""):
        if resource.get("mode", "managed") != "managed":
            continue
        address = str(resource.get("address", ""))
        if not address:
            continue
        values = resource.get("values")
        config = values if isinstance(values, dict) else {}
        unknown: list[str] = []
        config = strip_unknown(config, "", unknown)
        change = changes.get(address, {})
        unknown.extend(_true_paths(change.get("after_unknown"), ""))
        module = str(resource.get("module_address") or module_address or "")
        expressions = configs.get((_KEYS.sub("", module), _local_address(address, module)), {})
        resources.append(
            {
                "address": address,
                "type": str(resource.get("type", "")),
                "name": str(resource.get("name", "")),
                "module": module,
                "provider": str(resource.get("provider_name", "")),
                "file": display,
                "line": lines.get(address, 1),
                "config": config,
                "unknown": sorted(set(unknown)),
                "refs": _refs(expressions, module, follow),
            }
        )
    return resources


def _deepest(text: str) -> tuple[int, int, int]:
    """How deep JSON text nests, and the line and column where it first does."""
    depth = deepest = 0
    at = 0
    for token in _JSON_NESTING.finditer(text):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
            if depth > deepest:
                deepest, at = depth, token.start()
        elif bracket in "]}":
            depth -= 1
    line = text.count("\n", 0, at) + 1
    return deepest, line, at - (text.rfind("\n", 0, at) + 1) + 1


# The walks below keep a stack of their own rather than recursing: a plan is
# whatever JSON it is given, nested as deep as json.loads reads.


def _walk_module(module: Any, address: str) -> list[tuple[str, dict[str, Any]]]:
    """(module address, resource) for every resource, parents before children."""
    found: list[tuple[str, dict[str, Any]]] = []
    pending: list[tuple[Any, str]] = [(module, address)]
    while pending:
        current, where = pending.pop()
        if not isinstance(current, dict):
            continue
        found.extend((where, r) for r in current.get("resources") or [] if isinstance(r, dict))
        children = [c for c in current.get("child_modules") or [] if isinstance(c, dict)]
        pending.extend((c, str(c.get("address", ""))) for c in reversed(children))
    return found


def _changes(changes: Any) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for change in changes or []:
        if isinstance(change, dict) and isinstance(change.get("change"), dict):
            found[str(change.get("address"))] = change["change"]
    return found


def _true_paths(value: Any, path: str) -> list[str]:
    """after_unknown marks unknown leaves with true, nested like the values."""
    found: list[str] = []
    pending: list[tuple[Any, str]] = [(value, path)]
    while pending:
        current, where = pending.pop()
        if current is True:
            if where:
                found.append(where)
            continue
        if isinstance(current, dict):
            items: Any = current.items()
        elif isinstance(current, list):
            items = enumerate(current)
        else:
            continue
        pending.extend((inner, f"{where}.{key}" if where else str(key)) for key, inner in items)
    return found


def _address_lines(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    if "\n" not in text.strip():
        return lines
    for number, line in enumerate(text.splitlines(), start=1):
        for match in _ADDRESS_LINE.finditer(line):
            try:
                address = json.loads(f'"{match.group(1)}"')
            except ValueError:
                continue
            lines.setdefault(address, number)
    return lines


def _local_address(address: str, module: str) -> str:
    local = address.removeprefix(f"{module}.") if module else address
    return _KEYS.sub("", local)


def _configuration(
    configuration: Any,
) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, dict[str, Any]]]:
    """(module path without keys, resource address without keys) -> expressions,
    and module path without keys -> its module call (inputs, outputs)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    calls: dict[str, dict[str, Any]] = {}
    if not isinstance(configuration, dict):
        return found, calls
    pending: list[tuple[Any, str]] = [(configuration.get("root_module"), "")]
    while pending:
        module, path = pending.pop()
        if not isinstance(module, dict):
            continue
        for resource in module.get("resources") or []:
            if isinstance(resource, dict) and isinstance(resource.get("expressions"), dict):
                found[(path, str(resource.get("address", "")))] = resource["expressions"]
        called = module.get("module_calls") or {}
        for name, call in reversed(list(called.items()) if isinstance(called, dict) else []):
            if isinstance(call, dict):
                inner = f"{path}.module.{name}" if path else f"module.{name}"
                calls[inner] = call
                pending.append((call.get("module"), inner))
    return found, calls


class _References:
    """Where a plan's references end, as the HCL path resolves them: a module
    output is followed into the module it is read from, a variable out to the
    argument its module call gives it, until they name resources (or nothing:
    a literal, a local, a variable of the root module). The configuration
    section writes each module's references relative to that module; the
    addresses returned are absolute, with the instance keys the reference gave."""

    def __init__(self, calls: dict[str, dict[str, Any]]) -> None:
        self.calls = calls
        self._resolved: dict[tuple[str, str], set[str]] = {}

    def resolve(self, module: str, reference: str) -> set[str]:
        """The resource addresses `reference`, written in module instance `module`, ends at."""
        key = (module, reference)
        if key not in self._resolved:
            self._resolved[key] = self._follow(module, reference)
        return self._resolved[key]

    def _follow(self, module: str, reference: str) -> set[str]:
        found: set[str] = set()
        # Each (module, reference) is followed once: a plan is whatever JSON it
        # is given, and outputs and variables may refer to each other in a ring.
        seen: set[tuple[str, str]] = set()
        pending = [(module, reference)]
        while pending:
            step = pending.pop()
            if step in seen:
                continue
            seen.add(step)
            where, ref = step
            if ref.startswith("module."):
                pending.extend(self._through_output(where, ref))
            elif ref.startswith("var."):
                pending.extend(self._through_variable(where, ref))
            elif not ref.startswith(_NOT_RESOURCES):
                match = _RESOURCE_REF.match(ref)
                if match:
                    found.add(f"{where}.{match.group(0)}" if where else match.group(0))
        return found

    def _through_output(self, module: str, reference: str) -> list[tuple[str, str]]:
        match = _MODULE_OUTPUT.match(reference)
        if match is None:
            return []  # the module as a whole (`module.x`): no output to follow
        name, key, output = match.groups()
        child = f"{module}.module.{name}{key or ''}" if module else f"module.{name}{key or ''}"
        call = self.calls.get(_KEYS.sub("", child), {})
        outputs = _dict(_dict(call.get("module")).get("outputs"))
        expression = _dict(outputs.get(output)).get("expression")
        return [(child, ref) for ref in _references_in(expression)]

    def _through_variable(self, module: str, reference: str) -> list[tuple[str, str]]:
        match = _VARIABLE.match(reference)
        if match is None or not module:
            return []  # a root module's variables are values, not references
        steps = _MODULE_STEP.findall(module)
        parent = ".".join(steps[:-1])
        call = self.calls.get(_KEYS.sub("", module), {})
        argument = _dict(call.get("expressions")).get(match.group(1))
        return [(parent, ref) for ref in _references_in(argument)]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _references_in(expression: Any) -> list[str]:
    """Every reference an expression (or the expressions nested in it) makes."""
    found: list[str] = []
    pending: list[Any] = [expression]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            found.extend(r for r in value.get("references") or [] if isinstance(r, str))
            pending.extend(v for k, v in value.items() if k not in ("references", "constant_value"))
        elif isinstance(value, list):
            pending.extend(value)
    return found


def _refs(expressions: dict[str, Any], module: str, follow: _References) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    # Depth first, in document order: the stack holds what is still to visit
    # with the next item on top.
    pending: list[tuple[Any, str]] = [(v, k) for k, v in reversed(list(expressions.items()))]
    while pending:
        value, path = pending.pop()
        if isinstance(value, dict) and "references" in value:
            addresses = sorted(
                {
                    address
                    for ref in value.get("references") or []
                    if isinstance(ref, str)
                    for address in follow.resolve(module, ref)
                }
            )
            if addresses:
                refs[path] = addresses
        elif isinstance(value, dict) and "constant_value" not in value:
            inner = [(v, f"{path}.{k}" if path else k) for k, v in value.items()]
            pending.extend(reversed(inner))
        elif isinstance(value, list):
            pending.extend(reversed([(v, f"{path}.{i}") for i, v in enumerate(value)]))
    return refs


_NOT_RESOURCES = ("var.", "local.", "module.", "each.", "count.", "path.", "terraform.", "self.")
