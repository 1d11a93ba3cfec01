"""Find what to scan under the given paths, parse it (in parallel, through the
cache) and build one Terraform document per root module or plan file."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iac_scanner.cache import ParseCache, content_key
from iac_scanner.findings import Problem
from iac_scanner.hcl import HclSyntaxError, ParsedFile, parse_text
from iac_scanner.hcl_json import parse_json_config
from iac_scanner.modules import (
    Loader,
    ModuleInstance,
    Resource,
    SourceFile,
    literal_value,
    root_variables,
    tfvars_values,
)
from iac_scanner.plan import PlanError, decode, load_plan
from iac_scanner.targets import with_targets

# A tree this big gets a progress line on a terminal.
PROGRESS_MIN_FILES = 300
# Fewer files than this many bytes in all are parsed in this process.
PARALLEL_MIN_BYTES = 1_000_000


@dataclass
class Document:
    """One policy input: a root module (with its modules) or a plan."""

    name: str
    source: str  # "hcl" | "plan"
    resources: list[Resource]
    # Directory a checkov run for this document would start from, or the plan file.
    origin: Path

    @property
    def root_module(self) -> Path:
        """The root module findings are in: its directory (when one file of it
        was scanned too), or the plan file."""
        if self.source == "hcl" and self.origin.is_file():
            return self.origin.parent
        return self.origin

    def as_input(self) -> dict[str, Any]:
        entries = with_targets([r.entry for r in self.resources])
        return {"source": self.source, "resources": entries}


@dataclass
class Reads:
    """Every file and directory listing a scan's result depends on, so the scan
    cache can tell whether anything changed."""

    files: dict[str, str] = field(default_factory=dict)  # path -> content key
    dirs: dict[str, list[str]] = field(default_factory=dict)  # path -> file names

    def file(self, path: Path, content: bytes) -> None:
        self.files[str(path.resolve())] = content_key(content)

    def listing(self, directory: Path) -> list[Path]:
        """The files in directory (recorded), sorted; [] when it can't be listed.
        A link that leads nowhere (or in a loop) is listed too, so reading it
        reports the error instead of skipping the file in silence."""
        paths = list_files(directory)
        self.dirs[str(directory.resolve())] = [p.name for p in paths]
        return paths


def list_files(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if not p.is_dir())
    except OSError:
        return []


def is_config(path: Path | str) -> bool:
    """Terraform configuration: `.tf` (HCL) or `.tf.json` (JSON syntax)."""
    name = path.name if isinstance(path, Path) else path
    return name.endswith((".tf", ".tf.json"))


def is_json_config(path: Path | str) -> bool:
    name = path.name if isinstance(path, Path) else path
    return name.endswith(".tf.json")


@dataclass
class LoadResult:
    documents: list[Document] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: int = 0
    reads: Reads = field(default_factory=Reads)


@dataclass
class LoadOptions:
    var_files: list[str] = field(default_factory=list)
    cli_vars: list[tuple[str, str]] = field(default_factory=list)
    jobs: int = 1
    cache: ParseCache = field(default_factory=lambda: ParseCache(None))
    progress: bool = False


def display_path(path: Path) -> str:
    """Paths in findings: relative to the current directory when inside it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def _parse_worker(job: tuple[bool, bytes]) -> dict[str, Any]:
    as_json, content = job
    try:
        # Terraform accepts a UTF-8 byte-order mark at the start of a file.
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return {"error": [f"not UTF-8 text: {error.reason} at byte {error.start}", None, None]}
    try:
        return {"ok": parse_json_config(text) if as_json else parse_text(text)}
    except HclSyntaxError as error:
        return {"error": [error.message, error.line, error.column]}
    except RecursionError:
        return {"error": ["expression nested too deeply to parse", None, None]}


def _parse_worker_text(job: tuple[bool, bytes]) -> str:
    """_parse_worker in a pool process, its result as JSON text: the parent
    reads JSON several times faster than it unpickles the same lists, and the
    parse cache stores that text as it is."""
    return json.dumps(_parse_worker(job), separators=(",", ":"))


class Parser:
    """Every .tf file a scan reads, parsed once, from the cache where possible."""

    def __init__(self, options: LoadOptions, problems: list[Problem], reads: Reads) -> None:
        self.options = options
        self.problems = problems
        self.reads = reads
        self.parsed: dict[Path, ParsedFile | None] = {}

    def parse_all(self, files: Iterable[Path]) -> None:
        pending: list[tuple[Path, str, bytes]] = []
        for path in files:
            if path in self.parsed:
                continue
            try:
                content = path.read_bytes()
            except OSError as error:
                self.problems.append(Problem(display_path(path), error.strerror or str(error)))
                self.parsed[path] = None
                continue
            # The same bytes mean different things as .tf and as .tf.json.
            key = content_key(content, "json" if is_json_config(path) else "hcl")
            self.reads.files[str(path)] = content_key(content)
            cached = self.options.cache.get(key)
            if cached is not None:
                self._record(path, cached)
            else:
                pending.append((path, key, content))
        if not pending:
            return
        jobs = min(self.options.jobs, len(pending))
        show = self.options.progress and len(pending) >= PROGRESS_MIN_FILES
        work = [(is_json_config(p), c) for p, _, c in pending]
        size = sum(len(c) for _, _, c in pending)
        # A few files are worth processes when they are big (one 4 MB file
        # takes seconds); many small ones always are.
        if jobs <= 1 or (len(pending) < 8 and size < PARALLEL_MIN_BYTES):
            self._collect(pending, map(_parse_worker, work), show)
            return
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            if len(pending) >= 8:
                chunk = max(1, min(32, len(pending) // (jobs * 4)))
                texts = pool.map(_parse_worker_text, work, chunksize=chunk)
                self._collect(pending, texts, show)
                return
            # Biggest first, so one large file doesn't start last on a busy core.
            by_size = sorted(range(len(work)), key=lambda n: -len(work[n][1]))
            submitted = {n: pool.submit(_parse_worker_text, work[n]) for n in by_size}
            self._collect(pending, (submitted[n].result() for n in range(len(work))), show)

    def _collect(
        self,
        pending: list[tuple[Path, str, bytes]],
        results: Iterable[dict[str, Any] | str],
        show: bool,
    ) -> None:
        for done, ((path, key, _), result) in enumerate(zip(pending, results, strict=True), 1):
            if isinstance(result, str):
                self.options.cache.put_text(key, result)
                result = json.loads(result)
            else:
                self.options.cache.put(key, result)
            self._record(path, result)
            if show and (done % 25 == 0 or done == len(pending)):
                width = 30
                filled = width * done // len(pending)
                bar = "#" * filled + "-" * (width - filled)
                sys.stderr.write(f"\rparsing [{bar}] {done}/{len(pending)} files")
                sys.stderr.flush()
        if show:
            sys.stderr.write("\n")

    def _record(self, path: Path, result: dict[str, Any]) -> None:
        if "ok" in result:
            self.parsed[path] = result["ok"]
            return
        message, line, column = result["error"]
        self.problems.append(Problem(display_path(path), message, line, column))
        self.parsed[path] = None

    def files_of(self, directory: Path, only: Path | None = None) -> list[SourceFile]:
        if only is not None:
            paths = [only]
        else:
            paths = [p for p in self.reads.listing(directory) if is_config(p)]
        self.parse_all(paths)
        return [
            SourceFile(path, display_path(path), parsed)
            for path in paths
            if (parsed := self.parsed.get(path)) is not None
        ]


def walk_dirs(root: Path, problems: list[Problem] | None = None) -> list[Path]:
    """Directories under root holding .tf/.tf.json files; hidden ones
    (.terraform, .git) skipped. A directory that can't be read is a problem,
    never a silent skip: its Terraform would go unscanned."""

    def unreadable(error: OSError) -> None:
        if problems is not None:
            where = display_path(Path(error.filename)) if error.filename else str(root)
            problems.append(Problem(where, f"can't read directory: {error.strerror or error}"))

    found = []
    for current, dirs, files in os.walk(root, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if any(is_config(f) for f in files):
            found.append(Path(current).resolve())
    return found


def _no_terraform_here(root: Path) -> str:
    """Why a tree gave nothing to scan; when it holds a JSON file (a plan from
    `terraform show -json`, say), how to scan that: a plan is read only when named."""
    message = "no Terraform files (.tf, .tf.json) in this directory tree"
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        json_file = next((f for f in sorted(files) if f.endswith(".json")), None)
        if json_file is not None:
            example = display_path(Path(current) / json_file)
            return (
                f"{message}; a plan JSON (terraform show -json) is scanned only when named "
                f"on its own: portcullis scan {example}"
            )
    return message


def _called_dirs(parser: Parser, directory: Path) -> set[Path]:
    """Local module directories that directory's module blocks call."""
    called = set()
    for source in parser.files_of(directory):
        for block in source.parsed["blocks"]:
            if block["type"] != "module":
                continue
            value = literal_value(block["attrs"].get("source", ["lit", None]))
            if isinstance(value, str) and value.startswith(("./", "../")):
                called.add((directory / value.replace("//", "/")).resolve())
    return called


def load(paths: list[str], options: LoadOptions) -> LoadResult:
    result = LoadResult()
    parser = Parser(options, result.problems, result.reads)
    roots: list[tuple[Path, Path | None]] = []  # (module dir, only this file)
    plans: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.exists():
            result.reads.listing(path.parent)
        if path.is_dir():
            dirs = walk_dirs(path, result.problems)
            if not dirs:
                # In CI a mistyped path must not pass as "nothing wrong".
                result.problems.append(Problem(given, _no_terraform_here(path)))
            parser.parse_all(p for d in dirs for p in result.reads.listing(d) if is_config(p))
            called = set().union(*(_called_dirs(parser, d) for d in dirs)) if dirs else set()
            tops = [d for d in dirs if d not in called] or dirs
            roots.extend((d, None) for d in tops)
        elif path.is_file() and is_config(path):
            resolved = path.resolve()
            parser.parse_all([resolved])
            roots.append((resolved.parent, resolved))
        elif path.is_file() and path.suffix == ".json":
            plans.append(path)
        elif path.exists():
            result.problems.append(
                Problem(given, "not a directory, a .tf file or a plan JSON (terraform show -json)")
            )
        else:
            result.problems.append(Problem(given, "no such file or directory"))
    var_files = _var_files(options.var_files, parser, result.problems)
    seen: set[tuple[Path, Path | None]] = set()
    for directory, only in roots:
        if (directory, only) in seen or (directory, None) in seen:
            continue
        seen.add((directory, only))
        result.documents.append(_hcl_document(directory, only, parser, var_files, options, result))
    for plan in plans:
        document = _plan_document(plan, result.problems, result.reads)
        if document is not None:
            result.documents.append(document)
    result.files = sum(1 for v in parser.parsed.values() if v is not None) + len(plans)
    return result


def _var_files(names: list[str], parser: Parser, problems: list[Problem]) -> list[dict[str, Any]]:
    values = []
    for name in names:
        path = Path(name)
        if not path.is_file():
            problems.append(Problem(name, "no such variable file (--var-file)"))
            continue
        assigned = _read_tfvars(path, parser, problems)
        if assigned is not None:
            values.append(assigned)
    return values


def _read_tfvars(path: Path, parser: Parser, problems: list[Problem]) -> dict[str, Any] | None:
    if path.name.endswith(".json"):
        try:
            content = path.read_bytes()
            parser.reads.file(path, content)
            value = json.loads(content.decode("utf-8-sig"))
        except (OSError, ValueError) as error:
            problems.append(Problem(display_path(path), f"not a JSON variable file: {error}"))
            return None
        except RecursionError:
            problems.append(
                Problem(display_path(path), "a JSON variable file nested too deeply to read")
            )
            return None
        if not isinstance(value, dict):
            problems.append(Problem(display_path(path), "a JSON variable file must be an object"))
            return None
        return value
    resolved = path.resolve()
    parser.parse_all([resolved])
    parsed = parser.parsed.get(resolved)
    if parsed is None:
        return None
    if parsed["blocks"]:
        block = parsed["blocks"][0]
        problems.append(
            Problem(
                display_path(path),
                f"a variable file holds only `name = value` lines, not a {block['type']} block",
                block["line"],
            )
        )
        return None
    return tfvars_values(parsed)


def _auto_tfvars(directory: Path, reads: Reads) -> list[Path]:
    names = [p.name for p in reads.listing(directory)]
    found: list[str] = [n for n in ("terraform.tfvars", "terraform.tfvars.json") if n in names]
    found += [n for n in names if n.endswith((".auto.tfvars", ".auto.tfvars.json"))]
    return [directory / n for n in found]


def _hcl_document(
    directory: Path,
    only: Path | None,
    parser: Parser,
    var_files: list[dict[str, Any]],
    options: LoadOptions,
    result: LoadResult,
) -> Document:
    loader = Loader(
        parser.files_of, result.notes, result.reads.file, result.problems, result.reads.listing
    )
    name = display_path(only if only is not None else directory)
    try:
        module = ModuleInstance(loader, directory, "", {}, {}, directory, only_file=only)
        assigned = [
            values
            for path in _auto_tfvars(directory, result.reads)
            if (values := _read_tfvars(path, parser, result.problems)) is not None
        ]
        module.assign(root_variables(module, assigned + var_files, options.cli_vars))
        # Each resource and module call reports its own; what is left is the
        # root module's own inputs.
        resources = module.resources()
    except RecursionError:
        result.problems.append(
            Problem(
                name,
                "expression nested too deeply to evaluate: a variable's value or default, "
                "or a provider's configuration; the module was not scanned",
            )
        )
        resources = []
    return Document(name, "hcl", resources, only if only is not None else directory)


def _plan_document(path: Path, problems: list[Problem], reads: Reads) -> Document | None:
    display = display_path(path)
    try:
        content = path.read_bytes()
        reads.file(path, content)
        text = decode(content)
    except OSError as error:
        problems.append(Problem(display, error.strerror or str(error)))
        return None
    except UnicodeDecodeError as error:
        problems.append(Problem(display, f"not UTF-8 or UTF-16 text: {error.reason}"))
        return None
    try:
        entries = load_plan(text, display)
    except PlanError as error:
        problems.append(Problem(display, error.message, error.line, error.column))
        return None
    resources = [Resource(entry, entry["line"]) for entry in entries]
    return Document(display, "plan", resources, path)
