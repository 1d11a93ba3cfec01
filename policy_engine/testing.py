"""Run a policy set's `test_*` rules, like `opa test`, with optional line coverage."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from policy_engine.embedded import _eval_ref, compile_policy, new_engine
from policy_engine.errors import problem_from_engine_error
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


def run_tests(
    policy_set: PolicySet, *, coverage: bool = False, match: str | None = None
) -> TestReport:
    """Evaluate every `test_*` rule once; a test passes when it is true.
    Raises PolicyLoadError when the policy set doesn't load."""
    compiled = compile_policy(policy_set)
    engine = new_engine(policy_set)
    engine.set_gather_prints(True)
    engine.set_enable_coverage(coverage)
    report = TestReport()
    seen: set[str] = set()
    for shape in compiled.shapes:
        for rule in shape.rules:
            name = rule.path[0]
            ref = f"{shape.package_ref}.{name}"
            if rule.is_function or not name.startswith("test_") or ref in seen:
                continue
            seen.add(ref)
            if match is not None and match not in ref:
                continue
            report.results.append(_run_one(engine, ref, shape.file, rule.line))
    if coverage:
        report.coverage = _coverage(engine)
    return report


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
    message = "undefined" if value is None else f"evaluated to {json.dumps(value)}"
    return TestResult(ref, file, line, "FAIL", seconds, message, prints)


def _coverage(engine: Any) -> list[FileCoverage]:
    report = json.loads(engine.get_coverage_report_as_json())
    return [
        FileCoverage(f["path"], tuple(f["covered"]), tuple(f["not_covered"]))
        for f in report.get("files", [])
    ]
