"""Read Terraform's JSON configuration syntax (`*.tf.json`) into the same
parsed shape as HCL (`iac_scanner.hcl.ParsedFile`), with line numbers.

As Terraform documents it: the top-level object's keys are block types;
`resource`/`data` nest type then name, `module`/`variable`/`output`/`provider`
nest one label; a block body may be an object or an array of objects; a
`"//"` key is a comment; strings are templates (`"${var.x}"`), except where
Terraform reads them as expressions (a variable's `type`, `depends_on`,
`provider`). Without the provider schema the scanner can't tell a nested
block from an object attribute, so inside resources every key is read as an
attribute: a nested block arrives as an object or a list of objects, the
shapes the rules already read blocks in.

Python's json module keeps no positions, so this is a small JSON reader that
does; it accepts exactly RFC 8259 JSON.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass
from typing import Any

from iac_scanner.hcl import (
    Block,
    Expr,
    HclSyntaxError,
    ParsedFile,
    check_nesting,
    parse_expression,
    template_from_text,
)

# Deeper than this is refused as an error rather than a RecursionError.
MAX_DEPTH = 200

# Labels per block type; block types not listed take none.
_LABELS = {"resource": 2, "data": 2, "module": 1, "variable": 1, "output": 1, "provider": 1}
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_WHITESPACE = " \t\n\r"
# The json module's own string reader (escapes, \u surrogates, errors with positions).
_scanstring: Any = json.decoder.scanstring  # type: ignore[attr-defined]


@dataclass
class JObject:
    """A JSON object with its members in order and where it starts and ends."""

    members: list[tuple[str, Any]]
    line: int
    end_line: int


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0
        self.newlines = [m.start() for m in re.finditer("\n", text)]

    def line(self, position: int | None = None) -> int:
        at = self.position if position is None else position
        return bisect.bisect_left(self.newlines, at) + 1

    def fail(self, message: str) -> HclSyntaxError:
        line = self.line()
        start = self.newlines[line - 2] + 1 if line > 1 else 0
        return HclSyntaxError(message, line, self.position - start + 1)

    def skip(self) -> None:
        while self.position < len(self.text) and self.text[self.position] in _WHITESPACE:
            self.position += 1

    def value(self, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise self.fail(f"JSON nested more than {MAX_DEPTH} deep")
        self.skip()
        if self.position >= len(self.text):
            raise self.fail("unexpected end of file")
        char = self.text[self.position]
        if char == "{":
            return self._object(depth)
        if char == "[":
            return self._array(depth)
        if char == '"':
            return self._string()
        for word, value in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, self.position):
                self.position += len(word)
                return value
        match = _NUMBER.match(self.text, self.position)
        if match:
            self.position = match.end()
            number = json.loads(match.group(0))
            return number
        raise self.fail(f"unexpected character {char!r}")

    def _string(self) -> str:
        try:
            value, end = _scanstring(self.text, self.position + 1)
        except json.JSONDecodeError as error:
            self.position = error.pos
            raise self.fail(f"bad string: {error.msg}") from None
        self.position = end
        return str(value)

    def _object(self, depth: int) -> JObject:
        start = self.position
        self.position += 1
        members: list[tuple[str, Any]] = []
        self.skip()
        if self.text.startswith("}", self.position):
            self.position += 1
            return JObject(members, self.line(start), self.line(self.position - 1))
        while True:
            self.skip()
            if not self.text.startswith('"', self.position):
                raise self.fail("expected a quoted object key")
            key = self._string()
            self.skip()
            if not self.text.startswith(":", self.position):
                raise self.fail("expected ':' after an object key")
            self.position += 1
            members.append((key, self.value(depth + 1)))
            self.skip()
            if self.text.startswith(",", self.position):
                self.position += 1
                continue
            if self.text.startswith("}", self.position):
                self.position += 1
                return JObject(members, self.line(start), self.line(self.position - 1))
            raise self.fail("expected ',' or '}' in an object")

    def _array(self, depth: int) -> list[Any]:
        self.position += 1
        items: list[Any] = []
        self.skip()
        if self.text.startswith("]", self.position):
            self.position += 1
            return items
        while True:
            items.append(self.value(depth + 1))
            self.skip()
            if self.text.startswith(",", self.position):
                self.position += 1
                continue
            if self.text.startswith("]", self.position):
                self.position += 1
                return items
            raise self.fail("expected ',' or ']' in an array")


def parse_json_config(text: str) -> ParsedFile:
    """Parse one `.tf.json` file. Raises HclSyntaxError (with line:column)."""
    reader = _Reader(text)
    root = reader.value()
    reader.skip()
    if reader.position != len(text):
        raise reader.fail("extra text after the JSON value")
    if not isinstance(root, JObject):
        raise HclSyntaxError("a .tf.json file must hold one JSON object", 1, 1)
    blocks: list[Block] = []
    for kind, body in root.members:
        if kind == "//":
            continue
        blocks.extend(_blocks(kind, body, _LABELS.get(kind, 0), [], root))
    # Strings are templates: `"${1 + 1 + ...}"` nests however long it is.
    check_nesting({}, blocks)
    return {"attrs": {}, "blocks": blocks, "comments": []}


def _blocks(kind: str, value: Any, labels_left: int, labels: list[str], at: JObject) -> list[Block]:
    """The blocks `"kind": value` declares, peeling one label per object level."""
    if isinstance(value, list):
        return [b for item in value for b in _blocks(kind, item, labels_left, labels, at)]
    if not isinstance(value, JObject):
        raise HclSyntaxError(f"{kind} {' '.join(labels)}: expected a JSON object", at.line)
    if labels_left:
        found: list[Block] = []
        for label, inner in value.members:
            if label == "//":
                continue
            found.extend(_blocks(kind, inner, labels_left - 1, [*labels, label], value))
        return found
    return [_body(kind, labels, value)]


def _body(kind: str, labels: list[str], body: JObject) -> Block:
    attrs: dict[str, Expr] = {}
    blocks: list[Block] = []
    for name, value in body.members:
        if name == "//" or (name == "dynamic" and kind in ("resource", "data")):
            continue
        if name in _NESTED.get(kind, ()):
            blocks.extend(_blocks(name, value, 0, [], body))
        else:
            attrs[name] = _attribute(kind, name, value)
    blocks.extend(_labelled_nested(kind, body))
    return {
        "type": kind,
        "labels": labels,
        "line": body.line,
        "end_line": body.end_line,
        "attrs": attrs,
        "blocks": blocks,
    }


# Nested blocks whose meaning doesn't depend on a provider schema.
_NESTED: dict[str, tuple[str, ...]] = {
    "terraform": ("required_providers", "backend", "cloud"),
    "resource": ("lifecycle", "provisioner", "connection"),
    "data": ("lifecycle",),
    "variable": ("validation",),
    "provider": ("default_tags", "assume_role", "ignore_tags"),
}


def _labelled_nested(kind: str, body: JObject) -> list[Block]:
    """`"dynamic": {"ingress": {"for_each": ..., "content": {...}}}` blocks."""
    if kind not in ("resource", "data"):
        return []
    found: list[Block] = []
    for name, value in body.members:
        if name != "dynamic":
            continue
        for label_block in _blocks("dynamic", value, 1, [], body):
            content = label_block["attrs"].pop("content", None)
            if content is not None:
                label_block["blocks"].append(
                    {
                        "type": "content",
                        "labels": [],
                        "line": label_block["line"],
                        "end_line": label_block["end_line"],
                        "attrs": _object_attrs(content),
                        "blocks": [],
                    }
                )
            found.append(label_block)
    return found


def _object_attrs(expr: Expr) -> dict[str, Expr]:
    if expr[0] != "object":
        return {}
    return {str(key[1]): value for key, value in expr[1] if key[0] == "lit"}


def _attribute(kind: str, name: str, value: Any) -> Expr:
    if kind == "variable" and name == "type" and isinstance(value, str):
        return _expression(value)
    if name == "depends_on":
        return ["opaque", "depends_on"]
    if name == "provider" and isinstance(value, str):
        return _expression(value)
    return expression(value)


def _expression(text: str) -> Expr:
    try:
        return parse_expression(text)
    except HclSyntaxError:
        return ["opaque", "expression the parser does not accept"]


def expression(value: Any) -> Expr:
    """A JSON value as an expression: strings are templates, keys may be too."""
    if isinstance(value, JObject):
        return [
            "object",
            [[template_from_text(k), expression(v)] for k, v in value.members if k != "//"],
        ]
    if isinstance(value, list):
        return ["tuple", [expression(v) for v in value]]
    if isinstance(value, str):
        return template_from_text(value)
    return ["lit", value]
