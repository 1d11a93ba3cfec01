"""Parse results cached by content hash, so an unchanged tree re-scans almost
instantly. One small JSON file per distinct file content, under
`.portcullis-cache/parse/` (or `--cache-dir`); keys include a digest of the
code that produced the entry, so an entry written by any other build (one with
a bug since fixed, whatever its version string) is never read."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata, util
from pathlib import Path
from typing import Any

DEFAULT_DIR = ".portcullis-cache"
_TIGHT = (",", ":")

# What turns files into a parse or scan result: the scanner's and the policy
# engine's own source, and the libraries they hand the work to (the parser,
# its grammar engine, the Rego engine).
_CODE_PACKAGES = ("iac_scanner", "policy_engine")
_LIBRARIES = ("python-hcl2", "lark", "gordon-to-regorus")


def _code_digest(directories: list[Path], libraries: list[str]) -> str | None:
    """A digest of every file under the package directories (by path within
    its package, and content) and of the libraries' versions; None when the
    source can't be read (a frozen or zipped install): nothing then says which
    code wrote an entry, so nothing is cached."""
    digest = hashlib.sha256(sys.version.encode() + b"\0")
    try:
        for directory in directories:
            files = sorted(
                p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            )
            if not any(p.suffix == ".py" for p in files):
                return None
            for path in files:
                name = path.relative_to(directory.parent).as_posix()
                content = path.read_bytes()
                digest.update(f"{name}\0{len(content)}\0".encode() + content)
    except OSError:
        return None
    for library in libraries:
        try:
            version = metadata.version(library)
        except metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{library}={version}\0".encode())
    return digest.hexdigest()


@functools.cache
def code_identity() -> str | None:
    """_code_digest of this build, once per process (a few milliseconds)."""
    directories = []
    for package in _CODE_PACKAGES:
        spec = util.find_spec(package)
        if spec is None or spec.origin is None:
            return None
        directories.append(Path(spec.origin).parent)
    return _code_digest(directories, list(_LIBRARIES))


def _salt() -> bytes:
    return f"code={code_identity()}\0".encode()


def content_key(content: bytes, kind: str = "") -> str:
    """The key of a file's content (and, for parse results, the syntax it is read in)."""
    return hashlib.sha256(_salt() + kind.encode() + b"\0" + content).hexdigest()


class ParseCache:
    """Get/put parse results (or parse errors) by content key. A cache that
    can't be written (read-only checkout) is silently skipped: it only costs time."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = _usable(directory, "parse")
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
    policy revision, the scanner's code) and records every file and directory
    listing the result depended on; it is used only if all of them are unchanged."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = _usable(directory, "scan")

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


def _usable(directory: Path | None, kind: str) -> Path | None:
    """Where entries of one kind live; None (no caching) when this build's code
    can't be identified."""
    if directory is None or code_identity() is None:
        return None
    return directory / kind


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
    text = json.dumps({"salt": _salt().decode(), **inputs}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
