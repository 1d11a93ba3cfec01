"""Run a policy set's `test_*` rules, like `opa test`, with optional line coverage."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from policy_engine.embedded import _eval_ref, as_json, compile_policy, new_engine
from policy_engine.errors import (
    EvaluationError,
    PolicyError,
    PolicyLoadError,
    problem_from_engine_error,
)
from policy_engine.opa_golib import UNDEFINED, GoOpaEngine
from policy_engine.policy_set import Module, PolicySet
from policy_engine.rego_ast import Rule


@dataclass(frozen=True)
class TestResult:
    ref: str
    file: str
    line: int
    outcome: str  # PASS, FAIL or ERROR
    seconds: float
    message: str = ""
    prints: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.outcome == "PASS"


@dataclass(frozen=True)
class FileCoverage:
    file: str
    covered: tuple[int, ...]
    not_covered: tuple[int, ...]

    @property
    def percent(self) -> float:
        total = len(self.covered) + len(self.not_covered)
        return 100.0 if total == 0 else 100.0 * len(self.covered) / total


@dataclass
class TestReport:
    results: list[TestResult] = field(default_factory=list)
    coverage: list[FileCoverage] = field(default_factory=list)

    @property
    def failed(self) -> list[TestResult]:
        return [r for r in self.results if not r.passed]


ENGINES = ("regorus", "opa")


@dataclass(frozen=True)
class _Test:
    """One definition of a test rule. A name defined more than once is run once a
    definition, as `opa test` runs it: the first keeps the name, the next are
    `test_x#01`, `test_x#02`, ... and each runs alone, in a copy of the policy set
    (`alone`) with the name's other definitions blanked out."""

    name: str
    ref: str
    file: str
    line: int
    alone: PolicySet | None = None


def run_tests(
    policy_set: PolicySet,
    *,
    coverage: bool = False,
    match: str | None = None,
    engine: str = "regorus",
) -> TestReport:
    """Evaluate every `test_*` rule once; a test passes when it is true. A test
    defined more than once runs once a definition, named as `opa test` names them
    (`data.p.test_x#01` for the second); `match` is looked for in those names.

    ``engine="opa"`` runs them on OPA's own Go evaluator (policy_engine.opa_golib,
    raising OracleUnavailable when it isn't installed), to check that a policy set
    behaves the same on a real OPA. Raises PolicyLoadError when the policy set
    doesn't load."""
    compiled = compile_policy(policy_set)
    definitions: dict[str, list[tuple[str, Rule]]] = {}
    for shape in compiled.shapes:
        for rule in shape.rules:
            if not rule.is_function and rule.path[0].startswith("test_"):
                ref = f"{shape.package_ref}.{rule.path[0]}"
                definitions.setdefault(ref, []).append((shape.file, rule))
    tests: list[_Test] = []
    for shape in compiled.shapes:  # in source order
        for rule in shape.rules:
            ref = f"{shape.package_ref}.{rule.path[0]}"
            defined = definitions.get(ref, [])
            if (shape.file, rule) not in defined:
                continue
            index = defined.index((shape.file, rule))
            name = f"{ref}#{index:02d}" if index else ref
            if match is not None and match not in name:
                continue
            others = defined[:index] + defined[index + 1 :]
            alone = _without(policy_set, others) if others else None
            tests.append(_Test(name, ref, shape.file, rule.line, alone))
    if engine == "opa":
        if coverage:
            raise PolicyError("--coverage is measured on the embedded engine only")
        return _run_on_opa(GoOpaEngine(policy_set), tests)
    if engine != "regorus":
        raise PolicyError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    shared = _regorus_engine(policy_set, coverage)
    engines = [shared]
    report = TestReport()
    for test in tests:
        if test.alone is None:
            report.results.append(_run_one(shared, test))
            continue
        try:
            alone = _regorus_engine(test.alone, coverage)
        except (RuntimeError, ValueError) as error:
            problem = problem_from_engine_error(error, f"{test.file}:{test.line}")
            report.results.append(_error(test, 0.0, str(problem)))
            continue
        engines.append(alone)
        report.results.append(_run_one(alone, test))
    if coverage:
        report.coverage = _coverage(engines)
    return report


def _without(policy_set: PolicySet, rules: list[tuple[str, Rule]]) -> PolicySet:
    """`policy_set` with these rules blanked out: each character but line breaks
    made a space, so every other rule keeps its line and column."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for file, rule in rules:
        spans.setdefault(file, []).append((rule.start, rule.end))
    modules = []
    for module in policy_set.modules:
        raw = module.text.encode()
        # From the end, so that a blanked multi-byte character moves no span not yet blanked.
        for start, end in sorted(spans.get(module.file, []), reverse=True):
            blank = re.sub(r"[^\r\n]", " ", raw[start:end].decode("utf-8", "replace"))
            raw = raw[:start] + blank.encode() + raw[end:]
        modules.append(Module(module.file, raw.decode()))
    return dataclasses.replace(policy_set, modules=modules)


def _regorus_engine(policy_set: PolicySet, coverage: bool) -> Any:
    engine = new_engine(policy_set)
    engine.set_gather_prints(True)
    engine.set_enable_coverage(coverage)
    return engine


def _run_on_opa(engine: GoOpaEngine, tests: list[_Test]) -> TestReport:
    """Each test package is evaluated as one document (OPA prepares every query
    anew, about 0.2 s each); a package that errors is retried test by test. A test
    whose name is defined more than once runs alone, on its own copy of the set."""
    packages: dict[str, list[_Test]] = {}
    for test in tests:
        if test.alone is None:
            packages.setdefault(test.ref.rsplit(".", 1)[0], []).append(test)
    done: dict[str, TestResult] = {}
    for package, members in packages.items():
        started = time.perf_counter()
        try:
            document = engine.value(package)
        except EvaluationError:
            continue  # each test of the package is evaluated alone below
        share = (time.perf_counter() - started) / len(members)
        if isinstance(document, dict):
            for test in members:
                value = document.get(test.ref.rsplit(".", 1)[1], UNDEFINED)
                done[test.name] = _opa_result(test, value, share)
    report = TestReport()
    for test in tests:
        if test.name in done:
            report.results.append(done[test.name])
            continue
        started = time.perf_counter()
        try:
            on = engine if test.alone is None else GoOpaEngine(test.alone)
            value = on.value(test.ref)
        except (EvaluationError, PolicyLoadError) as error:
            report.results.append(_error(test, time.perf_counter() - started, str(error)))
            continue
        report.results.append(_opa_result(test, value, time.perf_counter() - started))
    return report


def _opa_result(test: _Test, value: Any, seconds: float) -> TestResult:
    if value is True:
        return TestResult(test.name, test.file, test.line, "PASS", seconds)
    message = "undefined" if value is UNDEFINED else f"evaluated to {json.dumps(value)}"
    return TestResult(test.name, test.file, test.line, "FAIL", seconds, message)


def _error(test: _Test, seconds: float, message: str, prints: tuple[str, ...] = ()) -> TestResult:
    return TestResult(test.name, test.file, test.line, "ERROR", seconds, message, prints)


def _run_one(engine: Any, test: _Test) -> TestResult:
    started = time.perf_counter()
    try:
        value = _eval_ref(engine, test.ref)
    except (RuntimeError, ValueError, TypeError) as error:
        problem = problem_from_engine_error(error, f"{test.file}:{test.line}")
        seconds = time.perf_counter() - started
        return _error(test, seconds, str(problem), tuple(engine.take_prints()))
    seconds = time.perf_counter() - started
    prints = tuple(engine.take_prints())
    if value is True:
        return TestResult(test.name, test.file, test.line, "PASS", seconds, prints=prints)
    message = "undefined" if value is None else f"evaluated to {json.dumps(as_json(value))}"
    return TestResult(test.name, test.file, test.line, "FAIL", seconds, message, prints)


def _coverage(engines: list[Any]) -> list[FileCoverage]:
    """Line coverage over every engine that ran tests: a line is covered when any
    of them covered it (a test run alone ran on its own engine)."""
    covered: dict[str, set[int]] = {}
    not_covered: dict[str, set[int]] = {}
    for engine in engines:
        report = json.loads(engine.get_coverage_report_as_json())
        for f in report.get("files", []):
            covered.setdefault(f["path"], set()).update(f["covered"])
            not_covered.setdefault(f["path"], set()).update(f["not_covered"])
    return [
        FileCoverage(path, tuple(sorted(lines)), tuple(sorted(not_covered[path] - lines)))
        for path, lines in covered.items()
    ]
