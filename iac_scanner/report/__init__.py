"""Reports over the findings model, one module per format."""

from __future__ import annotations

from collections.abc import Callable

from iac_scanner.findings import ScanResult
from iac_scanner.report import json, junit, sarif, text

Renderer = Callable[[ScanResult, bool], str]

FORMATS: dict[str, Renderer] = {
    "text": text.render,
    "json": json.render,
    "sarif": sarif.render,
    "junit": junit.render,
}
