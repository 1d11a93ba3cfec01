"""Run the policy set's `portcullis.terraform.*` rule packages over documents.

Each package declares `metadata` (id, title, severity, remediation) and a
`deny` set of {"resource", "message"} (and optionally "key": what the finding
is about, stable when the message carries counts); every such package is a
rule. A package may also declare `not_judged`, a set of {"resource", "path"}:
the resources it applies to but could not judge, and the unknown value it
needed (with "reason", its own words, where what it lacked isn't an unknown
value)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from iac_scanner.findings import SEVERITIES, Rule
from policy_engine import EvaluationError, PolicyLoadError, PolicySet, compile_policy
from policy_engine.embedded import CompiledPolicy, new_engine
from policy_engine.errors import Problem, problem_from_engine_error

PACKAGE_PREFIX = ("portcullis", "terraform")


class RuleSetError(Exception):
    """The policy set can't serve as scanner rules: each problem at its place."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Place:
    """Where a package declares one of a rule's parts."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def problem(self, message: str) -> Problem:
        return Problem(self.file, message, self.line, self.col)


@dataclass(frozen=True)
class Violation:
    rule: Rule
    resource: str
    message: str
    key: str = ""


@dataclass(frozen=True)
class NotJudged:
    """A resource a rule applies to but could not judge: what it needs is unknown."""

    rule: Rule
    resource: str
    # The document path the rule needed ("storage_encrypted", "ingress.0.from_port").
    path: str
    # Why, in the rule's words, where it isn't an unknown value at path (the
    # scanner explains those itself): "" when the rule gave none.
    reason: str = ""


# Every rule's deny set (and not_judged, where a package declares it) in one
# query, so helper rules the packages share (security group ingress, the
# catalogue's tags) are computed once per document rather than once per rule.
_COLLECTOR_PACKAGE = "portcullis_scanner_collect"

# What makes a package a rule; one that has some of them must have metadata and deny.
_RULE_PARTS = ("metadata", "deny", "not_judged")


def _kind(value: Any) -> str:
    """What a JSON value is, for an error message: "a number", "an object"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    return "an array"


class _Failed(Exception):
    """The engine failed to evaluate a rule: where and why."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem


class RuleSet:
    """The scanner's rules, compiled once; one regorus engine per process."""

    def __init__(self, policy: PolicySet | CompiledPolicy) -> None:
        if isinstance(policy, CompiledPolicy):  # `policy check` has compiled it already
            self.compiled: CompiledPolicy = policy
        else:
            try:
                self.compiled = compile_policy(policy)
            except PolicyLoadError as error:
                raise RuleSetError(error.problems) from None
        self.revision = self.compiled.policy_set.revision
        self._engine = new_engine(self.compiled.policy_set)
        # Where each package first declares metadata, deny and not_judged.
        self._declared: dict[str, dict[str, Place]] = {}
        self.packages = self._rule_packages()
        self.rules: dict[str, Rule] = {}
        problems = []
        for ref in self.packages:  # every package's metadata problem, not the first only
            try:
                self.rules[ref] = self._metadata(ref)
            except RuleSetError as error:
                problems.extend(error.problems)
        if problems:
            raise RuleSetError(problems)
        self._unique_ids()
        self._engine.add_policy(f"{_COLLECTOR_PACKAGE}.rego", self._collector())

    def _collector(self) -> str:
        # `results` is one object, computed at once; it is undefined when one
        # package's deny or not_judged is (`deny := {...} if input.strict`).
        # `each` is then read instead, a partial object per set with a key per
        # package, where an undefined set is a key left out: no results for that
        # package alone, as in OPA and conftest. (`each` alone costs a rule
        # evaluation per package and document: 13% more evaluation time.)
        lines = [f"package {_COLLECTOR_PACKAGE}", ""]
        literal, each = ["results := {"], []
        for name in ("deny", "not_judged"):
            declaring = [ref for ref in self.packages if name in self._declared[ref]]
            literal += [f'\t"{name}": {{', *(f'\t\t"{r}": {r}.{name},' for r in declaring), "\t},"]
            each.append(f'"{name}": {name}' if declaring else f'"{name}": {{}}')
            lines += [f'{name}["{ref}"] := {ref}.{name}' for ref in declaring]
        lines += ["", *literal, "}", "", f"each := {{{', '.join(each)}}}"]
        return "\n".join(lines) + "\n"

    def _rule_packages(self) -> list[str]:
        """The rule packages; a `portcullis.terraform.*` package with a rule's
        parts but not both metadata and deny is an error, not a rule skipped
        with its findings (helper packages, with none of the parts, aren't rules)."""
        for shape in self.compiled.shapes:
            if not _is_rule_package(shape.package):
                continue
            for rule in shape.rules:
                if rule.path[0] in _RULE_PARTS and not rule.is_function:
                    parts = self._declared.setdefault(shape.package_ref, {})
                    parts.setdefault(rule.path[0], Place(shape.file, rule.line, rule.col))
        problems = []
        for ref, parts in sorted(self._declared.items()):
            lacks = [name for name in ("metadata", "deny") if name not in parts]
            if lacks:
                problems.append(
                    next(iter(parts.values())).problem(
                        f"package {ref.removeprefix('data.')} has "
                        f"{' and '.join(n for n in _RULE_PARTS if n in parts)} but no "
                        f"{' or '.join(lacks)}: a rule package declares both (metadata := "
                        '{"id", "title", "severity", "remediation"})'
                    )
                )
        if problems:
            raise RuleSetError(problems)
        return sorted(self._declared)

    def declared_at(self, package: str) -> Place:
        """file:line:col of a rule package's metadata, for an error about the rule."""
        return self._declared[package]["metadata"]

    def _unique_ids(self) -> None:
        """Two packages with one id would be one rule to SARIF, suppressions
        and baselines, with the findings of both."""
        first: dict[str, str] = {}
        problems = []
        for ref, rule in self.rules.items():
            other = first.setdefault(rule.id, ref)
            if other != ref:
                problems.append(
                    self.declared_at(other).problem(
                        f"packages {other.removeprefix('data.')} and "
                        f"{ref.removeprefix('data.')} ({self.declared_at(ref)}) both "
                        f"declare rule id {rule.id}: a rule id names one rule"
                    )
                )
        if problems:
            raise RuleSetError(problems)

    def _eval(self, ref: str) -> Any:
        """The rule's value, None when undefined. Raises EvaluationError."""
        try:
            return self._value(ref)
        except _Failed as failed:
            raise EvaluationError(str(failed.problem)) from None

    def _value(self, ref: str) -> Any:
        try:
            value = json.loads(self._engine.eval_rule_as_json(ref))
        except (RuntimeError, ValueError, TypeError) as error:
            raise _Failed(problem_from_engine_error(error, ref)) from error
        return None if value == "<undefined>" else value

    def _metadata(self, package: str) -> Rule:
        self._engine.set_input_json("{}")
        try:
            value = self._value(f"{package}.metadata")
        except _Failed as failed:  # a rule that can't say what it is: no scan
            raise RuleSetError([failed.problem]) from None
        declared = self.declared_at(package)

        def refused(why: str) -> RuleSetError:
            return RuleSetError([declared.problem(f"{package}.metadata: {why}")])

        if not isinstance(value, dict):
            raise refused("must be an object with id, title, severity")
        missing = [k for k in ("id", "title", "severity") if not isinstance(value.get(k), str)]
        if missing:
            raise refused(f"missing or not a string: {', '.join(missing)}")
        severity = value["severity"].lower()
        if severity not in SEVERITIES:
            raise refused(f"severity {value['severity']!r} is not one of {', '.join(SEVERITIES)}")
        return Rule(
            id=value["id"],
            title=value["title"],
            severity=severity,
            remediation=str(value.get("remediation", "")),
            source="portcullis",
        )

    def evaluate(self, document: dict[str, Any]) -> tuple[list[Violation], list[NotJudged]]:
        """Every package's deny set (and what it could not judge) for one
        document. Raises EvaluationError."""
        try:
            self._engine.set_input_json(json.dumps(document))
        except (RuntimeError, ValueError, TypeError) as error:
            first = (str(error).strip().splitlines() or ["?"])[0]
            raise EvaluationError(f"the document can't be given to the engine: {first}") from None
        results = self._eval(f"data.{_COLLECTOR_PACKAGE}.results")
        if results is None:
            results = self._eval(f"data.{_COLLECTOR_PACKAGE}.each")
        if not isinstance(results, dict) or not all(
            isinstance(results.get(name), dict) for name in ("deny", "not_judged")
        ):
            # Never "no findings": each is always {"deny": {...}, "not_judged":
            # {...}} unless the engine failed to read it.
            raise EvaluationError(f"the rule packages gave no readable results ({_kind(results)})")
        violations: list[Violation] = []
        not_judged: list[NotJudged] = []
        for package in self.packages:
            rule = self.rules[package]
            for item in _items(package, "deny", results):
                if isinstance(item, dict) and isinstance(item.get("resource"), str):
                    message = str(item.get("message") or rule.title)
                    key = str(item.get("key") or "")
                    violations.append(Violation(rule, item["resource"], message, key))
                else:
                    raise EvaluationError(
                        f"{package}.deny: each item must be {{resource, message}}, got {item!r}"
                    )
            for item in _items(package, "not_judged", results):
                if isinstance(item, dict) and isinstance(item.get("resource"), str):
                    reason = item.get("reason")
                    not_judged.append(
                        NotJudged(
                            rule,
                            item["resource"],
                            str(item.get("path", "")),
                            reason if isinstance(reason, str) else "",
                        )
                    )
                else:
                    raise EvaluationError(
                        f"{package}.not_judged: each item must be {{resource, path}}, got {item!r}"
                    )
        return violations, not_judged


def rule_package_problems(compiled: CompiledPolicy) -> list[str]:
    """What `portcullis scan` and `policy diff` refuse (exit 2) in a policy set's
    rule packages, one line each as they print it; none for a policy set without
    `portcullis.terraform.*` packages. `policy check` and `policy test` run it, so
    a policy repository's CI refuses what every Terraform pipeline would."""
    if not any(_is_rule_package(shape.package) for shape in compiled.shapes):
        return []
    try:
        RuleSet(compiled)
    except RuleSetError as error:
        return [str(problem) for problem in error.problems]
    return []


def _is_rule_package(package: tuple[str, ...]) -> bool:
    return package[: len(PACKAGE_PREFIX)] == PACKAGE_PREFIX and not package[-1].endswith("_test")


def _items(package: str, name: str, results: dict[str, Any]) -> list[Any]:
    """A package's deny or not_judged set from the collector's results: no
    key when it is undefined (no results, as in OPA and conftest)."""
    if package not in results[name]:
        return []
    value = results[name][package]
    if not isinstance(value, list):
        raise EvaluationError(f"{package}.{name}: must be a set, got {_kind(value)}")
    return value
