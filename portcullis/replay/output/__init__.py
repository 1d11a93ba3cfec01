"""Replay reports, one module per format, each rendering Report.document()."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from portcullis.replay.output import json, markdown, text

Renderer = Callable[[dict[str, Any]], str]

FORMATS: dict[str, Renderer] = {
    "text": text.render,
    "json": json.render,
    "markdown": markdown.render,
}
