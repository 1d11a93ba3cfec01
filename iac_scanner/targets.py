"""Resolve each resource's `refs` to the addresses of resources in the same
document (`targets`), once, in linear time, so rules look references up
instead of comparing every resource with every other.

The matching is the one `policies/lib/terraform.rego` (`same_resource`)
applies when a document has no `targets`: a reference written inside a module
is relative to it, it may name an attribute (`aws_s3_bucket.b.id`), and an
instance key (`[0]`) may be on either side only.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

_KEYS = re.compile(r"\[[^\]]*\]")


def _strip_keys(address: str) -> str:
    return _KEYS.sub("", address)


def _prefixes(reference: str) -> list[str]:
    """The reference and each of its leading parts ending before a '.', the
    only strings an address can equal for `reference` to point into it."""
    found = [reference]
    position = reference.find(".")
    while position != -1:
        found.append(reference[:position])
        position = reference.find(".", position + 1)
    return found


class AddressIndex:
    """Addresses of one document, by exact form and with instance keys removed."""

    def __init__(self, addresses: list[str]) -> None:
        self.exact = set(addresses)
        self.keyless: dict[str, set[str]] = defaultdict(set)
        for address in addresses:
            self.keyless[_strip_keys(address)].add(address)

    def matches(self, module: str, reference: str) -> set[str]:
        found: set[str] = set()
        candidates = [reference]
        if module:
            path = module if module.startswith("module.") else f"module.{module}"
            candidates.append(f"{path}.{reference}")
        for candidate in candidates:
            stripped = _strip_keys(candidate)
            for prefix in _prefixes(candidate):
                if prefix in self.exact:
                    found.add(prefix)
                if stripped == candidate:
                    # The reference names no instance: every instance matches.
                    found |= self.keyless.get(prefix, set())
            for prefix in _prefixes(stripped):
                # The document has no instance keys but the reference does.
                if prefix in self.exact and _strip_keys(prefix) == prefix:
                    found.add(prefix)
        return found


def with_targets(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries, each with `targets`: refs key -> sorted addresses in this document."""
    index = AddressIndex([e["address"] for e in entries])
    result = []
    for entry in entries:
        module = str(entry.get("module") or "")
        targets: dict[str, list[str]] = {}
        for key, references in (entry.get("refs") or {}).items():
            found: set[str] = set()
            for reference in references:
                if isinstance(reference, str):
                    found |= index.matches(module, reference)
            targets[key] = sorted(found)
        result.append({**entry, "targets": targets})
    return result
