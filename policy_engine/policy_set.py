"""Read a policy set from a directory or an OPA bundle into modules and data."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import re
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from yaml.composer import ComposerError

from policy_engine.errors import PolicyLoadError, Problem, shown

DATA_SUFFIXES = (".json", ".yaml", ".yml")
BUNDLE_SUFFIXES = (".tar.gz", ".tgz")
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
# Files and directories in a bundle (the shipped set has a few dozen): each one's
# header is read and kept, so a small gzip of empty entries would cost seconds and
# hundreds of MB.
MAX_BUNDLE_ENTRIES = 10_000
# The unpacked tar stream: the files and, for headers and padding, 16 MiB more.
_MAX_TAR_BYTES = MAX_BUNDLE_BYTES + 16 * 1024 * 1024
# A manifest's revision is written into every decision event.
MAX_REVISION_CHARS = 256
# Values a YAML data file's aliases may stand for, expanded: a few shared blocks
# (one MFA rule each app refers to) are some hundreds.
MAX_ALIAS_VALUES = 100_000
# Non-JSON values reported per data file; past that, a count.
MAX_VALUE_PROBLEMS = 10
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NOT_A_POLICY_FILE = (
    "not a .rego file, a data file (.json, .yaml, .yml), a policy directory or an "
    "OPA bundle (.tar.gz)"
)
_TOO_DEEP = "nested too deeply to read (about 1,000 levels at most)"


@dataclass(frozen=True)
class Module:
    """One Rego source file, named as the user would see it in an error."""

    file: str
    text: str


def is_test_file(file: str) -> bool:
    """Whether a Rego file holds tests (`*_test.rego`, as `opa test` names them):
    `policy test` runs them, and no decision reads them."""
    return file.endswith("_test.rego")


@dataclass
class PolicySet:
    modules: list[Module]
    data: dict[str, Any]
    origin: str
    revision: str
    # Where each data key came from, to name both files on a conflict.
    data_sources: dict[tuple[str, ...], str] = field(default_factory=dict)
    # A bundle's manifest roots ("acme/rules"), None when it claims all of data:
    # every package and data path must lie under one (compile_policy checks packages).
    roots: tuple[str, ...] | None = None

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
    if path.is_file() and path.name.endswith(BUNDLE_SUFFIXES):
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
    try:
        files = sorted(root.rglob("*"))
    except OSError as error:  # a directory removed while listed, or unreadable
        problem = Problem(str(root), f"can't list the directory: {error}")
        raise PolicyLoadError([problem]) from None
    for file in files:
        relative = file.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not is_policy_file(file):
            continue
        if not file.is_dir():
            _read_file(file, modules, documents, problems)
    return _assemble(modules, documents, problems, origin=str(root))


def load_policy_files(files: Sequence[str | Path]) -> PolicySet:
    """Load ``.rego`` and data files named one by one as one policy set, as
    ``opa test a.rego a_test.rego`` does: each data file merged at the data root,
    as in a directory. Raises PolicyLoadError naming each file that can't be."""
    modules: list[Module] = []
    documents: list[tuple[str, tuple[str, ...], bytes]] = []
    problems: list[Problem] = []
    paths = [Path(file) for file in files]
    for path in paths:
        if not is_policy_file(path):
            problems.append(Problem(str(path), NOT_A_POLICY_FILE))
        elif not path.exists() and not path.is_symlink():
            problems.append(Problem(str(path), "no such file"))
        else:
            _read_file(path, modules, documents, problems)
    return _assemble(modules, documents, problems, origin=" ".join(map(str, paths)))


def is_policy_file(file: Path) -> bool:
    """A module or a data file, by its name."""
    return file.suffix == ".rego" or file.suffix in DATA_SUFFIXES


def _read_file(
    file: Path,
    modules: list[Module],
    documents: list[tuple[str, tuple[str, ...], bytes]],
    problems: list[Problem],
) -> None:
    """A module or a data document read from ``file``, or the problem that stops it."""
    display = str(file)
    if not file.is_file():
        # A link that leads nowhere (a ConfigMap key removed, a checkout missing a
        # file) would otherwise drop a module or a data file without a word.
        if file.is_symlink() and not file.exists():
            problems.append(Problem(display, "a link that leads nowhere (or loops)"))
        else:
            problems.append(Problem(display, "not a regular file"))
        return
    try:
        if file.suffix == ".rego":
            modules.append(Module(display, _rego_text(file.read_bytes())))
        else:
            documents.append((display, (), file.read_bytes()))
    except UnicodeDecodeError as error:
        problems.append(Problem(display, f"not UTF-8 text: {error.reason}"))
    except OSError as error:
        problems.append(Problem(display, f"can't read: {error.strerror or error}"))


def _rego_text(content: bytes) -> str:
    """A module's text. An editor's UTF-8 byte-order mark is left out: OPA reads
    past it, regorus calls it an invalid character. UnicodeDecodeError if it isn't
    UTF-8."""
    return content.decode("utf-8").removeprefix("\ufeff")


def _load_bundle(bundle: Path) -> PolicySet:
    modules: list[Module] = []
    documents: list[tuple[str, tuple[str, ...], bytes]] = []
    problems: list[Problem] = []
    try:
        # Streamed, through a cap on what the gzip unpacks to: tarfile reads a
        # header (a GNU long name, a pax record) into memory whole, and reading the
        # archive's member list first walks all of it, whatever it holds.
        with gzip.open(bundle) as unpacked:
            capped: Any = _Capped(unpacked, _MAX_TAR_BYTES)  # stream mode ("r|") only reads
            with tarfile.open(fileobj=capped, mode="r|") as archive:
                _read_members(bundle, archive, modules, documents, problems)
    except _TooLarge:
        problems = [Problem(str(bundle), "bundle larger than 64 MiB unpacked")]
        raise PolicyLoadError(problems) from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        problem = Problem(str(bundle), f"not a readable .tar.gz bundle: {error}")
        raise PolicyLoadError([problem]) from error
    manifest = [d for d in documents if d[1] == ("__manifest__",)]
    documents = [d for d in documents if d[1] != ("__manifest__",)]
    policy_set = _assemble(modules, documents, problems, origin=str(bundle))
    for display, _, content in manifest:
        parsed = _parse_document(display, content, problems)
        if parsed is None:
            continue
        if not isinstance(parsed, dict):
            problems.append(Problem(display, "a manifest must be an object"))
            continue
        if "revision" in parsed:
            wrong = _revision_problem(parsed["revision"])
            if wrong is None:
                policy_set.revision = parsed["revision"]
            else:
                problems.append(Problem(display, wrong))
        problems.extend(_v0_modules(display, parsed))
        policy_set.roots = _manifest_roots(display, parsed, problems)
        if policy_set.roots is not None:
            problems.extend(_data_outside_roots(policy_set, display))
    if problems:
        raise PolicyLoadError(problems)
    return policy_set


def _read_members(
    bundle: Path,
    archive: tarfile.TarFile,
    modules: list[Module],
    documents: list[tuple[str, tuple[str, ...], bytes]],
    problems: list[Problem],
) -> None:
    """The bundle's modules, data files and manifest, in the order of the archive."""
    total = 0
    seen: set[PurePosixPath] = set()
    for count, member in enumerate(archive, start=1):
        if count > MAX_BUNDLE_ENTRIES:
            message = f"bundle of more than {MAX_BUNDLE_ENTRIES} entries (files and directories)"
            problems[:] = [Problem(str(bundle), f"{message}: refused")]
            return
        raw = PurePosixPath(member.name)
        name = PurePosixPath(*[p for p in raw.parts if p not in (".", "/")] or ["."])
        display = f"{bundle}:{shown(str(name))}"
        if member.isdir():
            continue
        if not member.isfile() or ".." in raw.parts or raw.is_absolute():
            problems.append(Problem(display, "unsafe bundle entry (link or path escape)"))
            continue
        unreadable = _unreadable_name(member.name)
        if unreadable is not None:
            problems.append(Problem(display, f"{unreadable}: refused"))
            continue
        if name in seen:
            # tar keeps the last copy when it unpacks: a reviewer reading the files
            # would never see the first, which the engine would load too.
            problems.append(
                Problem(
                    display,
                    "the bundle holds this file twice (an unpacked copy shows only the "
                    "last): refused",
                )
            )
            continue
        seen.add(name)
        total += member.size
        if total > MAX_BUNDLE_BYTES:
            raise _TooLarge
        extracted = archive.extractfile(member)
        content = extracted.read() if extracted else b""
        if name.suffix == ".rego":
            try:
                modules.append(Module(display, _rego_text(content)))
            except UnicodeDecodeError as error:
                problems.append(Problem(display, f"not UTF-8 text: {error.reason}"))
        elif name.name in ("data.json", "data.yaml", "data.yml"):
            documents.append((display, name.parent.parts, content))
        elif name.name == ".manifest":
            documents.append((display, ("__manifest__",), content))


class _TooLarge(Exception):
    """The bundle unpacks to more than its limits allow."""


class _Capped:
    """A stream that raises _TooLarge once more than ``limit`` bytes were read."""

    def __init__(self, stream: gzip.GzipFile, limit: int) -> None:
        self._stream = stream
        self._left = limit

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(self._left + 1 if size < 0 else min(size, self._left + 1))
        self._left -= len(data)
        if self._left < 0:
            raise _TooLarge
        return data


def _unreadable_name(name: str) -> str | None:
    """Why a member's name can't be shown as it is, if it can't: bytes that aren't
    UTF-8 (tarfile keeps them as surrogates) or control characters, which a listing
    or an error message would send to the reviewer's terminal."""
    if any("\udc80" <= char <= "\udcff" for char in name):
        return "the name is not UTF-8"
    if not all(char.isprintable() or char == " " for char in name):
        return "the name holds control characters"
    return None


def _revision_problem(revision: Any) -> str | None:
    """Why a manifest's revision can't be the policy's, if it can't. It goes into
    every decision event, /metrics and /readyz: a string (as OPA asks), short, and
    printable."""
    if not isinstance(revision, str):
        return f"revision must be a string (it is {json.dumps(revision)[:40]})"
    if len(revision) > MAX_REVISION_CHARS:
        return f"revision is {len(revision)} characters long (at most {MAX_REVISION_CHARS})"
    if not revision.isprintable():
        return "revision holds control characters"
    return None


def _v0_modules(display: str, manifest: dict[str, Any]) -> list[Problem]:
    """A manifest that says its modules are Rego v0 (``rego_version: 0``, or a
    ``file_rego_versions`` entry of 0): the engine reads v1 only, and each v0
    module would be a syntax error far from the cause."""
    versions = [("rego_version", manifest.get("rego_version", 1))]
    per_file = manifest.get("file_rego_versions")
    if isinstance(per_file, dict):
        versions += [(f"file_rego_versions[{name!r}]", v) for name, v in per_file.items()]
    return [
        Problem(
            display,
            f"{where} is {version!r}: only Rego v1 is supported (as OPA 1.x reads "
            "it); upgrade the modules with `opa fmt --write --v0-v1`",
        )
        for where, version in versions
        if version != 1
    ]


def _manifest_roots(
    display: str, manifest: dict[str, Any], problems: list[Problem]
) -> tuple[str, ...] | None:
    """The manifest's roots as OPA reads them (no leading or trailing "/"), or None
    when it names none; roots that overlap are a problem, as on OPA."""
    roots = manifest.get("roots")
    if roots is None:
        return None
    if not isinstance(roots, list) or not all(isinstance(root, str) for root in roots):
        problems.append(Problem(display, "roots must be a list of strings"))
        return None
    trimmed = tuple(root.strip("/") for root in roots)
    for index, root in enumerate(trimmed):
        for other in trimmed[index + 1 :]:
            if root_holds(root, _parts(other)) or root_holds(other, _parts(root)):
                problems.append(Problem(display, f"roots {root!r} and {other!r} overlap"))
    return trimmed


def _parts(root: str) -> tuple[str, ...]:
    return tuple(root.split("/"))


def root_holds(root: str, path: tuple[str, ...]) -> bool:
    """Whether a bundle root ("acme/rules") holds `path` (("acme", "rules", "max")),
    OPA's rule: a root holds its own path and all below it; "" holds everything."""
    if root == "":
        return True
    parts = _parts(root)
    return path[: len(parts)] == parts


def outside_roots(roots: tuple[str, ...] | None, path: tuple[str, ...]) -> bool:
    return roots is not None and not any(root_holds(root, path) for root in roots)


def _data_outside_roots(policy_set: PolicySet, manifest: str) -> list[Problem]:
    """Each data path no root holds (OPA refuses such a bundle), by the file that
    set it. An object is looked into only when a root lies below it."""
    roots = policy_set.roots or ()
    problems = []
    pending: list[tuple[tuple[str, ...], Any]] = [((), policy_set.data)]
    while pending:
        path, node = pending.pop()
        for key, value in node.items():
            at = (*path, key)
            if not outside_roots(roots, at):
                continue
            if isinstance(value, dict) and any(_parts(root)[: len(at)] == at for root in roots):
                pending.append((at, value))
                continue
            message = (
                f"data.{'.'.join(at)} is outside the manifest roots "
                f"{json.dumps(list(roots))} ({manifest})"
            )
            problems.append(Problem(policy_set.source_of(at), message))
    return problems


def bundle_roots(packages: list[tuple[str, ...]], data: dict[str, Any]) -> list[str]:
    """The roots a bundle of these packages and data claims: each package's path and
    each top-level data key, less those under another. They hold every package and
    data path and never overlap, so OPA accepts them, and they claim no more of
    data than the policy set has, so other bundles can share an OPA with it."""
    paths = {package for package in packages if package} | {(key,) for key in data if key}
    kept = [p for p in paths if not any(q != p and p[: len(q)] == q for q in paths)]
    return sorted("/".join(path) for path in kept)


def _inside(display: str, origin: str) -> bytes:
    """A file's name within its policy set: ``origin/x.rego`` (a directory's) or
    ``origin:x.rego`` (a bundle's) as ``x.rego``."""
    for separator in ("/", ":"):
        if display.startswith(origin + separator):
            return display[len(origin) + 1 :].encode()
    return display.encode()


def _assemble(
    modules: list[Module],
    documents: list[tuple[str, tuple[str, ...], bytes]],
    problems: list[Problem],
    origin: str,
) -> PolicySet:
    data: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    # The revision is of the content and the names inside the set, not of where it
    # was loaded from: replicas mounting it at other paths log the same revision.
    digest = hashlib.sha256()
    for module in modules:
        digest.update(_inside(module.file, origin) + b"\0" + module.text.encode() + b"\0")
    for display, mount, content in documents:
        digest.update(_inside(display, origin) + b"\0" + content + b"\0")
        parsed = _parse_document(display, content, problems)
        if parsed is None:
            continue
        if not isinstance(parsed, dict):
            problems.append(Problem(display, "a data document must be an object at the top"))
            continue
        document: Any = parsed
        for key in reversed(mount):
            document = {key: document}
        found = _non_json_values(document, "data", display)
        if found:
            problems.extend(found)
            continue
        _merge(data, document, (), display, sources, problems)
    if not modules and not problems:
        problems.append(Problem(origin, "no .rego files found"))
    if problems:
        raise PolicyLoadError(problems)
    return PolicySet(modules, data, origin, digest.hexdigest()[:16], sources)


@dataclass(frozen=True)
class _YamlOnly:
    """A YAML value with no JSON form (a date, binary, a set), kept where it was
    read so that the load can name it rather than pass it to the engine."""

    kind: str
    text: str
    line: int
    col: int


class _DataLoader(yaml.SafeLoader):
    """safe_load, except that the YAML types JSON lacks come back as _YamlOnly, and
    that aliases may stand for MAX_ALIAS_VALUES values in all: the engine gets the
    data as JSON, where each alias is a copy (1 KB of nested aliases, a "billion
    laughs", is gigabytes), and an alias inside the value it names is a loop."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._expanded = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values in it, once complete
        self._open: set[str] = set()  # anchors of the values being read

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                problem = f"the alias *{event.anchor} is inside the value it names (a loop)"
                raise ComposerError(None, None, problem, mark)
            if event.anchor in self.anchors:
                self._expanded += self._size(self.anchors[event.anchor])
                if self._expanded > MAX_ALIAS_VALUES:
                    problem = (
                        f"its aliases expand to more than {MAX_ALIAS_VALUES} values (a YAML bomb?)"
                    )
                    raise ComposerError(None, None, problem, mark)
            return super().compose_node(parent, index)
        anchor = getattr(event, "anchor", None)
        if anchor is None:
            return super().compose_node(parent, index)
        self._open.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open.discard(anchor)

    def _size(self, node: yaml.Node) -> int:
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._size(item) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._size(key) + self._size(value) for key, value in node.value)
        self._sizes[id(node)] = size
        return size


def _yaml_only(kind: str) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> _YamlOnly:
        text = node.value if isinstance(node, yaml.ScalarNode) else ""
        mark = node.start_mark
        return _YamlOnly(kind, str(text)[:40], mark.line + 1, mark.column + 1)

    return construct


# What each YAML-only type is called, and what to write instead.
_YAML_ONLY = {
    "timestamp": ("date/time", "quote it to keep it as a string"),
    "binary": ("!!binary value", "use a plain base64 string"),
    "set": ("!!set", "use a list, or an object of key: true"),
    "omap": ("!!omap", "use an object or a list of objects"),
    "pairs": ("!!pairs", "use an object or a list of objects"),
}
for _tag, (_kind, _) in _YAML_ONLY.items():
    _DataLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _yaml_only(_kind))
_HINTS = dict(_YAML_ONLY.values())


def _non_json_values(value: Any, path: str, display: str) -> list[Problem]:
    """Every value in a data document that JSON (and so OPA) has no form for, by
    its data path. The engine would convert some silently (binary to a list of
    numbers, a set to a Rego set) and fail on others (a date); neither is the
    data the author meant, so the load refuses them, as it does invalid YAML."""
    found: list[Problem] = []
    try:
        _walk(value, path, display, found)
    except RecursionError:
        return [Problem(display, _TOO_DEEP)]
    if len(found) > MAX_VALUE_PROBLEMS:
        more = len(found) - MAX_VALUE_PROBLEMS
        found = [*found[:MAX_VALUE_PROBLEMS], Problem(display, f"... and {more} more such values")]
    return found


def _walk(value: Any, path: str, display: str, found: list[Problem]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                found.append(_non_json_key(key, path, display))
                continue
            step = f".{key}" if _IDENTIFIER.match(key) else f"[{json.dumps(key)}]"
            _walk(item, path + step, display, found)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, f"{path}[{index}]", display, found)
    elif isinstance(value, _YamlOnly):
        shown = f" ({value.text})" if value.text else ""
        message = f"{path}: a YAML {value.kind}{shown} is not a JSON value; {_HINTS[value.kind]}"
        found.append(Problem(display, message, value.line, value.col))
    elif isinstance(value, float) and not math.isfinite(value):
        found.append(Problem(display, f"{path}: {value} is not a JSON number"))
    elif value is not None and not isinstance(value, str | int | float | bool):
        found.append(Problem(display, f"{path}: a {type(value).__name__} is not a JSON value"))


def _non_json_key(key: Any, path: str, display: str) -> Problem:
    if isinstance(key, _YamlOnly):
        message = f"{path}: the key {key.text} is a YAML {key.kind}, not a string; quote it"
        return Problem(display, message, key.line, key.col)
    if key is None or isinstance(key, bool):  # YAML 1.1: unquoted on, off, yes, no, ~
        what = "null" if key is None else "a boolean"
    elif isinstance(key, int | float):
        what = "a number"
    else:
        what = f"a {type(key).__name__}"
    shown = json.dumps(key) if key is None or isinstance(key, int | float) else repr(key)
    return Problem(display, f"{path}: the key {shown} is read as {what}, not a string; quote it")


def _parse_document(display: str, content: bytes, problems: list[Problem]) -> Any:
    try:
        if display.endswith(".json") or display.endswith(".manifest"):
            return json.loads(content)
        return yaml.load(io.BytesIO(content), Loader=_DataLoader)  # a SafeLoader
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
    except RecursionError:
        problems.append(Problem(display, _TOO_DEEP))
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
