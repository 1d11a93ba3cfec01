"""Measure the embedded Rego engine (regorus) against OPA's own v1 conformance cases,
and run the same cases on OPA's own Go evaluator (the oracle) beside it, so the two
columns show where regorus differs from OPA and that the cases mean what they say."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from importlib import metadata
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, ForkProcess
from pathlib import Path
from typing import Any, TypeAlias

import regorus
import yaml

from policy_engine.embedded import rego_order

JSON: TypeAlias = bool | int | float | str | list["JSON"] | dict[str, "JSON"] | None
Row: TypeAlias = dict[str, JSON]

ENV_VAR = "PORTCULLIS_CONFORMANCE_DIR"
# The shared corpus sits beside the project checkout: <root>/../shared/corpus/...
DEFAULT_CORPUS = (
    Path(__file__).resolve().parents[2].joinpath("shared", "corpus", "rego-conformance", "v1")
)
ENGINE_DIST = "gordon-to-regorus"
ORACLE_DIST = "opa-golib-python-bindings"
ENGINES = ("regorus", "opa")
CASE_TIMEOUT_S = 10.0

# A case is not applicable when it calls a builtin that DESIGN.md ("The policy engine") says
# the embedded engine lacks and that policies must therefore not use, even under a `with`
# mock: measuring it says nothing about policies that can run on both backends.
_FORBIDDEN = "policies must not use it (DESIGN.md, the policy engine)"
NOT_APPLICABLE_BUILTINS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("io.jwt.*", re.compile(r"(?<![\w.])io\.jwt\.")),
    ("crypto.*", re.compile(r"(?<![\w.])crypto\.")),
    ("rego.metadata.*", re.compile(r"(?<![\w.])rego\.metadata\.")),
    ("http.send", re.compile(r"(?<![\w.])http\.send\b")),
    ("net.cidr_merge", re.compile(r"(?<![\w.])net\.cidr_merge\b")),
    ("net.cidr_intersects", re.compile(r"(?<![\w.])net\.cidr_intersects\b")),
    ("net.cidr_contains_matches", re.compile(r"(?<![\w.])net\.cidr_contains_matches\b")),
)

# Cases OPA's own runner cannot pass either, keyed by (file, note): the defect's pattern in
# the modules (so a corrected case counts again) and the reason.
INVALID_CASES: dict[tuple[str, str], tuple[re.Pattern[str], str]] = {
    ("regexmatch/test-regexmatch-0855.yaml", "regexmatch/re_match"): (
        re.compile(r"^p \{", re.MULTILINE),
        "Rego v0 rule syntax (`p {` without `if`) in the v1 corpus; OPA compiles v1 cases "
        "as Rego v1 and rejects it before evaluating",
    ),
}

_LOCATION = re.compile(r"-->\s*(\S+)")
_MESSAGE = re.compile(r"^error:\s*(.*)$", re.MULTILINE)


class CorpusError(Exception):
    """The corpus is missing or malformed; nothing was measured."""


class Status(Enum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_APPLICABLE = "not applicable"
    INVALID = "invalid"


@dataclass(frozen=True)
class Case:
    """One OPA test case, as OPA's runner reads it."""

    folder: str
    file: str
    note: str
    modules: tuple[str, ...]
    query: str
    data: JSON = None
    input: JSON = None
    input_term: str | None = None
    want_result: tuple[Row, ...] | None = None
    want_error: str | None = None
    sort_bindings: bool = False


@dataclass(frozen=True)
class CaseResult:
    case: Case
    status: Status
    detail: str


@dataclass(frozen=True)
class FolderCount:
    folder: str
    passed: int
    applicable: int
    excluded: int


@dataclass(frozen=True)
class Report:
    corpus_dir: Path
    engine: str
    results: tuple[CaseResult, ...]

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status is status)

    @property
    def passed(self) -> int:
        return self.count(Status.PASSED)

    @property
    def applicable(self) -> int:
        return self.passed + self.count(Status.FAILED)

    def with_status(self, *statuses: Status) -> list[CaseResult]:
        return [r for r in self.results if r.status in statuses]

    def folders(self) -> dict[str, FolderCount]:
        counts: dict[str, FolderCount] = {}
        for folder in sorted({r.case.folder for r in self.results}):
            mine = [r for r in self.results if r.case.folder == folder]
            passed = sum(1 for r in mine if r.status is Status.PASSED)
            applicable = passed + sum(1 for r in mine if r.status is Status.FAILED)
            counts[folder] = FolderCount(folder, passed, applicable, len(mine) - applicable)
        return counts


# --- loading -----------------------------------------------------------------------------


def load_cases(corpus_dir: Path) -> list[Case]:
    if not corpus_dir.is_dir():
        raise CorpusError(f"conformance corpus not found: {corpus_dir} (set {ENV_VAR} or pass DIR)")
    files = sorted(p for p in corpus_dir.rglob("*") if p.suffix in (".yaml", ".yml"))
    if not files:
        raise CorpusError(f"no conformance cases (*.yaml) under {corpus_dir}")
    cases: list[Case] = []
    for path in files:
        rel = path.relative_to(corpus_dir).as_posix()
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise CorpusError(f"{rel}: unreadable: {str(exc).splitlines()[0]}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
            raise CorpusError(f"{rel}: expected a mapping with a `cases:` list")
        folder = rel.split("/")[0] if "/" in rel else "."
        cases.extend(_parse_case(folder, rel, raw) for raw in doc["cases"])
    return cases


def _parse_case(folder: str, rel: str, raw: object) -> Case:
    if not isinstance(raw, dict):
        raise CorpusError(f"{rel}: a case is not a mapping")
    note = str(raw.get("note", "?"))
    modules, query = raw.get("modules") or [], raw.get("query")
    if not isinstance(query, str) or not all(isinstance(m, str) for m in modules):
        raise CorpusError(f"{rel}: {note}: needs a string `query` and string `modules`")
    want = raw.get("want_result")
    if want is not None and not (
        isinstance(want, list) and all(isinstance(row, dict) for row in want)
    ):
        raise CorpusError(f"{rel}: {note}: `want_result` must be a list of bindings")
    code, text = raw.get("want_error_code"), raw.get("want_error")
    want_error = " / ".join(str(v) for v in (code, text) if v is not None) or None
    return Case(
        folder=folder,
        file=rel,
        note=note,
        modules=tuple(modules),
        query=query,
        data=raw.get("data"),
        input=raw.get("input"),
        input_term=raw.get("input_term"),
        want_result=None if want is None else tuple(want),
        want_error=want_error,
        sort_bindings=bool(raw.get("sort_bindings", False)),
    )


def classify(case: Case) -> CaseResult | None:
    """The exclusion for a case, or None when it is applicable."""
    defect = INVALID_CASES.get((case.file, case.note))
    if defect is not None and any(defect[0].search(module) for module in case.modules):
        return CaseResult(case, Status.INVALID, defect[1])
    if case.want_result is None and case.want_error is None:
        return CaseResult(case, Status.INVALID, "no want_result/want_error: OPA rejects it too")
    source = "\n".join((*case.modules, case.query))
    for name, pattern in NOT_APPLICABLE_BUILTINS:
        if pattern.search(source):
            return CaseResult(case, Status.NOT_APPLICABLE, f"uses {name}; {_FORBIDDEN}")
    return None


# --- running one case --------------------------------------------------------------------


def _test_sleep(duration: Any) -> None:
    # OPA's runner registers test.sleep for the `time caching` case; do the same.
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", str(duration))
    if match:
        time.sleep(float(match[1]) / (1000 if match[2] == "ms" else 1))


def _short_error(exc: BaseException) -> str:
    text = str(exc)
    message = _MESSAGE.search(text)
    if message is None:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return f"{type(exc).__name__}: {lines[0] if lines else ''}"
    location = _LOCATION.search(text)
    return f"{location[1]}: {message[1]}" if location else message[1]


def _set_input(engine: Any, case: Case) -> None:
    if case.input_term is not None:
        try:
            engine.set_input_json(json.dumps(json.loads(case.input_term)))
        except json.JSONDecodeError:
            # A Rego term that is not JSON (a set, say): let a scratch engine evaluate it.
            rows = regorus.Engine().eval_query(f"x := {case.input_term}")["result"]
            engine.set_input(rows[0]["bindings"]["x"])
    elif case.input is not None:
        engine.set_input_json(json.dumps(case.input))


def run_case(case: Case) -> tuple[bool, str]:
    """Run one case on a fresh regorus engine: (passed, why). Never raises."""
    try:
        engine = regorus.Engine()
        with contextlib.suppress(Exception):  # an engine with its own test.sleep keeps it
            engine.add_extension("test.sleep", 1, _test_sleep)
        for i, module in enumerate(case.modules):
            engine.add_policy(f"test-{i}.rego", module)
        if case.data is not None:
            engine.add_data_json(json.dumps(case.data))
        _set_input(engine, case)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a Rust panic arrives as a BaseException
        return False, f"load failed: {_short_error(exc)}"
    try:
        raw = engine.eval_query_as_json(case.query)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        # Error text and codes are not matched: regorus words its errors differently and has
        # no OPA error codes. An expected error is any error raised by evaluation (not by
        # loading), except the engine not knowing a builtin, which is no answer at all.
        error = _short_error(exc)
        if case.want_error is None:
            return False, f"raised {error}; expected {_show(case.want_result)}"
        if "could not find function" in error:
            return False, f"engine lacks a builtin ({error}); expected {case.want_error}"
        return True, f"raised {error}"
    if case.want_error is not None:
        return False, f"expected error {case.want_error}; got {_show(raw)}"
    try:
        return _compare(case, raw)
    except Exception as exc:  # e.g. a YAML value with no JSON form
        return False, f"cannot compare: {exc!r}"


def run_case_on_opa(case: Case) -> tuple[bool, str]:
    """Run one case on a fresh OPA engine (OPA's own Go evaluator): (passed, why)."""
    from opa_bindings.engine import OpaEngine, OpaError

    try:
        with OpaEngine() as engine:
            engine.register_function("test.sleep", _test_sleep)
            for i, module in enumerate(case.modules):
                engine.add_policy(f"test-{i}.rego", module)
            if case.data is not None:
                engine.add_data(case.data)
            document: Any = case.input
            if case.input_term is not None:
                (bindings,) = engine.eval_query(f"x := {case.input_term}")
                document = bindings["x"]
            rows = engine.eval_query(case.query, document)
    except OpaError as exc:
        error = f"{exc.code}: {exc.message.splitlines()[0] if exc.message else ''}"
        if case.want_error is None:
            return False, f"raised {error}; expected {_show(case.want_result)}"
        return True, f"raised {error}"
    if case.want_error is not None:
        return False, f"expected error {case.want_error}; got {_show(rows)}"
    return _compare(case, json.dumps({"result": [{"bindings": row} for row in rows]}))


def _compare(case: Case, raw: str) -> tuple[bool, str]:
    """Compare like OPA's runner: rows as a set, values as JSON, arrays in order.

    A set arrives as a JSON array in the engine's sort order; OPA's JSON for a set is its
    sorted array too. `sort_bindings` sorts array bindings of the result before comparing.
    """
    try:
        doc = json.loads(raw)
        got: list[Row] = [dict(row.get("bindings") or {}) for row in doc.get("result", [])]
    except (ValueError, AttributeError, TypeError) as exc:
        return False, f"unreadable engine output ({exc}): {_show(raw)}"
    if case.sort_bindings:
        got = [
            {k: sorted(v, key=rego_order) if isinstance(v, list) else v for k, v in row.items()}
            for row in got
        ]
    want = list(case.want_result or ())
    if {_canonical(r) for r in want} == {_canonical(r) for r in got}:
        return True, ""
    return False, f"expected {_show(want)}; got {_show(got)}"


def _normal(value: JSON) -> JSON:
    # OPA compares numbers by value (1 == 1.0); JSON text would not.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


def _canonical(row: Row) -> str:
    return json.dumps(_normal(row), sort_keys=True, separators=(",", ":"))


def _show(value: object, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- running the corpus ------------------------------------------------------------------


def _serve(conn: Connection, cases: Sequence[Case]) -> None:
    # The engine writes planner notes to stderr; the report is this script's output.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    # A crash is reported as that case's failure; a fault dump would only be noise.
    faulthandler.disable()
    while (index := conn.recv()) is not None:
        conn.send(run_case(cases[index]))


class _Worker:
    """A forked process that runs cases, so a crash or hang costs one case, not the run."""

    def __init__(self, context: ForkContext, cases: Sequence[Case]) -> None:
        self.conn, child = context.Pipe()
        self.process: ForkProcess = context.Process(target=_serve, args=(child, cases))
        self.process.start()
        child.close()

    def run(self, index: int, timeout: float) -> tuple[bool, str]:
        """The case's outcome; a worker that dies or hangs is stopped (see `alive`)."""
        try:
            self.conn.send(index)
            if not self.conn.poll(timeout):
                self.stop()
                return False, f"no answer within {timeout:g}s (engine hung); worker killed"
            outcome: tuple[bool, str] = self.conn.recv()
            return outcome
        except (EOFError, OSError):
            self.stop()
            code = self.process.exitcode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            return False, f"engine process died ({how})"

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.process.join(1)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


def run_conformance(
    corpus_dir: Path, timeout: float = CASE_TIMEOUT_S, *, engine: str = "regorus"
) -> Report:
    """Run every applicable case, each on its own engine; raise CorpusError if unreadable.

    `engine="opa"` runs them on OPA's own Go evaluator, in this process: OPA reports
    errors instead of crashing, and a forked child must not inherit Go's runtime."""
    cases = load_cases(corpus_dir)
    results: list[CaseResult | None] = [classify(case) for case in cases]
    if engine == "opa":
        for index, case in enumerate(cases):
            if results[index] is None:
                passed, detail = run_case_on_opa(case)
                status = Status.PASSED if passed else Status.FAILED
                results[index] = CaseResult(case, status, detail)
        done = tuple(r for r in results if r is not None)
        return Report(corpus_dir=corpus_dir, engine=_version(ORACLE_DIST), results=done)
    context = multiprocessing.get_context("fork")
    worker: _Worker | None = None
    try:
        for index, case in enumerate(cases):
            if results[index] is not None:
                continue
            if worker is None:
                worker = _Worker(context, cases)
            passed, detail = worker.run(index, timeout)
            if not worker.alive:
                worker = None
            results[index] = CaseResult(case, Status.PASSED if passed else Status.FAILED, detail)
    finally:
        if worker is not None:
            worker.stop()
    done = tuple(r for r in results if r is not None)
    return Report(corpus_dir=corpus_dir, engine=_version(ENGINE_DIST), results=done)


def _version(dist: str) -> str:
    try:
        return f"{dist} {metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return f"{dist} (version unknown)"


# --- command line ------------------------------------------------------------------------


def format_report(report: Report, verbose: bool = False, oracle: Report | None = None) -> list[str]:
    """The report; with `oracle` (the same corpus on OPA) a second column per folder."""
    lines = [f"{report.engine} on {report.corpus_dir}"]
    if oracle is not None:
        lines.append(f"beside {oracle.engine} (OPA's own evaluator)")
    for status in (Status.NOT_APPLICABLE, Status.INVALID):
        excluded = report.with_status(status)
        if excluded:
            lines.append(f"{status.value} ({len(excluded)}):")
            lines += [f"  {r.case.note} [{r.case.file}]: {r.detail}" for r in excluded]
    oracle_folders = oracle.folders() if oracle is not None else {}
    width = max((len(name) for name in report.folders()), default=0) + 1
    if oracle is not None:
        lines.append(f"{'folder':<{width}} {'regorus':>9} {'opa':>9}")
    for count in report.folders().values():
        extra = f"  ({count.excluded} excluded)" if count.excluded else ""
        column = f"{count.passed}/{count.applicable}"
        if count.folder in oracle_folders:
            theirs = oracle_folders[count.folder]
            column = f"{column:>9} {f'{theirs.passed}/{theirs.applicable}':>9}"
            lines.append(f"{count.folder + ':':<{width}} {column}{extra}")
        else:
            lines.append(f"{count.folder}: {column}{extra}")
    excluded_total = len(report.results) - report.applicable
    lines.append(
        f"total: {report.passed}/{report.applicable} applicable cases passed "
        f"({len(report.results)} in corpus, {excluded_total} excluded)"
    )
    if oracle is not None:
        lines.append(f"total on OPA: {oracle.passed}/{oracle.applicable} applicable cases passed")
    for name, shown in (("", report), ("on OPA ", oracle)):
        failed = shown.with_status(Status.FAILED) if shown is not None else []
        if verbose and failed:
            lines.append(f"failed {name}({len(failed)}):")
            lines += [f"  {r.case.note} [{r.case.file}]: {r.detail}" for r in failed]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "corpus_dir",
        nargs="?",
        type=Path,
        help=f"OPA v1 conformance cases (default: ${ENV_VAR} or {DEFAULT_CORPUS})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="explain each failing case")
    args = parser.parse_args(argv)
    corpus_dir: Path = args.corpus_dir or Path(os.environ.get(ENV_VAR) or DEFAULT_CORPUS)
    try:
        report = run_conformance(corpus_dir)
        oracle = run_conformance(corpus_dir, engine="opa") if _has_oracle() else None
    except CorpusError as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return 2
    if oracle is None:
        print(f"conformance: {ORACLE_DIST} is not installed: regorus only", file=sys.stderr)
    print("\n".join(format_report(report, verbose=args.verbose, oracle=oracle)))
    return 0


def _has_oracle() -> bool:
    try:
        import opa_bindings  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
