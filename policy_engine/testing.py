"""Run a policy set's `test_*` rules, like `opa test`, with optional line coverage."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import regorus

from policy_engine.embedded import CompiledPolicy, _eval_ref, as_json, compile_policy, new_engine
from policy_engine.errors import (
    EvaluationError,
    PolicyError,
    PolicyLoadError,
    problem_from_engine_error,
)
from policy_engine.opa_golib import UNDEFINED, GoOpaEngine
from policy_engine.policy_set import Module, PolicySet
from policy_engine.rego_ast import SKIP_TEST_PREFIX, Rule


@dataclass(frozen=True)
class CaseResult:
    """One case of a test whose name has a computed part (`test_x[name]`), as
    `opa test` reports it: the key, and its own cases when it has more parts."""

    name: str
    passed: bool
    cases: tuple[CaseResult, ...] = ()

    def leaves(self) -> list[CaseResult]:
        if not self.cases:
            return [self]
        return [leaf for case in self.cases for leaf in case.leaves()]


@dataclass(frozen=True)
class TestResult:
    ref: str
    file: str
    line: int
    outcome: str  # PASS, FAIL, ERROR or SKIPPED
    seconds: float
    message: str = ""
    prints: tuple[str, ...] = ()
    cases: tuple[CaseResult, ...] = ()

    @property
    def passed(self) -> bool:
        return self.outcome == "PASS"

    @property
    def skipped(self) -> bool:
        return self.outcome == "SKIPPED"


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
    # Tests the policy set has that `match` left out, so "none matched" can say of how many.
    unmatched: int = 0

    @property
    def failed(self) -> list[TestResult]:
        return [r for r in self.results if not r.passed and not r.skipped]

    def tally(self) -> tuple[int, int, int]:
        """(passed, failed, skipped) as `opa test` counts them: a test with cases
        counts each case (the innermost ones), an error counts as a failure."""
        passed = failed = skipped = 0
        for result in self.results:
            if result.skipped:
                skipped += 1
            elif result.cases and result.outcome != "ERROR":
                leaves = [leaf for case in result.cases for leaf in case.leaves()]
                passed += sum(leaf.passed for leaf in leaves)
                failed += sum(not leaf.passed for leaf in leaves)
            elif result.passed:
                passed += 1
            else:
                failed += 1
        return passed, failed, skipped


ENGINES = ("regorus", "opa")


@dataclass(frozen=True)
class _Test:
    """One definition of a test rule. A name defined more than once is run once a
    definition, as `opa test` runs it: the first keeps the name, the next are
    `test_x#01`, `test_x#02`, ... and each runs alone, in a copy of the policy set
    (`alone`) with the name's other definitions blanked out."""

    name: str
    ref: str
    package: str
    path: tuple[str, ...]
    file: str
    line: int
    alone: PolicySet | None = None
    skip: bool = False
    dynamic: bool = False  # its name has a computed part: a result per case
    # For a test with a computed part: a copy of the policy set with a rule at
    # _CASES_REF naming every case the test has (see _with_cases_rule).
    cases_set: PolicySet | None = None


def run_tests(
    policy: PolicySet | CompiledPolicy,
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
    doesn't load. A CompiledPolicy (`policy test` has one) isn't compiled again."""
    compiled = policy if isinstance(policy, CompiledPolicy) else compile_policy(policy)
    policy_set = compiled.policy_set
    definitions: dict[str, list[tuple[str, Rule]]] = {}
    for shape in compiled.shapes:
        for rule in shape.rules:
            if rule.test_path is not None:
                ref = f"{shape.package_ref}.{'.'.join(rule.test_path)}"
                definitions.setdefault(ref, []).append((shape.file, rule))
    tests: list[_Test] = []
    unmatched = 0
    for shape in compiled.shapes:  # in source order
        for rule in shape.rules:
            path = rule.test_path
            if path is None:
                continue
            ref = f"{shape.package_ref}.{'.'.join(path)}"
            defined = definitions[ref]
            index = defined.index((shape.file, rule))
            name = _test_name(shape.package_ref, path, index)
            if match is not None and match not in name:
                unmatched += 1
                continue
            test = _Test(name, ref, shape.package_ref, path, shape.file, rule.line)
            if path[-1].startswith(SKIP_TEST_PREFIX):
                tests.append(dataclasses.replace(test, skip=True))
                continue
            others = defined[:index] + defined[index + 1 :]
            alone = _without(policy_set, others) if others else None
            cases_set = (
                _with_cases_rule(alone or policy_set, shape.file, rule) if rule.dynamic else None
            )
            tests.append(
                dataclasses.replace(test, alone=alone, dynamic=rule.dynamic, cases_set=cases_set)
            )
    if engine == "opa":
        if coverage:
            raise PolicyError("--coverage is measured on the embedded engine only")
        report = _run_on_opa(GoOpaEngine(policy_set), tests)
        report.unmatched = unmatched
        return report
    if engine != "regorus":
        raise PolicyError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    shared = _regorus_engine(policy_set, coverage)
    engines = [shared]
    report = TestReport(unmatched=unmatched)
    for test in tests:
        if test.skip or test.alone is None:
            report.results.append(_skipped(test) if test.skip else _run_one(shared, test))
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


def _test_name(package_ref: str, path: tuple[str, ...], index: int) -> str:
    """How `opa test` names the index-th definition of a test: `data.p.test_x`,
    then `data.p.test_x#01`, or `data.p.a["test_x#01"]` for a test below a name."""
    if index == 0:
        return f"{package_ref}.{'.'.join(path)}"
    numbered = f"{path[-1]}#{index:02d}"
    if len(path) == 1:
        return f"{package_ref}.{numbered}"
    return f"{package_ref}.{'.'.join(path[:-1])}[{json.dumps(numbered)}]"


# The rule _with_cases_rule adds beside a test with a computed part.
_CASES_RULE = "__portcullis_test_cases__"


def _with_cases_rule(policy_set: PolicySet, file: str, rule: Rule) -> PolicySet | None:
    """`policy_set` with a rule that names every case of the test `rule` (a head
    like `test_x[name]`), passing or not, or None where that can't be built.

    A failing case leaves no key in the test's value, so `opa test` notes each
    case's name as soon as the body has bound it: it injects a call after the
    first expression that mentions each variable of the computed part. This
    rule is the test's head over the body up to that point, so its keys are
    the cases `opa test` would report."""
    module = next((m for m in policy_set.modules if m.file == file), None)
    if module is None:
        return None
    parser = regorus.Engine()
    try:
        parser.add_policy(module.file, module.text)
    except (RuntimeError, ValueError):
        return None
    entries = json.loads(parser.get_ast_as_json())[0]["ast"].get("rules", [])
    spec = next(
        (e["Spec"] for e in entries if "Spec" in e and e["Spec"]["span"]["start"] == rule.start),
        None,
    )
    if spec is None or len(spec["bodies"]) != 1 or "Compr" not in spec["head"]:
        return None
    chain = [spec["head"]["Compr"]["refr"]]  # the head's reference, outermost part first
    while len(chain[-1]) == 1 and next(iter(chain[-1])) in ("RefDot", "RefBrack"):
        chain.append(next(iter(chain[-1].values()))["refr"])
    ground = next(iter(chain[len(chain) - len(rule.path)].values()))["span"]["end"]
    source = module.text.encode()
    end = next(iter(chain[0].values()))["span"]["end"]
    end += source[end : end + 1] == b"]"  # regorus' span of `p[x]` stops before the `]`
    suffix = source[ground:end]
    computed = chain[: len(chain) - len(rule.path)]
    keys = _variables([part["RefBrack"]["index"] for part in computed if "RefBrack" in part])
    statements = spec["bodies"][0]["query"]["stmts"]
    mentions = [_variables(statement["literal"]) for statement in statements]
    first = [next((i for i, names in enumerate(mentions) if key in names), -1) for key in keys]
    if not keys or -1 in first:
        return None
    body = [source[s["span"]["start"] : s["span"]["end"]] for s in statements[: max(first) + 1]]
    text = b"\n".join([b"", _CASES_RULE.encode() + suffix + b" if {", *body, b"}", b""])
    modules = [
        Module(m.file, m.text + text.decode()) if m is module else m for m in policy_set.modules
    ]
    return dataclasses.replace(policy_set, modules=modules)


def _variables(node: Any) -> set[str]:
    """The names of the variables in an AST node (`_` aside)."""
    if isinstance(node, list):
        return {name for item in node for name in _variables(item)}
    if not isinstance(node, dict):
        return set()
    if len(node) == 1 and "Var" in node:
        name = str(node["Var"]["value"])
        return set() if name == "_" else {name}
    return {name for value in node.values() for name in _variables(value)}


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
        if test.alone is None and not test.skip:
            packages.setdefault(test.package, []).append(test)
    done: dict[str, TestResult] = {}
    for package, members in packages.items():
        started = time.perf_counter()
        try:
            document = engine.value(package)
        except EvaluationError:
            continue  # each test of the package is evaluated alone below
        if engine.take_prints():
            continue  # likewise, so that each test's prints are its own
        share = (time.perf_counter() - started) / len(members)
        for test in members:
            value = document
            for part in test.path:
                value = value.get(part, UNDEFINED) if isinstance(value, dict) else UNDEFINED
            done[test.name] = _opa_result(test, value, share)
    report = TestReport()
    for test in tests:
        if test.skip:
            report.results.append(_skipped(test))
            continue
        if test.name in done:
            report.results.append(done[test.name])
            continue
        started = time.perf_counter()
        try:
            on = engine if test.alone is None else GoOpaEngine(test.alone)
            value = on.value(test.ref)
        except (EvaluationError, PolicyLoadError) as error:
            prints = tuple(engine.take_prints())
            seconds = time.perf_counter() - started
            report.results.append(_error(test, seconds, str(error), prints))
            continue
        seconds = time.perf_counter() - started
        report.results.append(_opa_result(test, value, seconds, tuple(on.take_prints())))
    return report


def _opa_result(
    test: _Test, value: Any, seconds: float, prints: tuple[str, ...] = ()
) -> TestResult:
    value = None if value is UNDEFINED else value
    return _result(test, value, _opa_cases(test), seconds, prints)


def _result(
    test: _Test, value: Any, expected: Any, seconds: float, prints: tuple[str, ...] = ()
) -> TestResult:
    """A test's outcome from its value (None where undefined). A test with a
    computed part passes when each of its cases is true; `expected` is the value
    of its cases rule (None where there is none), naming the cases that failed."""
    cases: tuple[CaseResult, ...] = ()
    if test.dynamic and (isinstance(value, dict) or isinstance(expected, dict)):
        cases = _cases(value if isinstance(value, dict) else {}, expected or {})
        leaves = [leaf for case in cases for leaf in case.leaves()]
        failed = sum(not leaf.passed for leaf in leaves)
        if failed:
            message = f"{failed} of {len(leaves)} cases failed"
        elif not leaves and expected is None:
            message = "no test case passed (the failing ones could not be named)"
        else:
            return TestResult(test.name, test.file, test.line, "PASS", seconds, "", prints, cases)
    elif value is True:
        return TestResult(test.name, test.file, test.line, "PASS", seconds, prints=prints)
    elif value is None:
        message = "undefined"
    else:
        message = f"evaluated to {json.dumps(as_json(value))}"
    return TestResult(test.name, test.file, test.line, "FAIL", seconds, message, prints, cases)


_MISSING = object()


def _cases(value: dict[Any, Any], expected: dict[Any, Any]) -> tuple[CaseResult, ...]:
    """The cases of a test's value, with those only `expected` names as failed,
    sorted by name; a case is passed when it is true, and a nested one when all
    of its cases are (as `opa test` judges them)."""
    found: dict[str, tuple[Any, Any]] = {}
    for key in [*value, *expected]:
        name = key if isinstance(key, str) else json.dumps(as_json(key))
        found[name] = (value.get(key, _MISSING), expected.get(key))
    results = []
    for name, (got, wanted) in sorted(found.items()):
        if isinstance(got, dict) or (got is _MISSING and isinstance(wanted, dict)):
            inner = _cases(
                got if isinstance(got, dict) else {}, wanted if isinstance(wanted, dict) else {}
            )
            results.append(CaseResult(name, all(case.passed for case in inner), inner))
        else:
            results.append(CaseResult(name, got is True))
    return tuple(results)


def _skipped(test: _Test) -> TestResult:
    return TestResult(test.name, test.file, test.line, "SKIPPED", 0.0)


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
    return _result(test, value, _regorus_cases(test), seconds, prints)


def _regorus_cases(test: _Test) -> Any:
    """The value of the test's cases rule on regorus, or None."""
    if test.cases_set is None:
        return None
    try:
        engine = new_engine(test.cases_set)
        engine.set_gather_prints(True)  # the test's own run printed them
        return _eval_ref(engine, f"{test.package}.{_CASES_RULE}")
    except (RuntimeError, ValueError, TypeError):
        return None


def _opa_cases(test: _Test) -> Any:
    """The value of the test's cases rule on OPA, or None."""
    if test.cases_set is None:
        return None
    try:
        value = GoOpaEngine(test.cases_set).value(f"{test.package}.{_CASES_RULE}")
    except (EvaluationError, PolicyLoadError):
        return None
    return None if value is UNDEFINED else value


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
