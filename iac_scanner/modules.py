"""Evaluate a Terraform module tree from parsed HCL into the document's resources.

A `ModuleInstance` is one module at one address (the root, `module.vpc`,
`module.app[0]`): its variables, locals, resources (expanded by count and
for_each where those resolve) and the module calls below it. Everything is
evaluated lazily, on first use, so a reference to a local or to another
resource's attribute resolves in any order, and a cycle is UNKNOWN rather
than an error.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iac_scanner.expressions import (
    UNKNOWN,
    UNKNOWN_NAMESPACE,
    Budget,
    Context,
    MapNamespace,
    Namespace,
    Partial,
    TooLarge,
    Unsupported,
    evaluate,
    is_unknown,
    local_names,
    references,
    traversal,
)
from iac_scanner.findings import Problem
from iac_scanner.functions import merge
from iac_scanner.hcl import Block, Expr, HclSyntaxError, ParsedFile, parse_expression
from iac_scanner.policy_document import render as render_policy_document
from iac_scanner.type_defaults import with_defaults
from iac_scanner.unknowns import Scope, describe

# Meta-arguments: how Terraform manages a resource, not what the provider gets.
_RESOURCE_META = {"count", "for_each", "provider", "depends_on"}
_RESOURCE_META_BLOCKS = {"lifecycle", "provisioner", "connection"}
_MODULE_META = {"source", "version", "count", "for_each", "providers", "depends_on"}
_MAX_MODULE_DEPTH = 12


class _TooDeep(RecursionError):
    """The attribute (args[0], a dotted path) whose evaluation recursed too
    deep: the expression through the locals, resources and module outputs it
    refers to (each one is within hcl.MAX_NESTING, a chain of them need not).
    args[1], when there, says it was too large instead (TooLarge's words)."""


# An instance (of a resource or a module call) costs the budget as much as this
# many characters: `count = 1e9`, or a module calling itself three times, is
# refused before it is built.
_INSTANCE_COST = 50
# A module instance is a whole module evaluated again: at most some 10,000 of them.
_MODULE_INSTANCE_COST = Budget.LIMIT // 10_000


def _why(error: RecursionError) -> str | None:
    """TooLarge's words, through a _TooDeep that named the attribute."""
    if isinstance(error, TooLarge):
        return str(error.args[0])
    if isinstance(error, _TooDeep) and len(error.args) > 1:
        return str(error.args[1])
    return None


def _too_deep_at(path: str, error: RecursionError) -> _TooDeep:
    """`error`, raised evaluating the attribute at `path`, named for it."""
    why = _why(error)
    return _TooDeep(path) if why is None else _TooDeep(path, why)


@dataclass
class SourceFile:
    path: Path
    display: str
    parsed: ParsedFile


@dataclass
class Resource:
    """One resource instance: the document entry plus what reports need."""

    entry: dict[str, Any]
    end_line: int
    comments: list[list[Any]] = field(default_factory=list)
    # Why the value at a dotted path of the config is unknown ("var.x has no value").
    explain: Callable[[str], str] | None = None


class Loader:
    """What every module instance of one scan shares: parsed files, the
    variables given on the command line, and the notes to print once."""

    def __init__(
        self,
        files_of: Callable[[Path, Path | None], list[SourceFile]],
        notes: list[str],
        on_read: Callable[[Path, bytes], None] | None = None,
        problems: list[Problem] | None = None,
        on_list: Callable[[Path], object] | None = None,
    ) -> None:
        self.files_of = files_of
        self.notes = notes
        self.on_read = on_read
        self.problems: list[Problem] = problems if problems is not None else []
        # Called with each directory whose files (there or not) the scan depends on.
        self.on_list = on_list
        # What every module instance's expressions may build, together.
        self.budget = Budget()

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def problem(self, problem: Problem) -> None:
        """A configuration Terraform itself refuses: the scan exits 2."""
        if problem not in self.problems:
            self.problems.append(problem)


def _no_names(name: str) -> Any:
    raise Unsupported(name)


_LITERAL_CONTEXT = Context(_no_names)


def literal_value(expr: Expr) -> Any:
    """A value that needs no names: tfvars, variable defaults."""
    return evaluate(expr, _LITERAL_CONTEXT)


class ModuleInstance:
    def __init__(
        self,
        loader: Loader,
        directory: Path,
        address: str,
        variables: dict[str, Any],
        variable_refs: dict[str, set[str]],
        root: Path,
        depth: int = 0,
        only_file: Path | None = None,
        inherited_tags: dict[str, Any] | None = None,
    ) -> None:
        self.loader = loader
        self.directory = directory
        self.address = address
        self.prefix = f"{address}." if address else ""
        self.root = root
        self.depth = depth
        self.files = loader.files_of(directory, only_file)
        self.declared: dict[str, Block] = {}
        self.local_exprs: dict[str, Expr] = {}
        self.resource_blocks: dict[str, tuple[Block, SourceFile]] = {}
        self.resource_types: set[str] = set()
        self.module_blocks: dict[str, Block] = {}
        self.module_files: dict[str, SourceFile] = {}
        self.outputs: dict[str, Expr] = {}
        self.provider_sources: dict[str, str] = {}
        self.data_blocks: dict[str, Block] = {}
        self.providers: dict[str, list[Block]] = {}
        self._collect()
        self.variables = self._variables(variables)
        self.variable_refs = variable_refs
        self._locals: dict[str, Any] = {}
        self._local_refs: dict[str, set[str]] = {}
        self._busy: set[str] = set()
        self._instances: dict[str, Any] = {}
        self._configs: dict[str, Any] = {}
        self._children: dict[str, Any] = {}
        self.context = Context(
            self._resolve,
            references=self._references,
            on_read=loader.on_read,
            budget=loader.budget,
        )
        # Provider configuration name ("aws", "aws.west") -> its default_tags.
        self.default_tags = {**(inherited_tags or {}), **self._own_default_tags()}

    def _own_default_tags(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, blocks in self.providers.items():
            for block in blocks:
                alias = evaluate(block["attrs"].get("alias", ["lit", None]), self.context)
                key = f"{name}.{alias}" if isinstance(alias, str) else name
                tags: Any = {}
                for inner in block["blocks"]:
                    if inner["type"] == "default_tags" and "tags" in inner["attrs"]:
                        tags = evaluate(inner["attrs"]["tags"], self.context)
                found[key] = tags
        return found

    def _passed_default_tags(self, block: Block) -> dict[str, Any]:
        """A module call's providers: the parent's, or those `providers = {}` maps."""
        passed = dict(self.default_tags)
        mapping = block["attrs"].get("providers")
        if mapping is not None and mapping[0] == "object":
            for key_expr, value_expr in mapping[1]:
                child = _provider_name(key_expr)
                parent = _provider_name(value_expr)
                if child and parent:
                    passed[child] = self.default_tags.get(parent, {})
        return passed

    def _tags_all(self, block: Block, config: Any) -> Any:
        """tags_all as the AWS provider computes it: its default_tags, overridden
        by the resource's own tags. The scanner has no provider schema, so
        every resource of a provider with default_tags gets tags_all."""
        defaults = self.default_tags.get(self._provider_config(block))
        if defaults is None or defaults == {} or not isinstance(config, dict):
            return config
        if "tags_all" in config:
            return config
        tags = config.get("tags")
        own = tags if is_unknown(tags) or isinstance(tags, dict) else {}
        # As merge(default_tags, tags): a tag the resource sets is certain
        # even when the defaults are unknown, and the reverse is not.
        return {**config, "tags_all": merge(defaults, own)}

    def _provider_config(self, block: Block) -> str:
        if "provider" in block["attrs"]:
            name = _provider_name(block["attrs"]["provider"])
            if name:
                return name
        return str(block["labels"][0].split("_")[0])

    def _collect(self) -> None:
        # Terraform reads override files (override.tf, *_override.tf and their
        # .tf.json forms) after all others, merging each block into the one it
        # overrides.
        primary = [s for s in self.files if not is_override_file(s.path)]
        overrides = [s for s in self.files if is_override_file(s.path)]
        for source in primary:
            for block in source.parsed["blocks"]:
                self._add(block, source)
        for source in overrides:
            for block in source.parsed["blocks"]:
                self._override(block, source)

    def _add(self, block: Block, source: SourceFile) -> None:
        kind, labels = block["type"], block["labels"]
        if kind == "variable" and labels:
            self.declared[labels[0]] = block
        elif kind == "locals":
            self.local_exprs.update(block["attrs"])
        elif kind == "resource" and len(labels) == 2:
            key = f"{labels[0]}.{labels[1]}"
            if key in self.resource_blocks:
                self._duplicate(key, block, source)
                return
            self.resource_blocks[key] = (block, source)
            self.resource_types.add(labels[0])
        elif kind == "data" and len(labels) == 2:
            self.data_blocks[f"{labels[0]}.{labels[1]}"] = block
        elif kind == "module" and labels:
            self.module_blocks[labels[0]] = block
            self.module_files[labels[0]] = source
        elif kind == "output" and labels and "value" in block["attrs"]:
            self.outputs[labels[0]] = block["attrs"]["value"]
        elif kind == "provider" and labels:
            self.providers.setdefault(labels[0], []).append(block)
        elif kind == "terraform":
            self._required_providers(block)

    def _duplicate(self, key: str, block: Block, source: SourceFile) -> None:
        first, first_source = self.resource_blocks[key]
        self.loader.problem(
            Problem(
                source.display,
                f"Duplicate resource configuration: {self.prefix}{key} is already declared "
                f"at {first_source.display}:{first['line']}; Terraform refuses a module that "
                "declares a resource address twice (rename one, or make the second an "
                "override file)",
                block["line"],
            )
        )

    def _override(self, block: Block, source: SourceFile) -> None:
        kind, labels = block["type"], block["labels"]
        if kind == "resource" and len(labels) == 2:
            key = f"{labels[0]}.{labels[1]}"
            if key not in self.resource_blocks:
                self.loader.problem(
                    Problem(
                        source.display,
                        f"Missing base resource configuration for override: there is no "
                        f"{key} in the module's other files to override",
                        block["line"],
                    )
                )
                return
            base, base_source = self.resource_blocks[key]
            self.resource_blocks[key] = (merge_override(base, block), base_source)
        elif kind == "data" and len(labels) == 2 and f"{labels[0]}.{labels[1]}" in self.data_blocks:
            key = f"{labels[0]}.{labels[1]}"
            self.data_blocks[key] = merge_override(self.data_blocks[key], block)
        elif kind == "variable" and labels and labels[0] in self.declared:
            self.declared[labels[0]] = merge_override(self.declared[labels[0]], block)
        elif kind == "module" and labels and labels[0] in self.module_blocks:
            self.module_blocks[labels[0]] = merge_override(self.module_blocks[labels[0]], block)
        else:
            self._add(block, source)

    def _required_providers(self, block: Block) -> None:
        for inner in block["blocks"]:
            if inner["type"] != "required_providers":
                continue
            for name, expr in inner["attrs"].items():
                value = literal_value(expr)
                if isinstance(value, dict) and isinstance(value.get("source"), str):
                    source = value["source"]
                    parts = source.split("/")
                    self.provider_sources[name] = (
                        source if len(parts) == 3 else f"registry.terraform.io/{source}"
                    )

    def _variables(self, given: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, block in self.declared.items():
            if name in given and not (given[name] is None and _takes_default_for_null(block)):
                value = given[name]
            elif "default" in block["attrs"]:
                value = literal_value(block["attrs"]["default"])
            else:
                value = UNKNOWN
            if "type" in block["attrs"]:
                value = with_defaults(block["attrs"]["type"], value, literal_value)
            values[name] = value
        return values

    def assign(self, given: dict[str, Any]) -> None:
        """Set the root module's inputs (before anything is evaluated)."""
        self.variables = self._variables(given)

    def declared_type(self, name: str) -> str | None:
        block = self.declared.get(name)
        if block is None or "type" not in block["attrs"]:
            return None
        chain = traversal(block["attrs"]["type"])
        return chain[0] if chain and not chain[1] else "complex"

    # Names in expressions.

    def _resolve(self, name: str) -> Any:
        if name == "var":
            return MapNamespace(self.variables)
        if name == "local":
            return _Locals(self)
        if name == "module":
            return _Modules(self)
        if name == "data":
            return _DataSources(self)
        if name == "path":
            return MapNamespace(
                {
                    "module": str(self.directory),
                    "root": str(self.root),
                    "cwd": os.getcwd(),
                }
            )
        if name == "terraform":
            return MapNamespace({"workspace": "default"})
        if name in ("count", "each", "self"):
            return UNKNOWN
        if name in self.resource_types:
            return _ResourceType(self, name)
        raise Unsupported(f"unknown name {name}")

    def local(self, name: str) -> Any:
        if name in self._locals:
            return self._locals[name]
        if name not in self.local_exprs or f"local.{name}" in self._busy:
            return UNKNOWN
        # The locals it names are evaluated first, innermost first, so a chain
        # of locals (Terraform evaluates any length) is as deep as one local.
        for other in self._locals_below(name, self._locals, "local."):
            self._evaluate_local(other)
        return self._evaluate_local(name)

    def _evaluate_local(self, name: str) -> Any:
        if name in self._locals:
            return self._locals[name]
        self._busy.add(f"local.{name}")
        try:
            value = evaluate(self.local_exprs[name], self.context)
        finally:
            self._busy.discard(f"local.{name}")
        self._locals[name] = value
        return value

    def _locals_below(self, name: str, done: dict[str, Any], busy: str) -> list[str]:
        """The locals `name` refers to, directly or through others, that are
        not in done (nor being worked out: `busy` + name in self._busy), each
        after the ones it refers to. A cycle is cut where it closes."""
        order: list[str] = []
        seen = {name}
        stack = [(name, iter(sorted(local_names(self.local_exprs[name]))))]
        while stack:
            current, names = stack[-1]
            for other in names:
                if (
                    other not in seen
                    and other in self.local_exprs
                    and other not in done
                    and f"{busy}{other}" not in self._busy
                ):
                    seen.add(other)
                    stack.append((other, iter(sorted(local_names(self.local_exprs[other])))))
                    break
            else:
                stack.pop()
                if current != name:
                    order.append(current)
        return order

    def _references(self, root: str, operations: list[Any]) -> set[str]:
        name = operations[0][1] if operations and operations[0][0] == "attr" else None
        if root == "var" and name:
            return self.variable_refs.get(name, set())
        if root == "local" and name:
            return self._local_references(name)
        if root == "data" and name and len(operations) > 1 and operations[1][0] == "attr":
            return {f"{self.prefix}data.{name}.{operations[1][1]}"}
        if root == "module" and name:
            rest = operations[1:]
            key = None
            if rest and rest[0][0] == "index":
                key, rest = rest[0][1], rest[1:]
            output = rest[0][1] if rest and rest[0][0] == "attr" else None
            return self._module_references(name, key, output)
        if root in self.resource_types and name:
            address = f"{self.prefix}{root}.{name}"
            if len(operations) > 1 and operations[1][0] == "index":
                key = operations[1][1]
                if key[0] == "lit" and isinstance(key[1], int):
                    address += f"[{key[1]}]"
                elif key[0] == "lit" and isinstance(key[1], str):
                    address += f"[{json.dumps(key[1])}]"
            return {address}
        return set()

    def _local_references(self, name: str) -> set[str]:
        if name in self._local_refs:
            return self._local_refs[name]
        if name not in self.local_exprs or f"refs.local.{name}" in self._busy:
            return set()
        # As local(): those it refers to first, so a long chain never nests.
        for other in self._locals_below(name, self._local_refs, "refs.local."):
            self._references_of_local(other)
        return self._references_of_local(name)

    def _references_of_local(self, name: str) -> set[str]:
        if name in self._local_refs:
            return self._local_refs[name]
        key = f"refs.local.{name}"
        self._busy.add(key)
        try:
            found = references(self.local_exprs[name], self.context)
        finally:
            self._busy.discard(key)
        self._local_refs[name] = found
        return found

    def _module_references(self, name: str, key: Expr | None, output: str | None) -> set[str]:
        """What `module.name.output` or `module.name[key].output` refers to.
        A literal key reads that instance's output; any other key is one
        instance the scanner can't name (a plan records neither the key nor
        the output), so the reference stays on the module, resolving to no
        resource, as it does in a plan."""
        children = self.children(name)
        if children is None:
            return {f"{self.prefix}module.{name}"}
        if key is not None:
            literal = key[1] if key[0] == "lit" else None
            if isinstance(literal, bool) or not isinstance(literal, int | str):
                output = None
            else:
                wanted = f"[{json.dumps(literal)}]"
                children = {k: c for k, c in children.items() if k == wanted}
        found: set[str] = set()
        for child in children.values():
            if output is None:
                found.add(child.address)
            elif output in child.outputs:
                found |= references(child.outputs[output], child.context)
        return found

    # Module calls.

    def children(self, name: str) -> dict[str, ModuleInstance] | None:
        """The instances of module call `name` by key ("" when not repeated);
        None when its source can't be loaded or its count/for_each is unknown."""
        if name in self._children:
            result: dict[str, ModuleInstance] | None = self._children[name]
            return result
        self._children[name] = None
        try:
            return self._instantiate(name)
        except RecursionError:
            # Not "no module": asked again (from resources()), it reports why.
            del self._children[name]
            raise

    def _instantiate(self, name: str) -> dict[str, ModuleInstance] | None:
        block = self.module_blocks.get(name)
        if block is None or self.depth >= _MAX_MODULE_DEPTH:
            return None
        directory = self._module_directory(name, block)
        if directory is None:
            return None
        instances: dict[str, ModuleInstance] = {}
        expansion = _expand(block, self.context)
        if expansion is None:
            self.loader.note(
                f"{self.module_files[name].display}:{block['line']}: module.{name}: "
                "count/for_each could not be resolved; its resources are scanned once "
                "with unknown count.index/each"
            )
            expansion = [("", {"count": {"index": UNKNOWN}, "each": _UNKNOWN_EACH})]
        self.context.budget.spend(_MODULE_INSTANCE_COST * len(expansion))
        for key, names in expansion:
            context = self.context.child(names)
            inputs: dict[str, Any] = {}
            input_refs: dict[str, set[str]] = {}
            for attr, expr in block["attrs"].items():
                if attr in _MODULE_META:
                    continue
                inputs[attr] = evaluate(expr, context)
                input_refs[attr] = references(expr, context)
            address = f"{self.prefix}module.{name}{key}"
            instances[key] = ModuleInstance(
                self.loader,
                directory,
                address,
                inputs,
                input_refs,
                self.root,
                self.depth + 1,
                inherited_tags=self._passed_default_tags(block),
            )
        self._children[name] = instances
        return instances

    def _module_directory(self, name: str, block: Block) -> Path | None:
        source = literal_value(block["attrs"].get("source", ["lit", None]))
        where = f"{self.module_files[name].display}:{block['line']}: module.{name}"
        if not isinstance(source, str):
            self.loader.note(f"{where}: module source is not a literal string; not scanned")
            return None
        if source.startswith(("./", "../")) or source in (".", ".."):
            directory = (self.directory / source.replace("//", "/")).resolve()
            if directory.is_dir():
                return directory
            self.loader.note(f"{where}: local module {source} not found; not scanned")
            return None
        downloaded = self._downloaded_module(name)
        if downloaded is not None:
            return downloaded
        self.loader.note(
            f"{where}: remote module {source} is not in .terraform/modules "
            "(run terraform init to scan it); not scanned"
        )
        return None

    def _downloaded_module(self, name: str) -> Path | None:
        manifest = self.root / ".terraform" / "modules" / "modules.json"
        # terraform init writes (or rewrites) the manifest after a scan: a cached
        # result must not go on saying the module isn't there.
        if self.loader.on_list is not None:
            self.loader.on_list(manifest.parent)
        try:
            content = manifest.read_bytes()
            if self.loader.on_read is not None:
                self.loader.on_read(manifest, content)
            modules = json.loads(content.decode("utf-8")).get("Modules", [])
        except (OSError, ValueError, AttributeError, RecursionError):
            return None
        key = ".".join(
            part.split("[")[0].removeprefix("module.")
            for part in f"{self.address}.module.{name}".split(".module.")
            if part
        )
        key = key.removeprefix(".")
        for module in modules:
            if isinstance(module, dict) and module.get("Key") == key:
                directory = self.root / str(module.get("Dir", ""))
                if directory.is_dir():
                    return directory.resolve()
        return None

    # Resources.

    def instances(self, key: str) -> list[tuple[str, dict[str, Any]]] | None:
        """[(address suffix, names for count/each)]; None when count/for_each is unknown."""
        if key not in self._instances:
            block, _ = self.resource_blocks[key]
            self._instances[key] = _expand(block, self.context)
        result: list[tuple[str, dict[str, Any]]] | None = self._instances[key]
        return result

    def config_of(self, key: str, suffix: str, names: dict[str, Any]) -> Any:
        """The evaluated config of one instance (UNKNOWN inside where unresolved)."""
        cache_key = f"{key}{suffix}"
        if cache_key in self._configs:
            return self._configs[cache_key][0]
        if cache_key in self._busy:
            return UNKNOWN
        self._busy.add(cache_key)
        try:
            block, _ = self.resource_blocks[key]
            config, refs = _body_value(block, self.context.child(names), "", top=True)
        finally:
            self._busy.discard(cache_key)
        self._configs[cache_key] = (config, refs)
        return config

    def resources(self) -> list[Resource]:
        """Every resource instance in this module and the modules it calls."""
        found: list[Resource] = []
        for key, (block, source) in self.resource_blocks.items():
            kind, name = block["labels"]
            try:
                expansion = self.instances(key)
            except RecursionError as error:
                address = f"{self.prefix}{key}"
                self._too_deep(source, block, address, "`count`/`for_each`", _why(error))
                continue
            if expansion is None:
                # count/for_each unknown (e.g. from a data source): scanned once,
                # with count.index and each unknown, rather than not at all.
                expansion = [("", {"count": {"index": UNKNOWN}, "each": _UNKNOWN_EACH})]
            for suffix, names in expansion:
                try:
                    self.config_of(key, suffix, names)
                except RecursionError as error:
                    what = f"`{error.args[0]}`" if isinstance(error, _TooDeep) else "an argument"
                    address = f"{self.prefix}{key}{suffix}"
                    self._too_deep(source, block, address, what, _why(error))
                    continue
                config, refs = self._configs[f"{key}{suffix}"]
                config = self._tags_all(block, config)
                unknown: list[str] = []
                incomplete: list[str] = []
                config = strip_unknown(config, "", unknown, incomplete)
                entry = {
                    "address": f"{self.prefix}{key}{suffix}",
                    "type": kind,
                    "name": name,
                    "module": self.address,
                    "provider": self._provider(block),
                    "file": source.display,
                    "line": block["line"],
                    "config": config if isinstance(config, dict) else {},
                    "unknown": unknown,
                    "refs": {k: sorted(v) for k, v in sorted(refs.items())},
                }
                if incomplete:
                    # Maps and lists that may hold more than config shows.
                    entry["incomplete"] = incomplete
                comments = _comments_for(block, source.parsed["comments"])
                found.append(Resource(entry, block["end_line"], comments, self._explainer(block)))
        for name, block in self.module_blocks.items():
            try:
                children = self.children(name)
            except RecursionError as error:
                what = f"{self.prefix}module.{name}"
                why = _why(error)
                self._too_deep(self.module_files[name], block, what, "its arguments", why)
                continue
            for child in (children or {}).values():
                found.extend(child.resources())
        return found

    def _too_deep(
        self, source: SourceFile, block: Block, address: str, what: str, why: str | None = None
    ) -> None:
        """A Problem: `what` of the resource or module call at address nests
        deeper than Python recurses (or, said in why, is too large), so it
        can't be evaluated."""
        if block["type"] == "module":
            outcome = "its resources were not scanned"
        else:
            outcome = "the resource was not judged"
        if why is None:
            why = (
                "expression nested too deeply to evaluate, itself or "
                "through the locals, resources and module outputs it refers to"
            )
        else:
            why = f"too large to evaluate: {why}"
        self.loader.problem(
            Problem(source.display, f"{address}: {what}: {why}; {outcome}", block["line"])
        )

    def _explainer(self, block: Block) -> Callable[[str], str]:
        from iac_scanner.functions import FUNCTIONS, LAZY_FUNCTIONS

        scope = Scope(
            variable=lambda name: self.variables.get(name, UNKNOWN),
            local=self.local_exprs.get,
            is_resource_type=lambda kind: kind in self.resource_types,
            known_function=lambda name: name in FUNCTIONS or name in LAZY_FUNCTIONS,
        )
        return lambda path: describe(block, path.split("."), scope)

    def _provider(self, block: Block) -> str:
        local_name = block["labels"][0].split("_")[0]
        if "provider" in block["attrs"]:
            chain = traversal(block["attrs"]["provider"])
            if chain is not None:
                local_name = chain[0]
        return self.provider_sources.get(
            local_name, f"registry.terraform.io/hashicorp/{local_name}"
        )


_UNKNOWN_EACH = {"key": UNKNOWN, "value": UNKNOWN}


def _provider_name(expr: Expr) -> str | None:
    """`aws` or `aws.west` from a provider reference (or its quoted key)."""
    if expr[0] == "lit" and isinstance(expr[1], str):
        return expr[1]
    chain = traversal(expr)
    if chain is None:
        return None
    names = [op[1] for op in chain[1] if op[0] == "attr"]
    return ".".join([chain[0], *names[:1]])


def is_override_file(path: Path) -> bool:
    """override.tf, *_override.tf, override.tf.json, *_override.tf.json."""
    stem = path.name.removesuffix(".json").removesuffix(".tf")
    return stem == "override" or stem.endswith("_override")


def _nested_kind(block: Block) -> str:
    return block["labels"][0] if block["type"] == "dynamic" and block["labels"] else block["type"]


def merge_override(base: Block, override: Block) -> Block:
    """An override block merged into its base as Terraform does: each argument
    replaces the base's; nested blocks of a type the override has replace all
    the base's blocks of that type (static or dynamic); lifecycle merges
    argument by argument. The base keeps its place (file and lines)."""
    over_kinds = {_nested_kind(b) for b in override["blocks"] if b["type"] != "lifecycle"}
    blocks = [b for b in base["blocks"] if _nested_kind(b) not in over_kinds]
    for inner in override["blocks"]:
        if inner["type"] == "lifecycle":
            existing = next((b for b in blocks if b["type"] == "lifecycle"), None)
            if existing is not None:
                blocks[blocks.index(existing)] = {
                    **existing,
                    "attrs": {**existing["attrs"], **inner["attrs"]},
                }
                continue
        blocks.append(inner)
    return {**base, "attrs": {**base["attrs"], **override["attrs"]}, "blocks": blocks}


def _takes_default_for_null(variable: Block) -> bool:
    """A variable declared `nullable = false` takes its default when it is given
    null (Terraform's rule, for module arguments and tfvars alike): a caller's
    `cidr = var.cidr` whose var.cidr is null gets the module's default, not null."""
    attrs = variable["attrs"]
    return "default" in attrs and literal_value(attrs.get("nullable", ["lit", True])) is False


def _expand(block: Block, context: Context) -> list[tuple[str, dict[str, Any]]] | None:
    """How count/for_each repeat a resource or module: [(address suffix, names)]."""
    attrs = block["attrs"]
    if "count" in attrs:
        count = evaluate(attrs["count"], context)
        if isinstance(count, bool) or not isinstance(count, int | float):
            return None
        if not math.isfinite(count):
            return None
        context.budget.spend(_INSTANCE_COST * max(0, int(count)))
        return [(f"[{i}]", {"count": {"index": i}}) for i in range(int(count))]
    if "for_each" in attrs:
        collection = evaluate(attrs["for_each"], context)
        if isinstance(collection, dict):
            items = sorted(collection.items())
        elif isinstance(collection, list) and all(isinstance(v, str) for v in collection):
            items = [(v, v) for v in sorted(set(collection))]
        else:
            return None
        context.budget.spend(_INSTANCE_COST * len(items))
        return [(f"[{json.dumps(k)}]", {"each": {"key": k, "value": v}}) for k, v in items]
    context.budget.spend(_INSTANCE_COST)
    return [("", {})]


def _body_value(
    block: Block, context: Context, path: str, *, top: bool = False
) -> tuple[dict[str, Any], dict[str, set[str]]]:
    config: dict[str, Any] = {}
    refs: dict[str, set[str]] = {}
    for name, expr in block["attrs"].items():
        if top and name in _RESOURCE_META:
            continue
        try:
            config[name] = evaluate(expr, context)
            _attribute_refs(expr, context, f"{path}{name}", refs)
        except RecursionError as error:
            # Named for the outermost attribute: the one whose resource is judged.
            raise _too_deep_at(f"{path}{name}", error) from None
    for inner in block["blocks"]:
        kind = inner["type"]
        if top and kind in _RESOURCE_META_BLOCKS:
            continue
        if kind == "dynamic" and inner["labels"]:
            _dynamic(inner, context, path, config, refs)
            continue
        items = config.setdefault(kind, [])
        if items is UNKNOWN or not isinstance(items, list):
            continue
        value, inner_refs = _body_value(inner, context, f"{path}{kind}.{len(items)}.")
        items.append(value)
        refs.update(inner_refs)
    return config, refs


def _attribute_refs(expr: Expr, context: Context, path: str, refs: dict[str, set[str]]) -> None:
    """What an attribute refers to, under its name and also, where its value
    is an object or a list of objects written out, under the path within it
    where each reference is made: that is how a .tf.json file writes a nested
    block (`"ingress": {"security_groups": [...]}`, or `[{...}]`), and rules
    look up a block's references by that path ("ingress.0.security_groups")."""
    found = references(expr, context)
    if found:
        refs.setdefault(path, set()).update(found)
        _nested_refs(expr, context, path, refs)


def _nested_refs(expr: Expr, context: Context, path: str, refs: dict[str, set[str]]) -> None:
    if expr[0] == "object" and all(key[0] == "lit" for key, _ in expr[1]):
        inner = [(f"{path}.{key[1]}", value) for key, value in expr[1]]
    elif expr[0] == "tuple" and expr[1] and all(item[0] == "object" for item in expr[1]):
        inner = [(f"{path}.{index}", item) for index, item in enumerate(expr[1])]
    else:
        return
    for where, value in inner:
        _attribute_refs(value, context, where, refs)


def _dynamic(
    block: Block,
    context: Context,
    path: str,
    config: dict[str, Any],
    refs: dict[str, set[str]],
) -> None:
    label = block["labels"][0]
    items = config.setdefault(label, [])
    if not isinstance(items, list):
        return
    content = next((b for b in block["blocks"] if b["type"] == "content"), None)
    try:
        collection = evaluate(block["attrs"].get("for_each", ["lit", None]), context)
    except RecursionError as error:
        raise _too_deep_at(f"{path}{label}", error) from None
    iterator = label
    if "iterator" in block["attrs"]:
        chain = traversal(block["attrs"]["iterator"])
        if chain is not None:
            iterator = chain[0]
    if content is None or not isinstance(collection, dict | list):
        # Unknown how many blocks there are: the next position stands for them.
        items.append(UNKNOWN)
        return
    pairs = sorted(collection.items()) if isinstance(collection, dict) else enumerate(collection)
    for key, value in pairs:
        inner = context.child({iterator: {"key": key, "value": value}})
        body, inner_refs = _body_value(content, inner, f"{path}{label}.{len(items)}.")
        items.append(body)
        refs.update(inner_refs)


# What _certain gives for a value of which nothing is certain.
_DROPPED: Any = object()


def _certain(value: Any, path: str, unknown: list[str], incomplete: list[str] | None) -> Any:
    """What is certain of an unknown or partly known value at `path`, its path
    listed as it is: a partly known map or list (with `incomplete` to list it in)
    is its known part, which may hold less than Terraform will; anything else is
    _DROPPED, its path listed as unknown."""
    if isinstance(value, Partial) and incomplete is not None:
        incomplete.append(path)
        return value.known
    unknown.append(path)
    return _DROPPED


def strip_unknown(
    value: Any, path: str, unknown: list[str], incomplete: list[str] | None = None
) -> Any:
    """The value with every UNKNOWN removed and its dotted path listed instead:
    object keys are dropped, list items become null (positions are kept). A
    partly known map or list (merge() or concat() with an unknown argument)
    becomes what is certain of it, its path listed in incomplete; without
    that list it is unknown, as a whole.
    Depth first with a stack of its own rather than Python's, so a value
    nested deeper than Python recurses (a plan's) is copied too, for the scan
    to refuse with its path."""
    if value is UNKNOWN or isinstance(value, Partial):
        value = _certain(value, path, unknown, incomplete)
        if value is _DROPPED:
            return None
    if not isinstance(value, dict | list):
        return value
    result: Any = {} if isinstance(value, dict) else []
    # (the items still to copy, their container's path, the copy they go in)
    stack: list[tuple[Iterator[tuple[Any, Any]], str, Any]] = [(_items(value), path, result)]
    while stack:
        items, where, copy = stack[-1]
        for key, item in items:
            inner = f"{where}.{key}" if where else str(key)
            if item is UNKNOWN or isinstance(item, Partial):
                item = _certain(item, inner, unknown, incomplete)
                if item is _DROPPED:
                    if isinstance(copy, list):
                        copy.append(None)
                    continue
            nested: Any = item
            if isinstance(item, dict | list):
                nested = {} if isinstance(item, dict) else []
            if isinstance(copy, list):
                copy.append(nested)
            else:
                copy[key] = nested
            if nested is not item:
                stack.append((_items(item), inner, nested))
                break
        else:
            stack.pop()
    return result


def _items(value: dict[Any, Any] | list[Any]) -> Iterator[tuple[Any, Any]]:
    return iter(value.items()) if isinstance(value, dict) else enumerate(value)


def _comments_for(block: Block, comments: list[list[Any]]) -> list[list[Any]]:
    return [
        c for c in comments if block["line"] <= c[0] <= block["end_line"] or c[3] == block["line"]
    ]


class _Locals(Namespace):
    def __init__(self, module: ModuleInstance) -> None:
        self.module = module

    def attr(self, name: str) -> Any:
        if name not in self.module.local_exprs:
            raise Unsupported(f"no local {name}")
        return self.module.local(name)


class _Modules(Namespace):
    def __init__(self, module: ModuleInstance) -> None:
        self.module = module

    def attr(self, name: str) -> Any:
        if name not in self.module.module_blocks:
            raise Unsupported(f"no module {name}")
        children = self.module.children(name)
        if children is None:
            return UNKNOWN
        block = self.module.module_blocks[name]
        outputs = {key: _Outputs(child) for key, child in children.items()}
        if "count" in block["attrs"]:
            return [outputs[key] for key in sorted(outputs, key=lambda k: int(k[1:-1]))]
        if "for_each" in block["attrs"]:
            return {json.loads(key[1:-1]): value for key, value in outputs.items()}
        return outputs.get("", UNKNOWN)


class _Outputs(Namespace):
    def __init__(self, module: ModuleInstance) -> None:
        self.module = module

    def attr(self, name: str) -> Any:
        expr = self.module.outputs.get(name)
        if expr is None:
            return UNKNOWN
        return evaluate(expr, self.module.context)


class _ResourceType(Namespace):
    def __init__(self, module: ModuleInstance, kind: str) -> None:
        self.module = module
        self.kind = kind

    def attr(self, name: str) -> Any:
        key = f"{self.kind}.{name}"
        if key not in self.module.resource_blocks:
            raise Unsupported(f"no resource {key}")
        block, _ = self.module.resource_blocks[key]
        expansion = self.module.instances(key)
        if expansion is None:
            return UNKNOWN
        instances = {
            suffix: _Instance(self.module, key, suffix, names) for suffix, names in expansion
        }
        if "count" in block["attrs"]:
            return list(instances.values())
        if "for_each" in block["attrs"]:
            return {json.loads(s[1:-1]): value for s, value in instances.items()}
        return instances.get("", UNKNOWN)


class _DataSources(Namespace):
    """`data.TYPE.NAME`: only aws_iam_policy_document is computed from its own
    configuration (as the provider does at plan); every other data source is
    read at apply and stays unknown."""

    def __init__(self, module: ModuleInstance) -> None:
        self.module = module

    def attr(self, name: str) -> Any:
        if name != "aws_iam_policy_document":
            return UNKNOWN_NAMESPACE
        return _PolicyDocuments(self.module)


class _PolicyDocuments(Namespace):
    def __init__(self, module: ModuleInstance) -> None:
        self.module = module

    def attr(self, name: str) -> Any:
        block = self.module.data_blocks.get(f"aws_iam_policy_document.{name}")
        if block is None or "count" in block["attrs"] or "for_each" in block["attrs"]:
            return UNKNOWN
        key = f"data.aws_iam_policy_document.{name}"
        if key in self.module._busy:
            return UNKNOWN
        self.module._busy.add(key)
        try:
            config, _ = _body_value(block, self.module.context, "", top=True)
        finally:
            self.module._busy.discard(key)
        return {"json": render_policy_document(config), "minified_json": UNKNOWN}


class _Instance(Namespace):
    """Another resource's attributes: what its configuration sets is known at
    plan time; anything else (id, arn) is computed at apply: unknown."""

    def __init__(self, module: ModuleInstance, key: str, suffix: str, names: dict[str, Any]):
        self.module = module
        self.key = key
        self.suffix = suffix
        self.names = names

    def attr(self, name: str) -> Any:
        config = self.module.config_of(self.key, self.suffix, self.names)
        if not isinstance(config, dict):
            return UNKNOWN
        value = config.get(name, UNKNOWN)
        return value


def root_variables(
    module: ModuleInstance,
    assigned: list[dict[str, Any]],
    cli_vars: list[tuple[str, str]],
) -> dict[str, Any]:
    """Root module inputs in Terraform's order: TF_VAR_ environment variables,
    then the tfvars files (terraform.tfvars, *.auto.tfvars, --var-file), then --var."""
    values: dict[str, Any] = {}
    for name in module.declared:
        env = os.environ.get(f"TF_VAR_{name}")
        if env is not None:
            values[name] = _typed_text(module, name, env)
    for file_values in assigned:
        values.update(file_values)
    for name, text in cli_vars:
        values[name] = _typed_text(module, name, text)
    return values


def _typed_text(module: ModuleInstance, name: str, text: str) -> Any:
    """-var and TF_VAR_ values are strings unless the variable's type says otherwise."""
    if module.declared_type(name) in (None, "string"):
        return text
    try:
        return literal_value(parse_expression(text))
    except HclSyntaxError:
        return text


def tfvars_values(parsed: ParsedFile) -> dict[str, Any]:
    return {name: literal_value(expr) for name, expr in parsed["attrs"].items()}
