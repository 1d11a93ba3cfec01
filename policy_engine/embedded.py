"""The embedded backend: regorus in-process, one engine per thread."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

# regorus' errors are anyhow errors, which capture a stack backtrace when
# RUST_BACKTRACE is set (a common developer setting, set on some CI machines too):
# a policy load probes every builtin and entry point, and the unwinding cost
# ~0.17 s of each load (build_engine on the shipped policy: 0.69 s -> 0.52 s).
# Messages never show them (errors.py cuts them off). Off unless asked for by
# name: RUST_LIB_BACKTRACE governs library backtraces only, not panics'.
os.environ.setdefault("RUST_LIB_BACKTRACE", "0")
import regorus

from policy_engine.errors import (
    EvaluationError,
    EvaluationTimeout,
    PolicyLoadError,
    Problem,
    UndefinedPath,
    UndefinedResult,
    character_column,
    problem_from_engine_error,
)
from policy_engine.input_reads import InputProjection, projection, reached_modules
from policy_engine.policy_set import Module, PolicySet, data_leaf_on, is_test_file, outside_roots
from policy_engine.rego_ast import ModuleShape, Rule, module_shape, share_package_imports
from policy_engine.vm_divergence import unfinished_assignments

REF = re.compile(r"^data(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NOT_A_RULE = "not a valid rule path"
_UNKNOWN_FUNCTION = "could not find function"
# How regorus' JSON APIs (interpreter and RVM) spell an undefined value.
_UNDEFINED = "<undefined>"
# The RVM stops a run after 25,000 instructions (its own limit, not settable from
# Python), where the interpreter and OPA go on: a rule scanning a long list in data.
_INSTRUCTION_LIMIT = "exceeded maximum instruction limit"
# What _run_compiled answers for a run the RVM stopped at that limit.
_TOO_LONG_FOR_VM: Any = object()


@dataclass(frozen=True)
class CompiledPolicy:
    """A policy set that parsed, loaded and evaluated every entry point once."""

    policy_set: PolicySet
    shapes: list[ModuleShape]
    # Where the compiled VM would answer otherwise than the interpreter
    # (policy_engine/vm_divergence.py), in the modules that aren't tests.
    vm_divergences: list[Problem] = dataclasses.field(default_factory=list)

    def rule_refs(self, *, include_tests: bool = True) -> list[str]:
        """Every non-function rule as `data.pkg.rule`, in source order, once each."""
        seen: dict[str, None] = {}
        for shape in self.shapes:
            for rule in shape.rules:
                if rule.is_function or (rule.test_path is not None and not include_tests):
                    continue
                seen[f"{shape.package_ref}.{rule.path[0]}"] = None
        return list(seen)

    def knows(self, ref: str) -> bool:
        """Whether `ref` names a package, a rule (or a part of one's value) or data."""
        path = tuple(ref.split("."))[1:]
        for shape in self.shapes:
            for rule in shape.rules:
                full = (*shape.package, *rule.path)
                shorter = min(len(full), len(path))
                if full[:shorter] == path[:shorter]:
                    return True
        return not path or data_leaf_on(self.policy_set.data, path) is not None

    def vm_divergences_reached(self, refs: Iterable[str]) -> list[Problem]:
        """The vm_divergences in the modules these entry points (`data.pkg.rule`)
        reach: their own package's and every package they read through `data`,
        since the VM compiles whatever a rule calls (a library's helper too)."""
        files = {
            shape.file
            for ref in refs
            for shape in reached_modules(self.shapes, tuple(ref.split("."))[1:])
        }
        return [problem for problem in self.vm_divergences if problem.file in files]


def new_engine(policy_set: PolicySet, *, without_tests: bool = False) -> Any:
    """A fresh regorus engine holding the policy set (parse only, no checks);
    ``without_tests``: only the modules that decide (:func:`deciding_modules`)."""
    engine = regorus.Engine()
    modules = deciding_modules(policy_set) if without_tests else policy_set.modules
    for module in modules:
        engine.add_policy(module.file, module.text)
    engine.add_data(policy_set.data)
    return engine


def deciding_modules(policy_set: PolicySet) -> list[Module]:
    """The modules that take part in a decision: all but the `*_test.rego` files,
    which the compiled VM, the decision memo's and replay's reads, and the input
    contract's check have always left out. The interpreter that confirms an allow
    (or decides what the VM can't) leaves them out too, or a rule kept in a test
    file would deny on the interpreter what the VM and a memo hit allow."""
    return [module for module in policy_set.modules if not is_test_file(module.file)]


def compile_policy(policy_set: PolicySet, *, evaluate: bool = True) -> CompiledPolicy:
    """Parse every module, check data against rules, and evaluate every entry point
    once so that unsafe variables and unknown functions fail here, not on a request.
    Raises PolicyLoadError listing every problem found. ``evaluate=False`` leaves out
    the evaluation, for a policy set whose evaluation a child process has just done
    (a gateway's hot reload: gateway/policy/load_probe.py)."""
    engine = regorus.Engine()
    # A print() in a rule evaluated here is no output: `opa check` prints only errors.
    engine.set_gather_prints(True)
    problems: list[Problem] = []
    for module in policy_set.modules:
        try:
            engine.add_policy(module.file, module.text)
        except (RuntimeError, ValueError) as error:
            problems.append(problem_from_engine_error(error, module.file))
    if problems:
        raise PolicyLoadError(_in_character_columns(problems, policy_set))
    try:
        engine.add_data(policy_set.data)
    except (RuntimeError, TypeError, ValueError) as error:
        # load_policy_set refuses non-JSON values; a policy set made otherwise may
        # still hold one (regorus: TypeError), and it is a policy that won't load.
        message = str(error).split("Stack backtrace:")[0].strip() or type(error).__name__
        problem = Problem(policy_set.origin, f"data the engine can't hold: {message}")
        raise PolicyLoadError([problem]) from None
    shapes, import_problems, divergences = _analysed(policy_set, engine)
    problems.extend(import_problems)
    compiled = CompiledPolicy(policy_set, shapes, divergences)
    problems.extend(_data_conflicts(compiled))
    problems.extend(_rule_conflicts(shapes))
    problems.extend(_ref_head_overlaps(shapes))
    problems.extend(_packages_outside_roots(compiled))
    problems.extend(_unknown_functions(shapes))
    engine.set_input({})
    # Tests run under `policy test`, where an error is that test's failure.
    for ref in compiled.rule_refs(include_tests=False) if evaluate else ():
        try:
            _eval_ref(engine, ref)
        except (RuntimeError, ValueError) as error:
            problem = problem_from_engine_error(error, ref)
            if problem not in problems:
                problems.append(problem)
    if problems:
        raise PolicyLoadError(_in_character_columns(problems, policy_set))
    return compiled


@dataclass(frozen=True)
class _Analysis:
    """What the modules' syntax trees say, whatever the data: each module's shape
    (its rules, calls and reads) and where the compiled VM would answer otherwise
    (vm_divergence), for the modules at ``files``."""

    files: tuple[str, ...]
    shapes: list[ModuleShape]
    vm_divergences: list[Problem]

    def at(self, files: tuple[str, ...]) -> _Analysis:
        """The same analysis for the same texts at other paths (a copy of the set)."""
        if files == self.files:
            return self
        moved = dict(zip(self.files, files, strict=True))
        return _Analysis(
            files,
            [dataclasses.replace(shape, file=moved[shape.file]) for shape in self.shapes],
            [dataclasses.replace(p, file=moved.get(p.file, p.file)) for p in self.vm_divergences],
        )


# The analyses of the last few sets of modules, by their texts (and which are tests):
# reading the syntax trees is most of a load (~130 of ~250 ms for the shipped set:
# regorus writes ~13 MB of JSON for it), and a reload that changed only data, or
# another load of the same set in this process (a copy of it too), has the same
# modules. A set whose imports are refused is analysed each time: its problems'
# messages name files.
_ANALYSES: dict[tuple[tuple[str, bool], ...], _Analysis] = {}
_ANALYSES_KEPT = 4
_ANALYSES_LOCK = threading.Lock()


def _analysed(
    policy_set: PolicySet, engine: Any
) -> tuple[list[ModuleShape], list[Problem], list[Problem]]:
    """The shapes, import problems and VM divergences of ``policy_set``'s modules,
    which ``engine`` holds: read from the syntax trees once for each set of module
    texts. (Shapes are shared by the loads that find them: nothing changes one once
    share_package_imports has added each module's reads through another's.)"""
    modules = policy_set.modules
    key = tuple((module.text, is_test_file(module.file)) for module in modules)
    files = tuple(module.file for module in modules)
    with _ANALYSES_LOCK:
        kept = _ANALYSES.get(key)
    if kept is not None:
        analysis = kept.at(files)
        return analysis.shapes, [], list(analysis.vm_divergences)
    entries = orjson.loads(engine.get_ast_as_json())
    shapes = [module_shape(entry) for entry in entries]
    # The modules the VM compiles (_compile_program): all but the tests.
    compiled = [e for e in entries if not is_test_file(e["source"]["file"])]
    # _alias_conflicts also adds each module's reads through another's aliases.
    import_problems = [*_shadowing_imports(shapes), *_alias_conflicts(shapes)]
    divergences = unfinished_assignments(compiled)
    if not import_problems and [shape.file for shape in shapes] == list(files):
        with _ANALYSES_LOCK:
            _ANALYSES[key] = _Analysis(files, shapes, divergences)
            while len(_ANALYSES) > _ANALYSES_KEPT:
                del _ANALYSES[next(iter(_ANALYSES))]
    return shapes, import_problems, list(divergences)


def _in_character_columns(problems: list[Problem], policy_set: PolicySet) -> list[Problem]:
    texts = {module.file: module.text.splitlines() for module in policy_set.modules}
    fixed = []
    for problem in problems:
        lines = texts.get(problem.file)
        if lines and problem.line and problem.col and problem.line <= len(lines):
            column = character_column(lines[problem.line - 1], problem.col)
            problem = dataclasses.replace(problem, col=column)
        fixed.append(problem)
    return fixed


def _data_conflicts(compiled: CompiledPolicy) -> list[Problem]:
    problems = []
    data = compiled.policy_set.data
    for shape in compiled.shapes:
        for rule in shape.rules:
            clash = data_leaf_on(data, (*shape.package, *rule.path[:1]))
            if clash is None:
                continue
            origin = compiled.policy_set.source_of(clash)
            problems.append(
                Problem(
                    shape.file,
                    f"conflicting data keys: rule {rule.path[0]} and data.{'.'.join(clash)} "
                    f"from {origin}",
                    rule.line,
                    rule.col,
                )
            )
    return problems


def _shadowing_imports(shapes: list[ModuleShape]) -> list[Problem]:
    """An import whose name an earlier import of the module binds (`import data.x`
    then `import data.z.x`): OPA refuses the module, regorus reads the name as the
    last import, so the policy would mean something else on OPA."""
    return [
        Problem(
            shape.file,
            f"import must not shadow import {'.'.join(earlier)} (both are "
            f"{alias}; OPA refuses this and regorus would use the last one): give one an "
            "alias with `as`",
            line,
            col,
        )
        for shape in shapes
        for alias, earlier, line, col in shape.shadowing_imports
    ]


def _alias_conflicts(shapes: list[ModuleShape]) -> list[Problem]:
    """An import alias that two modules of one package bind to different paths:
    regorus resolves it to one of them in both modules, OPA each to its own, so
    the policy would decide differently from what either module says."""
    problems = []
    for conflict in share_package_imports(shapes):
        line, col = conflict.shape.import_at.get(conflict.alias, (0, 0))
        problems.append(
            Problem(
                conflict.shape.file,
                f"import alias {conflict.alias} is {'.'.join(conflict.path)} here and "
                f"{'.'.join(conflict.other_path)} in {conflict.other.file}: regorus shares "
                "a package's import aliases across its modules (one binding wins in all of "
                "them), OPA doesn't; rename one of them",
                line,
                col,
            )
        )
    return problems


def _rule_conflicts(shapes: list[ModuleShape]) -> list[Problem]:
    """What OPA's compiler refuses to load and regorus loads: a second default rule
    for one path, a rule at a package's path, and a rule whose value would hold
    another package's rules (`data.b.c` beside `package b.c` or `package b.c.d`).
    One package's own overlapping rules regorus refuses itself."""
    packages: dict[tuple[str, ...], str] = {}
    # Every proper prefix of a rule's path: the first rule under it from each package.
    under: dict[tuple[str, ...], dict[tuple[str, ...], tuple[str, str, int]]] = {}
    for shape in shapes:
        packages.setdefault(shape.package, shape.file)
        for rule in shape.rules:
            path = (*shape.package, *rule.path)
            for length in range(1, len(path)):
                below = under.setdefault(path[:length], {})
                below.setdefault(shape.package, (".".join(path), shape.file, rule.line))
    problems = []
    defaults: dict[tuple[str, ...], tuple[str, int]] = {}
    for shape in shapes:
        for rule in shape.rules:
            path = (*shape.package, *rule.path)
            ref = "data." + ".".join(path)
            conflict = None
            if rule.is_default and path in defaults:
                file, line = defaults[path]
                conflict = f"multiple default rules {ref} (the first at {file}:{line})"
            elif rule.is_default:
                defaults[path] = (shape.file, rule.line)
            if path in packages:
                conflict = f"rule {ref} conflicts with package {'.'.join(path)} ({packages[path]})"
            else:
                others = [v for k, v in under.get(path, {}).items() if k != shape.package]
                if others:
                    name, file, line = others[0]
                    conflict = f"rule {ref} conflicts with rule data.{name} ({file}:{line})"
            if conflict is not None:
                problems.append(Problem(shape.file, conflict, rule.line, rule.col))
    return problems


def _ref_head_overlaps(shapes: list[ModuleShape]) -> list[Problem]:
    """Two rules of a package where one's head has a variable (`access[app].groups`)
    and the other's a name in its place (`access.pos.groups`, `access.pos[k]`): OPA
    gives `access.pos` the values of both, regorus reads `access.pos...` from the
    named rule alone (OPA's conformance case `refheads/general, set leaf, deep
    query`), so a rule reading `access.pos.groups` decides differently on each.
    Whether the variable ever takes that name depends on data and input: refused
    whenever it can, as the gateway would then decide unlike OPA."""
    with_variable: dict[tuple[str, ...], list[tuple[str, Rule]]] = {}
    for shape in shapes:
        for rule in shape.rules:
            if rule.dynamic and not rule.is_function:
                with_variable.setdefault(shape.package, []).append((shape.file, rule))
    problems = []
    for shape in shapes:
        for rule in shape.rules:
            for file, other in with_variable.get(shape.package, ()):
                at = len(other.path)  # where `other` has its variable
                if rule.is_function or len(rule.path) <= at or rule.path[:at] != other.path:
                    continue
                package = ".".join(shape.package)
                under = f"data.{package}.{'.'.join(rule.path[: at + 1])}"
                example = f"{'.'.join(other.path)}[key]... if key := {json.dumps(rule.path[at])}"
                problems.append(
                    Problem(
                        shape.file,
                        f"rule data.{package}.{rule.name} has a name where the rule at "
                        f"{file}:{other.line} has a variable (after data.{package}."
                        f"{other.name}): OPA reads {under} from both rules, regorus from "
                        f"this one alone; write this one with a variable too ({example}) "
                        "or give the two different names",
                        rule.line,
                        rule.col,
                    )
                )
                break
    return problems


def _packages_outside_roots(compiled: CompiledPolicy) -> list[Problem]:
    """A bundle's module whose package its manifest roots don't hold: OPA refuses
    the bundle (load_policy_set checks the data)."""
    roots = compiled.policy_set.roots
    return [
        Problem(
            shape.file,
            f"package {'.'.join(shape.package)} is outside the manifest roots "
            f"{json.dumps(list(roots or ()))}",
            shape.package_line,
            shape.package_col,
        )
        for shape in compiled.shapes
        if outside_roots(roots, shape.package)
    ]


# Builtins regorus knows by name but never runs: a rule that calls one is undefined
# where OPA would have its answer (a deny through it never fires).
_STUBS = {
    "http.send": (
        "http.send is not available: the embedded engine answers it undefined without "
        "sending anything, so a rule that calls it never holds (OPA would send the "
        "request); give the policy what it needs through input or data"
    ),
}


def _unknown_functions(shapes: list[ModuleShape]) -> list[Problem]:
    defined = {
        (*shape.package, *rule.path) for shape in shapes for rule in shape.rules if rule.is_function
    }
    problems = []
    for shape in shapes:
        for call in shape.calls:
            parts = tuple(call.name.split("."))
            if parts[0] in shape.imports and shape.imports[parts[0]][0] == "data":
                target: tuple[str, ...] | None = (*shape.imports[parts[0]][1:], *parts[1:])
            elif parts[0] == "data":
                target = parts[1:]
            elif len(parts) == 1 and (*shape.package, parts[0]) in defined:
                continue
            else:
                target = None
            known = target in defined if target is not None else is_builtin(call.name, call.arity)
            if known and target is None and call.name in _STUBS:
                problems.append(Problem(shape.file, _STUBS[call.name], call.line, call.col))
            elif not known:
                problems.append(
                    Problem(shape.file, f"unknown function {call.name}", call.line, call.col)
                )
    return problems


@functools.cache
def is_builtin(name: str, arity: int) -> bool:
    """Whether the embedded engine has a builtin `name` (asked once per process)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name):
        return False
    probe = regorus.Engine()
    probe.set_gather_prints(True)  # probing print(null, null) prints nothing
    args = ", ".join(["null"] * arity)
    try:
        probe.eval_query(f"x := {name}({args})")
    except (RuntimeError, ValueError) as error:
        return _UNKNOWN_FUNCTION not in str(error)
    return True


def _eval_ref(engine: Any, ref: str) -> Any:
    """The value of `ref`; None where it is undefined. Raises on engine errors."""
    try:
        value = engine.eval_rule(ref)
    except TypeError:
        # Values holding sets of objects only come back through the JSON API.
        value = json.loads(engine.eval_rule_as_json(ref))
        if value == _UNDEFINED:
            return None
    except RuntimeError as error:
        if _NOT_A_RULE not in str(error):
            raise
        results = json.loads(engine.eval_query_as_json(ref)).get("result", [])
        if not results:
            return None
        value = results[0]["expressions"][0]["value"]
    return value


def as_json(value: Any) -> Any:
    """`value` with every set made a list sorted as Rego orders values, the form
    `opa eval` prints a set in. regorus hands sets of scalars back as Python sets,
    which JSON has no form for; the engine's own answers keep them."""
    if isinstance(value, set | frozenset):
        return [as_json(item) for item in sorted(value, key=rego_order)]
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(item) for item in value]
    return value


def rego_order(value: Any) -> tuple[Any, ...]:
    """A sort key in Rego's order of values: null, booleans, numbers, strings,
    arrays, objects, sets; arrays element by element, objects by sorted keys."""
    if value is None:
        return (0,)
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, int | float):
        return (2, value)
    if isinstance(value, str):
        return (3, value)
    if isinstance(value, list | tuple):
        return (4, tuple(rego_order(item) for item in value))
    if isinstance(value, dict):
        keys = sorted(value, key=rego_order)
        return (5, tuple((rego_order(key), rego_order(value[key])) for key in keys))
    if isinstance(value, set | frozenset):
        return (6, tuple(sorted(rego_order(item) for item in value)))
    return (7, repr(value))


class EmbeddedEngine:
    """Evaluates a compiled policy set in-process.

    regorus holds the GIL while it evaluates, and its engines can't cross
    threads, so each thread that calls gets its own engine, built on first use,
    and evaluation runs inline: an executor would add latency and still could
    not pre-empt a running evaluation. The timeout is therefore a budget of
    this thread's CPU time checked when evaluation returns: a decision that
    overran it is an error (and so a deny), never a late allow. CPU time, not
    wall time, so a loaded machine or a descheduled process never denies a
    decision the policy made in time.

    `compiled_refs` names hot entry points (the gateway's decision) to run on
    regorus' compiled VM (RVM), about 3x faster than its interpreter;
    tests/test_engine_fidelity.py holds it to the interpreter's and OPA's answers. An
    entry point the RVM can't compile falls back to the interpreter.

    The RVM (as bound for Python: no strict mode) turns an error inside a rule
    body into undefined for that body instead of failing the evaluation: a
    `deny` rule whose `to_number(header)` fails on "5000x" doesn't fire, and
    the answer is an allow that the interpreter and OPA refuse with an error.
    An undefined or erroring answer is a deny anyway, but an answer that lets
    something through is not to be trusted: `confirm(ref, value)` says which
    compiled answers those are (the gateway's: an allow), and each is decided
    again on the interpreter, with the whole input, whose answer (or error) is
    the one returned. A deny costs the compiled run only.
    """

    backend = "embedded"

    def __init__(
        self,
        policy_set: PolicySet,
        *,
        timeout: float = 0.25,
        compiled_refs: tuple[str, ...] = (),
        confirm: Callable[[str, Any], bool] | None = None,
        gather_prints: bool = False,
        evaluate_at_load: bool = True,
        without_tests: bool = False,
    ) -> None:
        self.compiled = compile_policy(policy_set, evaluate=evaluate_at_load)
        self.timeout = timeout
        # The interpreter decides with the deciding modules only (the gateway's
        # engines, as its VM does), or with every module (`policy eval`).
        self.without_tests = without_tests
        self.confirm = confirm
        # Keep print() output for take_prints() rather than let regorus write it
        # to stdout (where `policy eval` writes its answer).
        self.gather_prints = gather_prints
        self._local = threading.local()
        self._program: bytes | None = None
        self._data_json = json.dumps(policy_set.data)
        self.compiled_refs: frozenset[str] = frozenset()
        # What of the input each compiled entry point can read (None: all of it).
        self._projections: dict[str, InputProjection | None] = {}
        self.rvm_problem: str | None = None
        known = set(self.compiled.rule_refs(include_tests=False))
        refs = [ref for ref in compiled_refs if ref in known and REF.match(ref)]
        if refs:
            self._compile_program(refs)

    def _compile_program(self, refs: list[str]) -> None:
        # Entry points that reach a rule the VM would answer otherwise are the
        # interpreter's.
        diverging = self.compiled.vm_divergences_reached(refs)
        if diverging:
            more = f" (and {len(diverging) - 1} more)" if len(diverging) > 1 else ""
            self.rvm_problem = f"{diverging[0]}{more}"
            return
        modules = [(m.file, m.text) for m in deciding_modules(self.compiled.policy_set)]
        try:
            program = regorus.Program.compile_from_modules(self._data_json, modules, refs)
        except (RuntimeError, ValueError) as error:
            self.rvm_problem = str(problem_from_engine_error(error, refs[0]))
            return
        self._program = bytes(program.serialize_binary())
        self.compiled_refs = frozenset(refs)
        shapes = self.compiled.shapes
        self._projections = {ref: projection(shapes, tuple(ref.split(".")[1:])) for ref in refs}

    def _vm(self) -> Any:
        vm = getattr(self._local, "vm", None)
        if vm is None:
            # Programs can't cross threads either: each thread loads its own copy.
            program, _ = regorus.Program.deserialize_binary(self._program)
            vm = regorus.Rvm()
            vm.load_program(program)
            vm.set_data_json(self._data_json)
            self._local.vm = vm
        return vm

    @property
    def revision(self) -> str:
        return self.compiled.policy_set.revision

    def _engine(self) -> Any:
        engine = getattr(self._local, "engine", None)
        if engine is None:
            engine = new_engine(self.compiled.policy_set, without_tests=self.without_tests)
            engine.set_gather_prints(self.gather_prints)
            self._local.engine = engine
        return engine

    def take_prints(self) -> list[str]:
        """What print() wrote on this thread since the last call, as "file:line:
        message" (with gather_prints; otherwise regorus wrote it to stdout)."""
        engine = getattr(self._local, "engine", None)
        return list(engine.take_prints()) if engine is not None and self.gather_prints else []

    def evaluate_sync(self, ref: str, input: Any) -> Any:
        compiled = ref in self.compiled_refs  # checked against REF when compiled
        if not compiled and not REF.match(ref):
            raise UndefinedPath(f"{ref}: not a reference like data.portcullis.gateway.decision")
        # This thread's engine is built (first use) before the clock starts, and the
        # clock is this thread's CPU time: a busy machine or another thread holding
        # the GIL delays a decision but never turns it into a timeout deny.
        vm_or_engine = self._vm() if compiled else self._engine()
        confirm = self.confirm if compiled else None
        # Built before the clock too: it confirms an allow, or decides what the VM can't.
        interpreter: Any = self._engine() if compiled else None
        started = time.thread_time()
        wall_started = time.perf_counter()
        try:
            if compiled:
                value = self._run_compiled(vm_or_engine, ref, input)
                # A run too long for the VM is the interpreter's, under the same timeout.
                if value is _TOO_LONG_FOR_VM or (confirm is not None and confirm(ref, value)):
                    interpreter.set_input(input)
                    # In the VM's form (and OPA's): a set as a JSON array, not a Python set.
                    value = as_json(_eval_ref(interpreter, ref))
            else:
                vm_or_engine.set_input(input)
                value = _eval_ref(vm_or_engine, ref)
        except (RuntimeError, ValueError, TypeError) as error:
            raise EvaluationError(str(problem_from_engine_error(error, ref))) from error
        # A thread can't use more CPU time than the wall time that passed, so the
        # CPU clock (a system call, ~0.5 us) is read again only when the wall
        # clock (~0.05 us) says the budget may be spent.
        if time.perf_counter() - wall_started > self.timeout:
            elapsed = time.thread_time() - started
            if elapsed > self.timeout:
                raise EvaluationTimeout(
                    f"{ref}: evaluation took {elapsed * 1000:.1f} ms of CPU, over the "
                    f"{self.timeout * 1000:.0f} ms timeout"
                )
        if value is None:
            if not self.compiled.knows(ref):
                raise UndefinedPath(f"{ref}: no such rule, package or data in the policy set")
            raise UndefinedResult(f"{ref}: undefined for this input")
        return value

    def _run_compiled(self, vm: Any, ref: str, input: Any) -> Any:
        # Only what the entry point can read: the same answer, and regorus builds
        # (~0.3 us an object key) none of the headers and claims no rule reads.
        projection = self._projections[ref]
        if projection is not None:
            input = projection.of(input)
        vm.set_input_json(orjson.dumps(input).decode())
        try:
            text = vm.execute_entry_point(ref)
        except RuntimeError as error:
            if _INSTRUCTION_LIMIT in str(error):
                return _TOO_LONG_FOR_VM
            raise
        value = orjson.loads(text)
        if value == _UNDEFINED:
            return None
        if _UNDEFINED in text:
            # An undefined part inside a defined value is an RVM fault, never an answer.
            raise EvaluationError(f"{ref}: compiled evaluation left an undefined value inside")
        return value

    async def evaluate(self, ref: str, input: Any) -> Any:
        return self.evaluate_sync(ref, input)

    async def close(self) -> None:
        self._local = threading.local()
