"""`data "aws_iam_policy_document"` computed from its own configuration, as
the AWS provider does at plan time, so `policy = data.aws_iam_policy_document.x.json`
is judged like an inline policy. Anything the scanner can't see exactly
(an unknown value, source/override documents it would have to merge) makes
the whole document unknown: never a guess."""

from __future__ import annotations

import json
from typing import Any

from iac_scanner.expressions import UNKNOWN, has_unknown

_MERGED = ("source_policy_documents", "override_policy_documents", "source_json", "override_json")


def render(config: Any) -> Any:
    """The document's `json` attribute, or UNKNOWN."""
    if not isinstance(config, dict) or has_unknown(config):
        return UNKNOWN
    if any(config.get(name) for name in _MERGED):
        return UNKNOWN
    document: dict[str, Any] = {"Version": config.get("version") or "2012-10-17"}
    if config.get("policy_id"):
        document["Id"] = config["policy_id"]
    statements = []
    for block in config.get("statement") or []:
        if not isinstance(block, dict):
            return UNKNOWN
        statements.append(_statement(block))
    document["Statement"] = statements
    return json.dumps(document, indent=2)


def _statement(block: dict[str, Any]) -> dict[str, Any]:
    statement: dict[str, Any] = {}
    if block.get("sid"):
        statement["Sid"] = block["sid"]
    statement["Effect"] = block.get("effect") or "Allow"
    for name, key in (
        ("actions", "Action"),
        ("not_actions", "NotAction"),
        ("resources", "Resource"),
        ("not_resources", "NotResource"),
    ):
        values = block.get(name)
        if values:
            statement[key] = _one_or_list(values)
    for name, key in (("principals", "Principal"), ("not_principals", "NotPrincipal")):
        principals = block.get(name) or []
        if principals:
            statement[key] = {
                p.get("type"): _one_or_list(p.get("identifiers") or [])
                for p in principals
                if isinstance(p, dict)
            }
    conditions: dict[str, dict[str, Any]] = {}
    for condition in block.get("condition") or []:
        if isinstance(condition, dict):
            test = conditions.setdefault(str(condition.get("test")), {})
            test[str(condition.get("variable"))] = _one_or_list(condition.get("values") or [])
    if conditions:
        statement["Condition"] = conditions
    return statement


def _one_or_list(values: Any) -> Any:
    """The provider writes a one-element list as the element itself."""
    if isinstance(values, list):
        items = (
            sorted({str(v) for v in values}) if all(isinstance(v, str) for v in values) else values
        )
        return items[0] if len(items) == 1 else items
    return values
