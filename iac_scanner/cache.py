"""Parse results cached by content hash, so an unchanged tree re-scans almost
instantly. One small JSON file per distinct file content, under
`.portcullis-cache/parse/` (or `--cache-dir`); keys include the parser's
version and the parse format, so an upgrade never reads stale entries."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from iac_scanner.hcl import FORMAT_VERSION

DEFAULT_DIR = ".portcullis-cache"
_TIGHT = (",", ":")


def _parser_version() -> str:
    try:
        return metadata.version("python-hcl2")
    except metadata.PackageNotFoundError:
        return "unknown"


_SALT = f"hcl2={_parser_version()};format={FORMAT_VERSION}\0".encode()


def content_key(content: bytes, kind: str = "") -> str:
    """The key of a file's content (and, for parse results, the syntax it is read in)."""
    return hashlib.sha256(_SALT + kind.encode() + b"\0" + content).hexdigest()


class ParseCache:
    """Get/put parse results (or parse errors) by content key. A cache that
    can't be written (read-only checkout) is silently skipped: it only costs time."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory / "parse" if directory is not None else None
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any:
        path = self._path(key)
        if path is None:
            return None
        try:
            with path.open("rb") as handle:
                value = json.loads(handle.read())
        except (OSError, ValueError):
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        if self.directory is not None:
            self.put_text(key, json.dumps(value, separators=_TIGHT))

    def put_text(self, key: str, text: str) -> None:
        """put, for a value already in JSON text."""
        path = self._path(key)
        if path is not None and not _write_atomically(path, text):
            self.directory = None


class ResultCache:
    """Whole-scan results, for re-scanning an unchanged tree without parsing or
    evaluating anything. An entry is keyed by the scan's inputs (paths, options,
    policy revision, scanner version) and records every file and directory
    listing the result depended on; it is used only if all of them are unchanged."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory / "scan" if directory is not None else None

    def _path(self, key: str) -> Path | None:
        return self.directory / f"{key}.json" if self.directory is not None else None

    def get(self, key: str, still_valid: Callable[[dict[str, Any]], bool]) -> Any:
        path = self._path(key)
        if path is None:
            return None
        try:
            entry = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or not still_valid(entry):
            return None
        return entry.get("result")

    def put(self, key: str, entry: dict[str, Any]) -> None:
        path = self._path(key)
        if path is not None and not _write_atomically(path, json.dumps(entry, separators=_TIGHT)):
            self.directory = None


def _write_atomically(path: Path, text: str) -> bool:
    """Write then rename, so a concurrent scan never reads half a file; False when
    the cache directory isn't writable (the caller stops caching, the scan goes on)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except OSError:
        return False
    return True


def inputs_key(inputs: dict[str, Any]) -> str:
    text = json.dumps({"salt": _SALT.decode(), **inputs}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
