"""Read a policy set from a directory or an OPA bundle into modules and data."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from policy_engine.errors import PolicyLoadError, Problem

DATA_SUFFIXES = (".json", ".yaml", ".yml")
MAX_BUNDLE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Module:
    """One Rego source file, named as the user would see it in an error."""

    file: str
    text: str


@dataclass
class PolicySet:
    modules: list[Module]
    data: dict[str, Any]
    origin: str
    revision: str
    # Where each data key came from, to name both files on a conflict.
    data_sources: dict[tuple[str, ...], str] = field(default_factory=dict)

    def source_of(self, path: tuple[str, ...]) -> str:
        return _source_of(self.data_sources, path)


def _source_of(sources: dict[tuple[str, ...], str], path: tuple[str, ...]) -> str:
    """The file that set `path` or the nearest object above it."""
    for length in range(len(path), 0, -1):
        if path[:length] in sources:
            return sources[path[:length]]
    return "a data file"


def load_policy_set(source: str | Path) -> PolicySet:
    """Load a directory (every `*.rego`; every JSON/YAML file merged at the data root)
    or an OPA bundle (`.tar.gz`: `*.rego`, `data.json`/`data.yaml` mounted at their
    directory, `.manifest`). Raises PolicyLoadError naming the file on any problem."""
    path = Path(source)
    if path.is_dir():
        return _load_directory(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        return _load_bundle(path)
    if path.is_file():
        raise PolicyLoadError(
            [Problem(str(path), "not a policy directory or an OPA bundle (.tar.gz)")]
        )
    raise PolicyLoadError([Problem(str(path), "no such policy directory or bundle")])


def _load_directory(root: Path) -> PolicySet:
    modules: list[Module] = []
    documents: list[tuple[str, tuple[str, ...], bytes]] = []
    problems: list[Problem] = []
    for file in sorted(root.rglob("*")):
        relative = file.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not file.is_file():
            continue
        display = str(file)
        if file.suffix == ".rego":
            try:
                modules.append(Module(display, file.read_text(encoding="utf-8")))
            except UnicodeDecodeError as error:
                problems.append(Problem(display, f"not UTF-8 text: {error.reason}"))
        elif file.suffix in DATA_SUFFIXES:
            documents.append((display, (), file.read_bytes()))
    return _assemble(modules, documents, problems, origin=str(root))


def _load_bundle(bundle: Path) -> PolicySet:
    modules: list[Module] = []
    documents: list[tuple[str, tuple[str, ...], bytes]] = []
    problems: list[Problem] = []
    try:
        with tarfile.open(bundle, "r:gz") as archive:
            total = 0
            for member in archive.getmembers():
                raw = PurePosixPath(member.name)
                name = PurePosixPath(*[p for p in raw.parts if p not in (".", "/")] or ["."])
                display = f"{bundle}:{name}"
                if member.isdir():
                    continue
                if not member.isfile() or ".." in raw.parts or raw.is_absolute():
                    problems.append(Problem(display, "unsafe bundle entry (link or path escape)"))
                    continue
                total += member.size
                if total > MAX_BUNDLE_BYTES:
                    problems.append(Problem(str(bundle), "bundle larger than 64 MiB unpacked"))
                    break
                extracted = archive.extractfile(member)
                content = extracted.read() if extracted else b""
                if name.suffix == ".rego":
                    try:
                        modules.append(Module(display, content.decode("utf-8")))
                    except UnicodeDecodeError as error:
                        problems.append(Problem(display, f"not UTF-8 text: {error.reason}"))
                elif name.name in ("data.json", "data.yaml", "data.yml"):
                    documents.append((display, name.parent.parts, content))
                elif name.name == ".manifest":
                    documents.append((display, ("__manifest__",), content))
    except (tarfile.TarError, OSError, EOFError) as error:
        problem = Problem(str(bundle), f"not a readable .tar.gz bundle: {error}")
        raise PolicyLoadError([problem]) from error
    manifest = [d for d in documents if d[1] == ("__manifest__",)]
    documents = [d for d in documents if d[1] != ("__manifest__",)]
    policy_set = _assemble(modules, documents, problems, origin=str(bundle))
    for display, _, content in manifest:
        parsed = _parse_document(display, content, problems)
        if isinstance(parsed, dict) and isinstance(parsed.get("revision"), str):
            policy_set.revision = parsed["revision"]
    if problems:
        raise PolicyLoadError(problems)
    return policy_set


def _assemble(
    modules: list[Module],
    documents: list[tuple[str, tuple[str, ...], bytes]],
    problems: list[Problem],
    origin: str,
) -> PolicySet:
    data: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    digest = hashlib.sha256()
    for module in modules:
        digest.update(module.file.encode() + b"\0" + module.text.encode() + b"\0")
    for display, mount, content in documents:
        digest.update(display.encode() + b"\0" + content + b"\0")
        parsed = _parse_document(display, content, problems)
        if parsed is None:
            continue
        if not isinstance(parsed, dict):
            problems.append(Problem(display, "a data document must be an object at the top"))
            continue
        document: Any = parsed
        for key in reversed(mount):
            document = {key: document}
        _merge(data, document, (), display, sources, problems)
    if not modules and not problems:
        problems.append(Problem(origin, "no .rego files found"))
    if problems:
        raise PolicyLoadError(problems)
    return PolicySet(modules, data, origin, digest.hexdigest()[:16], sources)


def _parse_document(display: str, content: bytes, problems: list[Problem]) -> Any:
    try:
        if display.endswith(".json") or display.endswith(".manifest"):
            return json.loads(content)
        return yaml.safe_load(io.BytesIO(content))
    except json.JSONDecodeError as error:
        problems.append(Problem(display, f"invalid JSON: {error.msg}", error.lineno, error.colno))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        message = f"invalid YAML: {error.problem or error}"
        if mark is None:
            problems.append(Problem(display, message))
        else:
            problems.append(Problem(display, message, mark.line + 1, mark.column + 1))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        problems.append(Problem(display, f"invalid data file: {error}"))
    return None


def _merge(
    target: dict[str, Any],
    document: dict[str, Any],
    prefix: tuple[str, ...],
    display: str,
    sources: dict[tuple[str, ...], str],
    problems: list[Problem],
) -> None:
    for key, value in document.items():
        path = (*prefix, str(key))
        if key not in target:
            target[key] = value
            sources[path] = display
            continue
        existing = target[key]
        if isinstance(existing, dict) and isinstance(value, dict):
            _merge(existing, value, path, display, sources, problems)
            continue
        first = _source_of(sources, path)
        problems.append(
            Problem(display, f"conflicting data keys: data.{'.'.join(path)} is also set in {first}")
        )


def data_leaf_on(data: dict[str, Any], path: tuple[str, ...]) -> tuple[str, ...] | None:
    """The data path that a rule at `path` would collide with, if any."""
    node: Any = data
    walked: list[str] = []
    for part in path:
        if not isinstance(node, dict):
            return tuple(walked)
        if part not in node:
            return None
        node = node[part]
        walked.append(part)
    return tuple(walked)
