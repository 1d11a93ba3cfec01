"""What the tools need to know of a Rego module's shape: package, rules, calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from policy_engine.errors import character_column

# `opa test` runs rules whose name starts with TEST_PREFIX and reports those
# with SKIP_TEST_PREFIX as skipped.
TEST_PREFIX = "test_"
SKIP_TEST_PREFIX = "todo_test_"


@dataclass(frozen=True)
class Rule:
    """A rule head: its path inside the package, where it stands, and its kind.
    A head with a computed part (`p[x]`, `p.q[x].r`) has the literal part before it
    as its path (`p`, `p.q`) and is `dynamic`."""

    path: tuple[str, ...]
    line: int
    col: int
    is_function: bool
    is_default: bool = False
    # The whole rule (head, bodies, else) as UTF-8 byte offsets in its module.
    start: int = 0
    end: int = 0
    dynamic: bool = False

    @property
    def name(self) -> str:
        return ".".join(self.path)

    @property
    def test_path(self) -> tuple[str, ...] | None:
        """The path `opa test` names this rule by when it is a test: its path up to
        the first part that starts with `test_` or `todo_test_` (`a.b.test_x` for
        `a.b.test_x.y`); None when no part does, or for a function."""
        if self.is_function:
            return None
        for index, part in enumerate(self.path):
            if part.startswith((TEST_PREFIX, SKIP_TEST_PREFIX)):
                return self.path[: index + 1]
        return None


@dataclass(frozen=True)
class Call:
    """A function call site, by the dotted name it was called with."""

    name: str
    arity: int
    line: int
    col: int


@dataclass
class ModuleShape:
    file: str
    package: tuple[str, ...]
    package_line: int | None = None
    package_col: int | None = None
    imports: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    # What the module's rules read (policy_engine/input_reads.py): paths under
    # `input`, and under `data` (import aliases resolved), each cut at its first
    # part that isn't a literal name; () is the whole document.
    input_reads: set[tuple[str, ...]] = field(default_factory=set)
    data_reads: set[tuple[str, ...]] = field(default_factory=set)
    # Where each input read is first made (line, column in UTF-8 bytes), for a
    # warning that names the rule: reads only another module's import makes
    # (share_package_imports) have none.
    input_read_at: dict[tuple[str, ...], tuple[int, int]] = field(default_factory=dict)
    # References rooted at any other name (a local, a rule, or an alias another
    # module of the package imports: see share_package_imports), with their path.
    other_refs: set[tuple[str, tuple[str, ...]]] = field(default_factory=set)
    # Where each import alias is bound: its line and column.
    import_at: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Imports whose name another import of the module already bound (alias, the
    # earlier path, line, column): OPA refuses them, regorus takes the last.
    shadowing_imports: list[tuple[str, tuple[str, ...], int, int]] = field(default_factory=list)

    @property
    def package_ref(self) -> str:
        return "data." + ".".join(self.package)


def ref_path(node: Any) -> tuple[str, ...] | None:
    """`a.b.c` or `a["b"]` as ("a", "b", "c"); None where a part isn't a literal name."""
    if not isinstance(node, dict) or len(node) != 1:
        return None
    kind, body = next(iter(node.items()))
    if kind == "Var":
        return (str(body["value"]),)
    if kind == "RefDot":
        head = ref_path(body["refr"])
        return None if head is None else (*head, str(body["field"][1]))
    if kind == "RefBrack":
        head = ref_path(body["refr"])
        index = body["index"]
        if head is None or not isinstance(index, dict) or "String" not in index:
            return None
        return (*head, str(index["String"]["value"]))
    return None


def ground_prefix(node: Any) -> tuple[tuple[str, ...], bool]:
    """A rule head's reference as (its literal path up to the first computed part,
    whether there is a computed part): `p.q[x].r` is (("p", "q"), True)."""
    root, path, indexes = _unwind(node)
    if root is None:
        return (), True
    return (root, *path), bool(indexes)


def source_position(node: Any, lines: list[str]) -> tuple[int | None, int | None]:
    """Where a node starts (the `input` of `input.a.b`) in its module's `lines`:
    its line and column, in characters."""
    body = next(iter(node.values())) if isinstance(node, dict) and node else {}
    while isinstance(body, dict):  # down to the leftmost part: `f` of `f(x)`, `a` of `a.b`
        inner = body.get("fcn") or body.get("refr")
        if not isinstance(inner, dict) or not inner:
            break
        body = next(iter(inner.values()))
    span = body.get("span") if isinstance(body, dict) else None
    if not isinstance(span, dict) or not isinstance(span.get("line"), int):
        return None, None
    line, column = span["line"], span.get("col")
    if isinstance(column, int) and 0 < line <= len(lines):
        column = character_column(lines[line - 1], column)
    return line, column


def _first_span(node: Any) -> dict[str, Any] | None:
    """The span of the leftmost part of a reference (the `io` of `io.jwt.decode`)."""
    while isinstance(node, dict) and len(node) == 1:
        body = next(iter(node.values()))
        if not isinstance(body, dict):
            return None
        if "refr" in body:
            node = body["refr"]
            continue
        span = body.get("span")
        return span if isinstance(span, dict) else None
    return None


def _walk(node: Any, shape: ModuleShape) -> None:
    """Collect call sites and the `input`/`data` paths read, in one pass."""
    if isinstance(node, list):
        for value in node:
            _walk(value, shape)
        return
    if not isinstance(node, dict):
        return
    call = node.get("Call")
    if isinstance(call, dict) and "fcn" in call:
        name = ref_path(call["fcn"])
        if name is not None:
            # Point at the function's name, not the parenthesis.
            span = _first_span(call["fcn"]) or call.get("span", {})
            shape.calls.append(
                Call(".".join(name), len(call["params"]), span.get("line", 0), span.get("col", 0))
            )
    if len(node) == 1 and next(iter(node)) in _REF_KINDS:
        root, path, indexes = _unwind(node)
        if root is not None:
            _note_read(shape, root, path)
            if (root == "input" or shape.imports.get(root, ("",))[0] == "input") and (
                span := _first_span(node)
            ):
                read = path if root == "input" else (*shape.imports[root][1:], *path)
                shape.input_read_at.setdefault(read, (span.get("line", 0), span.get("col", 0)))
            for index in indexes:
                _walk(index, shape)
            return
    for value in node.values():
        _walk(value, shape)


_REF_KINDS = frozenset({"Var", "RefDot", "RefBrack"})


def _unwind(node: Any) -> tuple[str | None, tuple[str, ...], list[Any]]:
    """A reference as (root variable, its literal path up to the first computed
    part, the computed index expressions); root None when it isn't rooted at a
    variable (a call's result, a literal)."""
    parts: list[str | None] = []
    indexes: list[Any] = []
    while isinstance(node, dict) and len(node) == 1:
        kind, body = next(iter(node.items()))
        if kind == "Var":
            literal: list[str] = []
            for part in reversed(parts):
                if part is None:
                    break
                literal.append(part)
            return str(body["value"]), tuple(literal), indexes
        if kind == "RefDot":
            parts.append(str(body["field"][1]))
        elif kind == "RefBrack":
            index = body["index"]
            if isinstance(index, dict) and "String" in index:
                parts.append(str(index["String"]["value"]))
            else:
                parts.append(None)
                indexes.append(index)
        else:
            break
        node = body["refr"]
    return None, (), indexes


def _note_read(shape: ModuleShape, root: str, path: tuple[str, ...]) -> None:
    if root == "input":
        shape.input_reads.add(path)
    elif root == "data":
        shape.data_reads.add(path)
    elif root in shape.imports:
        _note_imported(shape, shape.imports[root], path)
    else:
        shape.other_refs.add((root, path))


def _note_imported(shape: ModuleShape, imported: tuple[str, ...], path: tuple[str, ...]) -> None:
    if imported[0] == "input":
        shape.input_reads.add((*imported[1:], *path))
    elif imported[0] == "data":
        shape.data_reads.add((*imported[1:], *path))


@dataclass(frozen=True)
class AliasConflict:
    """One import alias bound to two paths in two modules of a package."""

    alias: str
    shape: ModuleShape
    path: tuple[str, ...]
    other: ModuleShape
    other_path: tuple[str, ...]


def share_package_imports(shapes: list[ModuleShape]) -> list[AliasConflict]:
    """regorus resolves an import alias in every module of its package, not only
    in the module that imports it: `user.groups` in a module with no import of
    `user` reads `input.identity.groups` when another module of the package has
    `import input.identity as user` (OPA refuses that module: `user` is unsafe).
    Each module's reads through a name only another module imports are added to
    its own (a local of that name too: more reads than it makes, never fewer).
    Returns the aliases bound to different paths by two modules of one package,
    which regorus resolves to the last module's for all of them and OPA to each
    module's own."""
    bound: dict[tuple[tuple[str, ...], str], list[tuple[ModuleShape, tuple[str, ...]]]] = {}
    for shape in shapes:
        for alias, imported in shape.imports.items():
            bound.setdefault((shape.package, alias), []).append((shape, imported))
    conflicts = []
    for (_, alias), bindings in bound.items():
        first, first_path = bindings[0]
        for shape, imported in bindings[1:]:
            if imported != first_path and _DOCUMENTS & {imported[0], first_path[0]}:
                conflicts.append(AliasConflict(alias, shape, imported, first, first_path))
    for shape in shapes:
        for root, path in shape.other_refs:
            for _, imported in bound.get((shape.package, root), ()):
                _note_imported(shape, imported, path)
    return conflicts


_DOCUMENTS = frozenset({"input", "data"})


def _rule(entry: dict[str, Any]) -> Rule | None:
    if "Default" in entry:
        body = entry["Default"]
        refr = body["refr"]
        span = whole = body["span"]
        is_function = bool(body.get("args"))
    elif "Spec" in entry:
        head_kind, head = next(iter(entry["Spec"]["head"].items()))
        refr = head["refr"]
        span = head["span"]
        whole = entry["Spec"]["span"]
        is_function = head_kind == "Func"
    else:
        return None
    path, dynamic = ground_prefix(refr)
    if not path:
        return None
    return Rule(
        path,
        span["line"],
        span["col"],
        is_function,
        "Default" in entry,
        whole.get("start", 0),
        whole.get("end", 0),
        dynamic,
    )


def module_shape(entry: dict[str, Any]) -> ModuleShape:
    """One element of regorus' `get_ast_as_json()` list as a ModuleShape."""
    ast = entry["ast"]
    package = ref_path(ast["package"]["refr"]) or ()
    span = ast["package"].get("span", {})
    shape = ModuleShape(entry["source"]["file"], package, span.get("line"), span.get("col"))
    source = str(entry["source"].get("contents", "")).encode()
    for imported in ast.get("imports", []):
        path = ref_path(imported["refr"])
        if path is None:
            continue
        alias_span = imported.get("as")
        # regorus gives the alias as a span only, in UTF-8 bytes (a "ü" in a comment
        # above it shifts a character slice): read its name from the source's bytes.
        alias = (
            source[alias_span["start"] : alias_span["end"]].decode("utf-8", "replace")
            if alias_span
            else path[-1]
        )
        if not alias.isidentifier():
            # An alias not read right would hide the reads made through it: the
            # module counts as reading all of input and data (no memo, no projection).
            shape.input_reads.add(())
            shape.data_reads.add(())
            continue
        where = _first_span(imported["refr"]) or {}
        at = (where.get("line", 0), where.get("col", 0))
        if alias in shape.imports:
            shape.shadowing_imports.append((alias, shape.imports[alias], *at))
        shape.imports[alias] = path
        shape.import_at[alias] = at
    for raw in ast.get("rules", []):
        rule = _rule(raw)
        if rule is not None:
            shape.rules.append(rule)
    _walk(ast.get("rules", []), shape)
    return shape
