"""OPA's own Go evaluator, in process: the reference for Rego semantics.

PyPI's `opa-golib-python-bindings` is OPA v1.20.2 built as a c-shared library
with ctypes bindings. Portcullis uses it as an oracle (the fidelity tests, and
`portcullis policy test --engine opa`, so a security engineer can check that a
policy set behaves the same on a real OPA before shipping it there). It is
never a runtime dependency of the gateway, the scanner, the wheel or the image:
the import is optional and its absence is a one-line error saying how to
install it. Its metadata asks for Python 3.14, but it runs on 3.11.
"""

from __future__ import annotations

import re
from typing import Any

from policy_engine.errors import (
    EvaluationError,
    PolicyError,
    PolicyLoadError,
    Problem,
    UndefinedResult,
)
from policy_engine.policy_set import PolicySet

INSTALL_HINT = (
    "OPA's Go evaluator is not installed; install it with: pip install --no-deps "
    "--ignore-requires-python opa-golib-python-bindings==0.4.4"
)
OPA_VERSION = "v1.20.2"
# "policies/x.rego:12: rego_type_error: ..." inside OPA's error texts.
_LOCATED = re.compile(r"(?P<file>[^\s:]+\.rego):(?P<line>\d+)(?::(?P<col>\d+))?: (?P<message>.+)")


class Undefined:
    """The value of a document that is undefined (distinct from JSON null)."""

    def __repr__(self) -> str:
        return "<undefined>"


UNDEFINED = Undefined()


class OracleUnavailable(PolicyError):
    """opa-golib-python-bindings isn't installed."""

    def __init__(self) -> None:
        super().__init__(INSTALL_HINT)


def _bindings() -> Any:
    try:
        from opa_bindings import engine
    except ImportError as error:  # optional: a test oracle, not a dependency
        raise OracleUnavailable() from error
    return engine


def available() -> bool:
    try:
        _bindings()
    except OracleUnavailable:
        return False
    return True


class GoOpaEngine:
    """A policy set loaded into OPA's Go evaluator (one per thread, like regorus)."""

    backend = "opa-golib"

    def __init__(self, policy_set: PolicySet) -> None:
        bindings = _bindings()
        self._errors = (bindings.OpaError,)
        self._undefined = bindings.OpaUndefinedError
        self._engine = bindings.OpaEngine()
        # print() output, kept as regorus keeps it ("file:line: message") until
        # taken; the bindings would write it to stderr.
        self._prints: list[str] = []
        self._engine.print_handler = self._note_print
        self._policy_set = policy_set
        try:
            for module in policy_set.modules:
                self._engine.add_policy(module.file, module.text)
            self._engine.add_data(policy_set.data)
            # OPA compiles lazily: a query compiles every module, so load errors
            # (unsafe variables, type errors, conflicts) surface here.
            self._engine.eval_query("x := true")
        except bindings.OpaError as error:
            raise PolicyLoadError(_problems(error.message, policy_set.origin)) from None

    @property
    def revision(self) -> str:
        return self._policy_set.revision

    def _note_print(self, message: str, location: str) -> None:
        self._prints.append(f"{location}: {message}")

    def take_prints(self) -> list[str]:
        """What print() wrote since the last call, as "file:line: message"."""
        taken, self._prints = self._prints, []
        return taken

    def value(self, ref: str, input: Any = None) -> Any:
        """The value of `ref` (`data.a.b`), or UNDEFINED; raises EvaluationError."""
        path = ref.removeprefix("data.").removeprefix("data")
        try:
            return self._engine.eval_document(path, input)
        except self._undefined:
            return UNDEFINED
        except self._errors as error:
            raise EvaluationError(f"{ref}: {error.message}") from None

    def values(self, ref: str, inputs: list[Any]) -> list[Any]:
        """`value(ref, i)` for each input, in one query (a call costs ~1 ms of setup).
        An input whose evaluation fails gets its EvaluationError in its place (one
        error fails the whole query, so then each input is evaluated alone)."""
        query = f"x := {{i: d | some i, doc in input.docs; d := {ref} with input as doc}}"
        try:
            bindings = self._engine.eval_query(query, {"docs": inputs})
        except self._errors:
            return [self._value_or_error(ref, document) for document in inputs]
        answers = bindings[0]["x"] if bindings else {}
        return [answers.get(str(index), UNDEFINED) for index in range(len(inputs))]

    def _value_or_error(self, ref: str, input: Any) -> Any:
        try:
            return self.value(ref, input)
        except EvaluationError as error:
            return error

    def query(self, expression: str, input: Any = None) -> Any:
        """The value of one expression (`sprintf("%d", [1])`), or UNDEFINED."""
        try:
            bindings = self._engine.eval_query(f"x := {expression}", input)
        except self._errors as error:
            raise EvaluationError(f"{expression}: {error.message}") from None
        return bindings[0]["x"] if bindings else UNDEFINED

    async def evaluate(self, ref: str, input: Any) -> Any:
        """The PolicyEngine interface: an undefined result is an UndefinedResult."""
        result = self.value(ref, input)
        if result is UNDEFINED:
            raise UndefinedResult(f"{ref} is undefined for this input")
        return result

    async def close(self) -> None:
        self._engine.close()


def _problems(message: str, origin: str) -> list[Problem]:
    problems = []
    for line in message.splitlines():
        match = _LOCATED.search(line)
        if match is not None:
            column = match.group("col")
            problems.append(
                Problem(
                    match.group("file"),
                    match.group("message").strip(),
                    int(match.group("line")),
                    int(column) if column else None,
                )
            )
    return problems or [Problem(origin, message.strip())]
