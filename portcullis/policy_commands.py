"""`portcullis policy test|check|eval|bundle` and the policy part of the demo."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iac_scanner.policy import rule_package_problems
from policy_engine import (
    EvaluationError,
    PolicyError,
    PolicyLoadError,
    Problem,
    UndefinedPath,
    UndefinedResult,
    compile_policy,
    load_policy_set,
    open_engine,
)
from policy_engine.embedded import CompiledPolicy, EmbeddedEngine, as_json
from policy_engine.policy_set import (
    BUNDLE_SUFFIXES,
    bundle_roots,
    is_policy_file,
    load_policy_files,
)
from policy_engine.portability import portability_warnings
from policy_engine.testing import CaseResult, TestReport, run_tests
from portcullis import output_options
from portcullis.wording import counted

RULE = "-" * 80
USAGE_ERROR = 2


def _fail(problems: Sequence[Problem | str] | str) -> int:
    lines = [problems] if isinstance(problems, str) else [str(p) for p in problems]
    for line in lines:
        print(line, file=sys.stderr)
    return USAGE_ERROR


# A policy set as the user named it: a directory or bundle, or files loaded as one.
Source = str | tuple[str, ...]


def _policy_sources(args: argparse.Namespace) -> list[Source]:
    """The policy sets the paths name: each directory or bundle its own, and the
    files among them (`x.rego x_test.rego data.json`) one set together, in the
    place of the first, as `opa test` loads the files it is given."""
    sources: list[Source] = []
    files: list[str] = []
    files_at = 0
    for path in list(args.paths) or [args.default_policy()]:
        named = Path(path)
        if not _policy_file(named):
            sources.append(path)
        else:
            files_at = files_at if files else len(sources)
            files.append(path)
    if files:
        sources.insert(files_at, tuple(files))
    return sources


def _policy_file(path: Path) -> bool:
    """Whether the path is meant as one file of a policy set: a module or data file
    by its name, or any other file (named as not one); not a directory, a bundle or
    a path that names nothing."""
    if path.is_dir() or path.name.endswith(BUNDLE_SUFFIXES):
        return False
    return is_policy_file(path) or path.exists()


def _label(source: Source) -> str:
    return source if isinstance(source, str) else " ".join(source)


class _Refused(Exception):
    """A policy set `portcullis scan` would refuse: the lines it prints."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines


def _compile(source: Source) -> CompiledPolicy:
    """A policy set as every command loads it, with its rule packages as `scan`
    reads them: what the scanner refuses (a severity it doesn't know, one rule id
    twice, deny without metadata) is refused here too, so that a policy
    repository's CI can't pass a set every Terraform pipeline would refuse.
    Raises PolicyLoadError, or _Refused with the scanner's own messages."""
    compiled = compile_policy(
        load_policy_set(source) if isinstance(source, str) else load_policy_files(source)
    )
    refused = rule_package_problems(compiled)
    if refused:
        raise _Refused(refused)
    return compiled


def test(args: argparse.Namespace) -> int:
    failed = total = unmatched = 0
    for source in _policy_sources(args):
        try:
            report = run_tests(
                _compile(source), coverage=args.coverage, match=args.match, engine=args.engine
            )
        except PolicyLoadError as error:
            return _fail(error.problems)
        except _Refused as refused:
            return _fail(refused.lines)
        except PolicyError as error:  # the OPA engine isn't installed, or --coverage with it
            return _fail(str(error))
        _print_test_report(report, verbose=args.verbose)
        failed += len(report.failed)
        total += len(report.results)
        unmatched += report.unmatched
    if total == 0:
        # As `opa test --fail-on-empty`: a --run that selects nothing (a typo, a
        # renamed test) fails CI rather than passing it with nothing tested.
        if unmatched:
            print(
                f"no tests found: --run {args.match!r} matched none of the "
                f"{counted(unmatched, 'test')} (it is looked for in names as -v prints them)",
                file=sys.stderr,
            )
        else:
            print("no tests found", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _print_test_report(report: TestReport, *, verbose: bool) -> None:
    current_file = None
    listed = False
    for result in report.results:
        if not verbose and result.passed:
            continue
        listed = True
        if result.file != current_file:
            current_file = result.file
            print(f"{result.file}:")
        if result.skipped:  # as `opa test`: listed, never run
            print(f"{result.ref}: {result.outcome}")
            continue
        millis = result.seconds * 1000
        print(f"{result.ref}: {result.outcome} ({millis:.2f}ms)")
        _print_cases(result.cases, verbose=verbose, depth=1)
        if not result.passed:
            print(f"  {result.file}:{result.line}: {result.message}")
        if result.prints and (verbose or not result.passed):
            for line in result.prints:
                print(f"  {line}")
    passed, failed, skipped = report.tally()
    total = passed + failed + skipped
    if listed:  # as `opa test`: the rule parts listed tests from the counts, if any were
        print(RULE)
    for label, count in (("PASS", passed), ("FAIL", failed), ("SKIPPED", skipped)):
        if count:
            print(f"{label}: {count}/{total}")
    if report.coverage:
        print(RULE)
        print("Coverage (lines covered / lines with code):")
        for file in sorted(report.coverage, key=lambda f: f.file):
            covered = len(file.covered)
            lines = covered + len(file.not_covered)
            print(f"  {file.percent:6.1f}%  {covered:4}/{lines:<4} {file.file}")
        all_covered = sum(len(f.covered) for f in report.coverage)
        all_lines = all_covered + sum(len(f.not_covered) for f in report.coverage)
        print(f"  {100.0 * all_covered / max(all_lines, 1):6.1f}%  total")


def _print_cases(cases: tuple[CaseResult, ...], *, verbose: bool, depth: int) -> None:
    """A test's cases under it, as `opa test` lists them: the failing ones, and
    with -v all of them."""
    for case in cases:
        if verbose or not case.passed:
            print(f"{'  ' * depth}{case.name}: {'PASS' if case.passed else 'FAIL'}")
            _print_cases(case.cases, verbose=verbose, depth=depth + 1)


def check(args: argparse.Namespace) -> int:
    problems: list[Problem | str] = []
    for source in _policy_sources(args):
        try:
            compiled = _compile(source)
        except PolicyLoadError as error:
            problems.extend(error.problems)
            continue
        except _Refused as refused:
            problems.extend(refused.lines)
            continue
        modules = len(compiled.policy_set.modules)
        rules = len(compiled.rule_refs())
        warnings = portability_warnings(compiled.policy_set)
        on_vm = _vm_warnings(compiled)
        unset = _unset_input_warnings(compiled)
        for warning in sorted(warnings + on_vm + unset, key=lambda p: (p.file, p.line or 0)):
            print(warning, file=sys.stderr)
        note = f", {counted(len(warnings), 'portability warning')}" if warnings else ""
        note += f", {counted(len(on_vm), 'compiled-VM warning')}" if on_vm else ""
        note += f", {counted(len(unset), 'never-set input warning')}" if unset else ""
        counts = f"{counted(modules, 'module')}, {counted(rules, 'rule')} evaluated"
        print(f"{_label(source)}: OK ({counts}{note})")
    return _fail(problems) if problems else 0


def _vm_warnings(compiled: CompiledPolicy) -> list[Problem]:
    """Where the gateway's decision (its package, or one it reads) would be
    answered otherwise on the compiled VM (policy_engine/vm_divergence.py): the
    gateway then decides on the interpreter."""
    from gateway.policy.decision import DECISION_REF  # the gateway, only when asked

    return compiled.vm_divergences_reached([DECISION_REF])


def _unset_input_warnings(compiled: CompiledPolicy) -> list[Problem]:
    """Where the gateway's decision (its package, or one it reads) reads an input
    path the gateway never sets (gateway/policy/input_contract.py)."""
    from gateway.policy.input_contract import unprovided_reads  # the gateway, only when asked

    return unprovided_reads(compiled)


def read_input(name: str | None) -> Any:
    """The JSON input document of `policy eval`; raises ValueError naming the problem."""
    if name is None:
        return {}
    label = "stdin" if name == "-" else name
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise ValueError(f"{label}: no such input file") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{label}: can't read input: {error}") from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{label}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}"
        ) from error


def evaluate(args: argparse.Namespace) -> int:
    try:
        document = read_input(args.input_file)
    except ValueError as error:
        return _fail(str(error))
    try:
        engine = open_engine(args.policy or args.default_policy(), gather_prints=True)
    except PolicyLoadError as error:
        return _fail(error.problems)
    except ValueError as error:
        return _fail(str(error))
    try:
        value = asyncio.run(_evaluate_once(engine, args.query, document))
    except UndefinedPath as error:
        return _fail(str(error))
    except UndefinedResult as error:
        print(str(error), file=sys.stderr)
        return 1
    except EvaluationError as error:
        return _fail(str(error))
    print(json.dumps(as_json(value), indent=2, sort_keys=True))
    return 0


async def _evaluate_once(engine: Any, query: str, document: Any) -> Any:
    try:
        return await engine.evaluate(query, document)
    finally:
        # As `opa eval`: print() output goes to stderr, stdout holds the answer only.
        if isinstance(engine, EmbeddedEngine):
            for line in engine.take_prints():
                print(line, file=sys.stderr)
        await engine.close()


def write_bundle(compiled: CompiledPolicy, root: Path, output: Path, revision: str) -> None:
    """An OPA bundle: the modules at their relative paths, all data in one data.json,
    and roots that hold every package and data key (OPA refuses a bundle otherwise)."""
    policy_set = compiled.policy_set
    packages = [shape.package for shape in compiled.shapes]
    manifest = {"revision": revision, "roots": bundle_roots(packages, policy_set.data)}
    with tarfile.open(output, "w:gz") as archive:

        def add(name: str, content: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(content))

        add(".manifest", json.dumps(manifest, indent=2).encode())
        add("data.json", json.dumps(policy_set.data, indent=2, sort_keys=True).encode())
        for module in policy_set.modules:
            add(str(Path(module.file).relative_to(root)), module.text.encode())


def bundle(args: argparse.Namespace) -> int:
    root = Path(args.path or args.default_policy())
    if not root.is_dir():
        return _fail(f"{root}: no such policy directory")
    try:
        compiled = compile_policy(load_policy_set(root))
    except PolicyLoadError as error:
        return _fail(error.problems)
    policy_set = compiled.policy_set
    revision = args.revision or policy_set.revision
    output = Path(args.output)
    if output.is_dir():
        return _fail(f"{output}: is a directory (-o names the bundle file, e.g. bundle.tar.gz)")
    try:  # a failed write leaves no half bundle to deploy
        with output_options.replacing(output) as partial:
            write_bundle(compiled, root, partial, revision)
    except OSError as error:
        return _fail(f"{output}: the bundle can't be written: {error.strerror or error}")
    modules = counted(len(policy_set.modules), "module")
    print(f"{args.output}: bundle of {modules}, revision {revision}")
    return 0
