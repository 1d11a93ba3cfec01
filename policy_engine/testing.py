"""Run a policy set's `test_*` rules, like `opa test`, with optional line coverage."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from policy_engine.embedded import _eval_ref, as_json, compile_policy, new_engine
from policy_engine.errors import EvaluationError, PolicyError, problem_from_engine_error
from policy_engine.opa_golib import UNDEFINED, GoOpaEngine
from policy_engine.policy_set import PolicySet


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


def run_tests(
    policy_set: PolicySet,
    *,
    coverage: bool = False,
    match: str | None = None,
    engine: str = "regorus",
) -> TestReport:
    """Evaluate every `test_*` rule once; a test passes when it is true.

    ``engine="opa"`` runs them on OPA's own Go evaluator (policy_engine.opa_golib,
    raising OracleUnavailable when it isn't installed), to check that a policy set
    behaves the same on a real OPA. Raises PolicyLoadError when the policy set
    doesn't load."""
    compiled = compile_policy(policy_set)
    tests: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    for shape in compiled.shapes:
        for rule in shape.rules:
            name = rule.path[0]
            ref = f"{shape.package_ref}.{name}"
            if rule.is_function or not name.startswith("test_") or ref in seen:
                continue
            seen.add(ref)
            if match is None or match in ref:
                tests.append((ref, shape.file, rule.line))
    if engine == "opa":
        if coverage:
            raise PolicyError("--coverage is measured on the embedded engine only")
        return _run_on_opa(GoOpaEngine(policy_set), tests)
    if engine != "regorus":
        raise PolicyError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    regorus_engine = new_engine(policy_set)
    regorus_engine.set_gather_prints(True)
    regorus_engine.set_enable_coverage(coverage)
    report = TestReport([_run_one(regorus_engine, *test) for test in tests])
    if coverage:
        report.coverage = _coverage(regorus_engine)
    return report


def _run_on_opa(engine: GoOpaEngine, tests: list[tuple[str, str, int]]) -> TestReport:
    """Each test package is evaluated as one document (OPA prepares every query
    anew, about 0.2 s each); a package that errors is retried test by test."""
    report = TestReport()
    packages: dict[str, list[tuple[str, str, int]]] = {}
    for test in tests:
        packages.setdefault(test[0].rsplit(".", 1)[0], []).append(test)
    for package, members in packages.items():
        started = time.perf_counter()
        try:
            document = engine.value(package)
        except EvaluationError:
            document = None
        share = (time.perf_counter() - started) / len(members)
        for ref, file, line in members:
            if isinstance(document, dict):
                value = document.get(ref.rsplit(".", 1)[1], UNDEFINED)
                report.results.append(_opa_result(ref, file, line, value, share))
                continue
            started = time.perf_counter()
            try:
                value = engine.value(ref)
            except EvaluationError as error:
                seconds = time.perf_counter() - started
                report.results.append(TestResult(ref, file, line, "ERROR", seconds, str(error)))
                continue
            report.results.append(
                _opa_result(ref, file, line, value, time.perf_counter() - started)
            )
    return report


def _opa_result(ref: str, file: str, line: int, value: Any, seconds: float) -> TestResult:
    if value is True:
        return TestResult(ref, file, line, "PASS", seconds)
    message = "undefined" if value is UNDEFINED else f"evaluated to {json.dumps(value)}"
    return TestResult(ref, file, line, "FAIL", seconds, message)


def _run_one(engine: Any, ref: str, file: str, line: int) -> TestResult:
    started = time.perf_counter()
    try:
        value = _eval_ref(engine, ref)
    except (RuntimeError, ValueError, TypeError) as error:
        return TestResult(
            ref,
            file,
            line,
            "ERROR",
            time.perf_counter() - started,
            str(problem_from_engine_error(error, f"{file}:{line}")),
            tuple(engine.take_prints()),
        )
    seconds = time.perf_counter() - started
    prints = tuple(engine.take_prints())
    if value is True:
        return TestResult(ref, file, line, "PASS", seconds, prints=prints)
    message = "undefined" if value is None else f"evaluated to {json.dumps(as_json(value))}"
    return TestResult(ref, file, line, "FAIL", seconds, message, prints)


def _coverage(engine: Any) -> list[FileCoverage]:
    report = json.loads(engine.get_coverage_report_as_json())
    return [
        FileCoverage(f["path"], tuple(f["covered"]), tuple(f["not_covered"]))
        for f in report.get("files", [])
    ]
