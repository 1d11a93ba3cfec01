"""Load a Rego policy set and evaluate it, embedded or on an OPA server."""

from __future__ import annotations

from typing import Any, Protocol

from policy_engine.embedded import EmbeddedEngine, compile_policy
from policy_engine.errors import (
    EvaluationError,
    EvaluationTimeout,
    PolicyError,
    PolicyLoadError,
    Problem,
    UndefinedPath,
    UndefinedResult,
)
from policy_engine.opa_server import OpaServerEngine
from policy_engine.policy_set import PolicySet, load_policy_set


class PolicyEngine(Protocol):
    """What the gateway and the scanner need of a backend."""

    backend: str

    @property
    def revision(self) -> str: ...

    async def evaluate(self, ref: str, input: Any) -> Any: ...

    async def close(self) -> None: ...


def open_engine(source: str, *, timeout: float = 0.25, gather_prints: bool = False) -> PolicyEngine:
    """An engine for a policy source: an OPA URL, a directory or a bundle file.
    `gather_prints`: the embedded engine keeps print() output for take_prints()."""
    if source.startswith(("http://", "https://")):
        return OpaServerEngine(source, timeout=timeout)
    return EmbeddedEngine(load_policy_set(source), timeout=timeout, gather_prints=gather_prints)


__all__ = [
    "EmbeddedEngine",
    "EvaluationError",
    "EvaluationTimeout",
    "OpaServerEngine",
    "PolicyEngine",
    "PolicyError",
    "PolicyLoadError",
    "PolicySet",
    "Problem",
    "UndefinedPath",
    "UndefinedResult",
    "compile_policy",
    "load_policy_set",
    "open_engine",
]
