"""Turn `terraform show -json` output (a plan, or a state) into the document.

Resources come from `planned_values` (or a state's `values`), what is known
only after apply from `resource_changes[].change.after_unknown`, and `refs`
from the `configuration` section's `expressions.*.references`. Plans carry no
source positions, so a resource's line is where its address first appears in
the plan file.
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
    if not is_plan(document):
        raise PlanError(
            "not a Terraform plan or state (`terraform show -json` output): "
            "no planned_values, resource_changes or values"
        )
    lines = _address_lines(text)
    changes = _changes(document.get("resource_changes"))
    configs = _configuration_resources(document.get("configuration"))
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
                "refs": _refs(expressions, module),
            }
        )
    return resources


def _walk_module(module: Any, address: str) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(module, dict):
        return []
    found = [(address, r) for r in module.get("resources") or [] if isinstance(r, dict)]
    for child in module.get("child_modules") or []:
        if isinstance(child, dict):
            found.extend(_walk_module(child, str(child.get("address", ""))))
    return found


def _changes(changes: Any) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for change in changes or []:
        if isinstance(change, dict) and isinstance(change.get("change"), dict):
            found[str(change.get("address"))] = change["change"]
    return found


def _true_paths(value: Any, path: str) -> list[str]:
    """after_unknown marks unknown leaves with true, nested like the values."""
    if value is True:
        return [path] if path else []
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return []
    found: list[str] = []
    for key, inner in items:
        found.extend(_true_paths(inner, f"{path}.{key}" if path else str(key)))
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


def _configuration_resources(configuration: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(module path without keys, resource address without keys) -> expressions."""
    found: dict[tuple[str, str], dict[str, Any]] = {}

    def walk(module: Any, path: str) -> None:
        if not isinstance(module, dict):
            return
        for resource in module.get("resources") or []:
            if isinstance(resource, dict) and isinstance(resource.get("expressions"), dict):
                found[(path, str(resource.get("address", "")))] = resource["expressions"]
        for name, call in (module.get("module_calls") or {}).items():
            if isinstance(call, dict):
                walk(call.get("module"), f"{path}.module.{name}" if path else f"module.{name}")

    if isinstance(configuration, dict):
        walk(configuration.get("root_module"), "")
    return found


def _refs(expressions: dict[str, Any], module: str) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict) and "references" in value:
            addresses = sorted(
                {
                    f"{module}.{m.group(0)}" if module else m.group(0)
                    for ref in value.get("references") or []
                    if isinstance(ref, str) and not ref.startswith(_NOT_RESOURCES)
                    for m in [_RESOURCE_REF.match(ref)]
                    if m
                }
            )
            if addresses:
                refs[path] = addresses
        elif isinstance(value, dict) and "constant_value" not in value:
            for key, inner in value.items():
                walk(inner, f"{path}.{key}" if path else key)
        elif isinstance(value, list):
            for index, inner in enumerate(value):
                walk(inner, f"{path}.{index}")

    for key, value in expressions.items():
        walk(value, key)
    return refs


_NOT_RESOURCES = ("var.", "local.", "module.", "each.", "count.", "path.", "terraform.", "self.")
