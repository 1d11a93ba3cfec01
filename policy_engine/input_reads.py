"""Which parts of `input` can a rule's value depend on: read off the policy's own AST.

The gateway's decision memo (gateway/policy/memo.py) may reuse a decision for a
request that agrees with an earlier one on every input path the policy declares
it reads. A declaration is only a claim, so it is checked here against what the
modules really read: every `input` reference in the rule's package and in every
package it reaches through `data` (imports resolved), each cut at its first
computed part (`input.headers[name]` reads all of `input.headers`; a bare `input`
reads everything). Test modules are left out: they only run under `policy test`.
A call to a builtin whose answer doesn't follow from its arguments (the clock,
randomness, the network) is reported too: no declaration can cover it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from policy_engine.policy_set import is_test_file
from policy_engine.rego_ast import ModuleShape

Path = tuple[str, ...]

# Builtins whose value can change between two calls with the same arguments.
UNSTABLE_BUILTINS = frozenset(
    {
        "time.now_ns",
        "rand.intn",
        "uuid.rfc4122",
        "http.send",
        "net.lookup_ip_addr",
        "opa.runtime",
        "io.jwt.decode_verify",
    }
)


@dataclass(frozen=True)
class InputReads:
    """The input paths a package can read, and the declared ones they escape."""

    reads: frozenset[Path]
    undeclared: tuple[Path, ...]  # read but covered by no declared path
    unstable_calls: tuple[str, ...]  # UNSTABLE_BUILTINS it calls

    @property
    def covered(self) -> bool:
        """Whether the declaration accounts for everything the answer depends on."""
        return not self.undeclared and not self.unstable_calls

    def describe(self) -> str:
        """What the declaration misses, for a log line."""
        parts = []
        if self.undeclared:
            parts.append("reads " + ", ".join(_dotted(path) for path in self.undeclared))
        if self.unstable_calls:
            parts.append("calls " + ", ".join(f"{name}()" for name in self.unstable_calls))
        return "; ".join(parts)


def input_reads(
    shapes: Iterable[ModuleShape], package: Path, declared: Iterable[Path]
) -> InputReads:
    """What the modules of `package` (and what they reach) read under `input`, and
    which of those reads no `declared` path covers (a declared path covers itself
    and everything under it)."""
    reached = deciding_modules_reached(shapes, package)
    reads = frozenset(path for shape in reached for path in shape.input_reads)
    cover = tuple(declared)
    undeclared = tuple(
        sorted(path for path in reads if not any(path[: len(d)] == d for d in cover))
    )
    unstable = sorted({c.name for s in reached for c in s.calls if c.name in UNSTABLE_BUILTINS})
    return InputReads(reads, undeclared, tuple(unstable))


def deciding_modules_reached(shapes: Iterable[ModuleShape], package: Path) -> list[ModuleShape]:
    """:func:`reached_modules` among the modules that decide: test files never do."""
    return reached_modules([shape for shape in shapes if not is_test_file(shape.file)], package)


def reached_modules(modules: Iterable[ModuleShape], package: Path) -> list[ModuleShape]:
    """The modules of `package` and of every package their `data` reads can reach:
    a read of data.a.b reaches packages a.b.* and the package a (a rule `b` of it)."""
    reached: dict[int, ModuleShape] = {}
    wanted: list[Path] = [package]
    while wanted:
        path = wanted.pop()
        for shape in modules:
            if id(shape) in reached or not _overlaps(shape.package, path):
                continue
            reached[id(shape)] = shape
            wanted.extend(shape.data_reads)
    return list(reached.values())


def _overlaps(package: Path, path: Path) -> bool:
    """Whether reading data at `path` may evaluate a rule of `package`."""
    shorter = min(len(package), len(path))
    return package[:shorter] == path[:shorter]


def _dotted(path: Path) -> str:
    return ".".join(("input", *path))


class InputProjection:
    """The part of an input a rule can read: evaluating on it gives what evaluating
    on the whole input gives, and costs the engine less (regorus builds every
    object key of its input, ~0.3 us each; a gateway input carries headers,
    addresses and claims no policy reads).

    Built from :func:`input_reads`' paths: each names a key to keep at each
    level; a path that ends keeps the whole value under it, and so does a value
    that isn't an object where the path goes on (reading a key of a list or a
    string is undefined either way, so the whole value is kept as it was).

    The copy runs once per decision, so it is a function written for the tree
    (``if "identity" in v0: ...``, keys as Python literals): a generic walk of
    the tree cost as much as the engine saved."""

    def __init__(self, reads: Iterable[Path]) -> None:
        tree: dict[str, Any] = {}
        for path in sorted(reads, key=len):
            node = tree
            for part in path[:-1]:
                node = node.setdefault(part, {})
                if node is _WHOLE:
                    break
            else:
                node[path[-1]] = _WHOLE
        self.tree = tree
        lines = ["def of(v0):", "    if type(v0) is not dict:", "        return v0"]
        lines += _copy_lines(tree, 0, "    ")
        lines.append("    return o0")
        namespace: dict[str, Any] = {}
        # The only names in it are v<n>/o<n>; every key is a repr()'d str literal.
        exec("\n".join(lines), namespace)
        self.of: Callable[[Any], Any] = namespace["of"]
        self.of.__doc__ = (
            "``document`` cut to the readable paths (the same object when it isn't one)."
        )


# Marks a path whose whole value is kept.
_WHOLE: dict[str, Any] = {}


def projection(shapes: Iterable[ModuleShape], ref: Path) -> InputProjection | None:
    """The projection for evaluating ``ref`` (a rule or package path under
    ``data``), or None when what it reads has no bound (a bare ``input``)."""
    reads = input_reads(shapes, ref, ()).reads
    return None if () in reads else InputProjection(reads)


def _copy_lines(tree: dict[str, Any], depth: int, indent: str) -> list[str]:
    """Source that copies into o<depth> the keys of object v<depth> that ``tree`` names."""
    here, below = f"v{depth}", f"v{depth + 1}"
    lines = [f"{indent}o{depth} = {{}}"]
    for key, subtree in tree.items():
        literal = repr(key)
        lines.append(f"{indent}if {literal} in {here}:")
        if subtree is _WHOLE:
            lines.append(f"{indent}    o{depth}[{literal}] = {here}[{literal}]")
            continue
        lines.append(f"{indent}    {below} = {here}[{literal}]")
        lines.append(f"{indent}    if type({below}) is dict:")
        lines += _copy_lines(subtree, depth + 1, indent + "        ")
        lines.append(f"{indent}        {below} = o{depth + 1}")
        lines.append(f"{indent}    o{depth}[{literal}] = {below}")
    return lines
