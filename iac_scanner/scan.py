"""One scan, end to end: load documents, run the rules (and checkov), apply
suppressions and the baseline, and return the findings model."""

from __future__ import annotations

import dataclasses
import difflib
import gc
import os
import subprocess
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iac_scanner import baseline
from iac_scanner.cache import ParseCache, ResultCache, content_key, inputs_key
from iac_scanner.checkov import CheckovError, CheckovRun, is_check_id
from iac_scanner.findings import (
    Finding,
    Problem,
    ScanResult,
    Unjudged,
    result_from_dict,
    result_to_dict,
)
from iac_scanner.loader import Document, LoadOptions, display_path, list_files, load, walk_dirs
from iac_scanner.modules import Resource
from iac_scanner.policy import RuleSet, RuleSetError
from iac_scanner.suppressions import (
    Suppression,
    apply,
    parse_checkov_skips,
    parse_comments,
    reason_for,
)
from policy_engine import (
    EvaluationError,
    PolicyError,
    PolicyLoadError,
    PolicySet,
    load_policy_set,
)
from policy_engine import Problem as PolicyProblem


class ScanError(Exception):
    """The scan can't run at all (bad policy, baseline or checkov): exit 2.
    Each problem is located (file:line:col) as precisely as its source allows."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _located(problems: list[PolicyProblem]) -> list[Problem]:
    """The policy set's problems as the scan reports them, each at its place."""
    return [Problem(p.file, p.message, p.line, p.col) for p in problems]


@dataclass
class ScanOptions:
    paths: list[str]
    policy: str
    var_files: list[str] = field(default_factory=list)
    cli_vars: list[tuple[str, str]] = field(default_factory=list)
    checkov: str | None = None
    fail_on: str = "low"
    # A resource a rule could not judge fails the scan (unless suppressed or baselined).
    fail_on_not_judged: bool = False
    baseline: str | None = None
    cache_dir: Path | None = None
    jobs: int = 1
    progress: bool = False
    # --sarif-root: the directory report URIs are relative to (default: git top-level).
    source_root: str | None = None


def scan(options: ScanOptions) -> ScanResult:
    distrust = _committed_cache(options.cache_dir) if options.cache_dir is not None else None
    if distrust is not None:
        options = dataclasses.replace(options, cache_dir=None)
    result = _scan_with(options)
    if distrust is not None:
        result.notes.append(distrust)
    return result


def _committed_cache(directory: Path) -> str | None:
    """Why a cache directory can't be trusted, or None. A pull request writes
    the checkout: entries committed there (or a link to such a directory) are
    results its author planted, so a cache directory holding any file the
    repository tracks is not read. When git can't say, it isn't either."""
    if not directory.exists() and not directory.is_symlink():
        return None
    top = git_toplevel(directory.parent if directory.is_symlink() else directory)
    if top is None:
        return None
    shown = display_path(directory)
    try:
        listed = subprocess.run(
            ["git", "-C", str(top), "ls-files", "-z", "--", str(directory.absolute())],
            capture_output=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        listed = None
    if listed is None or listed.returncode != 0:
        return (
            f"{shown}: can't tell with git whether the cache directory holds files "
            "committed to the repository (which a change under review can plant results "
            "in); the scan ran without it"
        )
    if listed.stdout:
        return (
            f"{shown}: the cache directory holds files committed to the repository, "
            "which a change under review can plant results in; the scan ran without it"
        )
    return None


def _scan_with(options: ScanOptions) -> ScanResult:
    try:
        accepted = baseline.load(options.baseline) if options.baseline else None
        policy_set = load_policy_set(options.policy)
        # Refused before checkov starts: it takes minutes.
        rules = _checkov_free_rules(policy_set) if options.checkov else None
        checkov = (
            CheckovRun(options.checkov, [Path(p) for p in options.paths if Path(p).exists()])
            if options.checkov
            else None
        )
    except PolicyLoadError as error:
        raise ScanError(_located(error.problems)) from None
    except PolicyError as error:
        raise ScanError([Problem("", str(error))]) from None
    except baseline.BaselineError as error:
        raise ScanError([Problem(error.file, error.message, error.line, error.column)]) from None
    except CheckovError as error:
        raise ScanError([Problem("", str(error))]) from None
    # checkov findings need the resource blocks for inline suppressions, so a
    # scan with checkov always evaluates; it takes checkov's time anyway.
    results = ResultCache(options.cache_dir if checkov is None else None)
    key = inputs_key(_inputs(options, policy_set))
    cached = results.get(key, _still_valid)
    if cached is not None:
        result = result_from_dict(cached, options.fail_on)
    else:
        result, entry = _scan(options, policy_set, rules)
        if checkov is None and entry is not None:
            results.put(key, {**entry, "result": result_to_dict(result)})
    if checkov is not None:
        _merge_checkov(result, checkov)
    result.fail_on_not_judged = options.fail_on_not_judged
    result.source_root = str(source_root(options))
    for finding in result.findings:
        finding.root_path = _relative(finding.file, Path(result.source_root))
        finding.root_module_path = _relative(finding.root_module, Path(result.source_root))
    result.not_judged = [
        dataclasses.replace(item, root_path=_relative(item.file, Path(result.source_root)))
        for item in result.not_judged
    ]
    if accepted is not None:
        result.notes.extend(baseline.apply(result.findings, accepted))
        result.not_judged = baseline.apply_not_judged(result.not_judged, accepted, result.notes)
    result.findings.sort(key=Finding.sort_key)
    return result


def git_toplevel(start: Path) -> Path | None:
    """The work tree holding start (the nearest parent with a .git), or None."""
    current = start.resolve()
    if not current.is_dir():
        current = current.parent
    for directory in (current, *current.parents):
        if (directory / ".git").exists():
            return directory
    return None


def source_root(options: ScanOptions) -> Path:
    """What report paths are relative to: --sarif-root, else the git top-level
    of the first scanned path, else that path's directory; never the working
    directory, so reports and fingerprints don't depend on where CI runs."""
    if options.source_root is not None:
        return Path(options.source_root).resolve()
    first = Path(options.paths[0]) if options.paths else Path.cwd()
    found = git_toplevel(first)
    if found is not None:
        return found
    resolved = first.resolve()
    return resolved if resolved.is_dir() else resolved.parent


def _relative(file: str, root: Path) -> str:
    """file (as reported: relative to the working directory, or absolute)
    relative to root, in POSIX form; `../modules/x/main.tf` outside it, so a
    fingerprint never depends on where the machine keeps the tree."""
    if not file:
        return file
    return Path(os.path.relpath(Path(file).resolve(), root)).as_posix()


def _inputs(options: ScanOptions, policy_set: PolicySet) -> dict[str, Any]:
    # The scanner's own code is in every key (cache.code_identity), not here.
    return {
        "cwd": os.getcwd(),
        "paths": [str(Path(p).resolve()) for p in options.paths],
        "policy": policy_set.revision,
        "var_files": [str(Path(p).resolve()) for p in options.var_files],
        "vars": options.cli_vars,
        "env": {k: v for k, v in os.environ.items() if k.startswith("TF_VAR_")},
    }


def _still_valid(entry: dict[str, Any]) -> bool:
    """Whether every input the cached result was built from is unchanged."""
    try:
        for given, dirs in entry["walks"].items():
            if [str(d) for d in walk_dirs(Path(given))] != dirs:
                return False
        for directory, names in entry["dirs"].items():
            path = Path(directory)
            current = [p.name for p in list_files(path)] if path.is_dir() else []
            if current != names:
                return False
        for file, expected in entry["files"].items():
            if content_key(Path(file).read_bytes()) != expected:
                return False
    except (OSError, KeyError, TypeError, AttributeError):
        return False
    return True


@contextmanager
def _collector_paused() -> Iterator[None]:
    """A scan builds millions of small objects that live until it ends (parsed
    files, documents): the cyclic garbage collector would walk them again and
    again as they grow (a third of a large scan's time). It runs again after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _rule_set(policy_set: PolicySet) -> RuleSet:
    try:
        rules = RuleSet(policy_set)
    except RuleSetError as error:
        raise ScanError(_located(error.problems)) from None
    if not rules.rules:
        # A repository's own policies/ (conftest's, Kubernetes admission rules) is
        # taken when no --policy is given: without this, every scan would pass.
        raise ScanError(
            [
                Problem(
                    policy_set.origin,
                    "no Terraform rules in this policy set (no package under "
                    "portcullis.terraform declares metadata and deny), so the scan would "
                    "pass anything; give --policy the set that holds them (without "
                    "--policy, ./policies is used when the current directory has one)",
                )
            ]
        )
    return rules


def _checkov_free_rules(policy_set: PolicySet) -> RuleSet:
    """The rules, for a scan with checkov: checkov's findings join the rules'
    by id, so a rule with an id in checkov's space would share a SARIF rule,
    suppressions and baseline entries with a different check. Refused."""
    rules = _rule_set(policy_set)
    clashes = [
        rules.declared_at(ref).problem(
            f"package {ref.removeprefix('data.')} declares rule id {rule.id}, an id in "
            "checkov's space (CKV_*, CKV2_*, ...): with --checkov its findings would be "
            "merged with checkov's check of that id; give the rule an id of your own"
        )
        for ref, rule in rules.rules.items()
        if is_check_id(rule.id)
    ]
    if clashes:
        raise ScanError(_located(clashes))
    return rules


def _scan(
    options: ScanOptions, policy_set: PolicySet, rules: RuleSet | None
) -> tuple[ScanResult, dict[str, Any] | None]:
    with _collector_paused():
        return _scan_documents(options, policy_set, rules)


def _scan_documents(
    options: ScanOptions, policy_set: PolicySet, rules: RuleSet | None
) -> tuple[ScanResult, dict[str, Any] | None]:
    result = ScanResult(fail_on=options.fail_on)
    if rules is None:
        rules = _rule_set(policy_set)
    for rule in rules.rules.values():
        result.rules[rule.id] = rule
    loaded = load(
        options.paths,
        LoadOptions(
            var_files=options.var_files,
            cli_vars=options.cli_vars,
            jobs=options.jobs,
            cache=ParseCache(options.cache_dir),
            progress=options.progress,
        ),
    )
    result.problems.extend(loaded.problems)
    result.notes.extend(loaded.notes)
    result.files = loaded.files
    blocks = _BlockIndex(result.notes)
    # A module that two root modules call is two instances, each its own hole:
    # one finding per root (a root module's own file names its root already).
    seen: set[tuple[str, str, str, str, str]] = set()
    for document in loaded.documents:
        result.resources += len(document.resources)
        blocks.add(document)
        for finding in _evaluate(rules, document, result):
            where = finding.root_module if finding.in_called_module else ""
            identity = (finding.rule.id, finding.resource, finding.file, finding.message, where)
            if identity not in seen:
                seen.add(identity)
                result.findings.append(finding)
    for finding in result.findings:
        apply(finding, blocks.suppressions_at(finding.file, finding.line))
    # A suppression of a rule on a resource says the rule doesn't apply there:
    # that holds whether or not the rule could judge it.
    result.not_judged = [
        dataclasses.replace(
            item, suppressed=reason_for(item.rule_id, blocks.suppressions_at(item.file, item.line))
        )
        for item in result.not_judged
    ]
    if not options.checkov:
        # With checkov, said once its checks are known (_merge_checkov).
        result.notes.extend(blocks.unknown_rule_notes(result.rules))
    result.blocks = blocks
    walks = {
        str(Path(p).resolve()): [str(d) for d in walk_dirs(Path(p))]
        for p in options.paths
        if Path(p).is_dir()
    }
    entry = {"walks": walks, "dirs": loaded.reads.dirs, "files": loaded.reads.files}
    return result, entry


def _merge_checkov(result: ScanResult, checkov: CheckovRun) -> None:
    try:
        findings = checkov.findings(display_path)
        result.checkov_version = checkov.version()
    except CheckovError as error:
        # About checkov, no file of the tree: no location, as when it is missing.
        result.problems.append(Problem("", str(error)))
        return
    blocks = result.blocks
    if isinstance(blocks, _BlockIndex):
        result.notes.extend(blocks.checkov_notes)
    clashes = set()
    for finding in findings:
        known = result.rules.setdefault(finding.rule.id, finding.rule)
        if known.source != "checkov":
            clashes.add(finding.rule.id)
        if isinstance(blocks, _BlockIndex):
            if finding.suppressed is not None:
                # checkov skips for `checkov:skip=` anywhere in the resource's
                # lines (a string, a heredoc) and without a reason: honoured only
                # for a real comment in the block that says why.
                finding.suppressed = None
                apply(finding, blocks.checkov_skips_at(finding.file, finding.line))
                if finding.suppressed is None:
                    result.notes.append(
                        f"{finding.file}:{finding.line}: checkov skipped {finding.rule.id} on "
                        f"{finding.resource} for text that is not a `# checkov:skip="
                        f"{finding.rule.id}:reason` comment in the resource block (a string, "
                        "a heredoc, or no reason): reported as a finding"
                    )
            if finding.suppressed is None:
                apply(finding, blocks.suppressions_at(finding.file, finding.line))
        result.findings.append(finding)
    if isinstance(blocks, _BlockIndex):
        result.notes.extend(blocks.unknown_rule_notes(result.rules))
    # A checkov custom check (an external checks directory) can take any id,
    # a policy rule's too: the scan can't tell their findings apart. Reported
    # together, both checks' findings kept, exit 2.
    for rule_id in sorted(clashes):
        result.problems.append(
            Problem(
                "",
                f"checkov reported check {rule_id}, the id of a policy rule: the two checks' "
                "findings can't be told apart; give one of them another id",
            )
        )


# The policy engine reads its input with a nesting limit (128 levels, its JSON
# reader's); a resource sits 3 levels down, so deeper values are refused here,
# with the file and line, before they can crash the evaluation.
MAX_VALUE_DEPTH = 100


def _too_deep(value: Any, limit: int) -> str | None:
    """The dotted path of the first value nested deeper than limit, or None."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        current, path, depth = stack.pop()
        if depth > limit:
            return path
        if isinstance(current, dict):
            stack.extend(
                (v, f"{path}.{k}" if path else str(k), depth + 1) for k, v in current.items()
            )
        elif isinstance(current, list):
            stack.extend(
                (v, f"{path}.{i}" if path else str(i), depth + 1) for i, v in enumerate(current)
            )
    return None


def _refuse_deep_values(document: Document, result: ScanResult) -> None:
    kept = []
    for resource in document.resources:
        path = _too_deep(resource.entry.get("config"), MAX_VALUE_DEPTH)
        if path is None:
            kept.append(resource)
            continue
        attribute = path.split(".")[0]
        result.problems.append(
            Problem(
                resource.entry["file"],
                f"{resource.entry['address']}: `{attribute}` nests more than {MAX_VALUE_DEPTH} "
                "levels deep, more than the policy engine evaluates; the resource was not "
                "judged (flatten the value)",
                resource.entry["line"],
            )
        )
    document.resources = kept


def _evaluate(rules: RuleSet, document: Document, result: ScanResult) -> list[Finding]:
    _refuse_deep_values(document, result)
    try:
        violations, not_judged = rules.evaluate(document.as_input())
    except EvaluationError as error:
        result.problems.append(Problem(document.name, f"policy evaluation failed: {error}"))
        return []
    by_address: dict[str, Resource] = {r.entry["address"]: r for r in document.resources}
    root_module = display_path(document.root_module)
    findings = []
    for violation in violations:
        resource = by_address.get(violation.resource)
        findings.append(
            Finding(
                rule=violation.rule,
                resource=violation.resource,
                message=violation.message,
                key=violation.key,
                file=resource.entry["file"] if resource else document.name,
                line=resource.entry["line"] if resource else 1,
                end_line=resource.end_line if resource else None,
                root_module=root_module,
            )
        )
    for item in not_judged:
        resource = by_address.get(item.resource)
        explain = resource.explain if resource else None
        result.not_judged.append(
            Unjudged(
                rule_id=item.rule.id,
                resource=item.resource,
                path=item.path,
                reason=item.reason
                or (explain(item.path) if explain and item.path else "known only after apply"),
                file=resource.entry["file"] if resource else document.name,
                line=resource.entry["line"] if resource else 1,
                stated=bool(item.reason),
            )
        )
    return findings


class _BlockIndex:
    """Each resource block's inline suppressions by file and line range, so
    they apply to policy and checkov findings alike."""

    def __init__(self, notes: list[str]) -> None:
        self.notes = notes
        self._blocks: dict[str, list[tuple[int, int, list[Suppression]]]] = {}
        self._checkov: dict[str, list[tuple[int, int, list[Suppression]]]] = {}
        self.checkov_notes: list[str] = []
        self._seen: set[tuple[str, int]] = set()

    def add(self, document: Document) -> None:
        for resource in document.resources:
            file, line = resource.entry["file"], resource.entry["line"]
            if not resource.comments or (file, line) in self._seen:
                continue
            self._seen.add((file, line))
            found = parse_comments(resource.comments, file, self.notes)
            self._blocks.setdefault(file, []).append((line, resource.end_line, found))
            # Said only when checkov runs: without it these comments mean nothing.
            skips = parse_checkov_skips(resource.comments, file, self.checkov_notes)
            self._checkov.setdefault(file, []).append((line, resource.end_line, skips))

    def suppressions_at(self, file: str, line: int) -> list[Suppression]:
        return self._at(self._blocks, file, line)

    def unknown_rule_notes(self, known: Collection[str]) -> list[str]:
        """A note for each portcullis:ignore id that names no rule (a typo, a
        wildcard): it suppresses nothing, and the finding it was meant for stays
        with no word why. Ids in checkov's space are checkov's, run or not."""
        notes = []
        for file, blocks in self._blocks.items():
            for _, _, found in blocks:
                for suppression in found:
                    for rule_id in sorted(suppression.rule_ids):
                        if rule_id in known or is_check_id(rule_id):
                            continue
                        close = difflib.get_close_matches(rule_id, list(known), n=1)
                        hint = f"; did you mean {close[0]}?" if close else ""
                        notes.append(
                            f"{file}:{suppression.line}: portcullis:ignore={rule_id} names "
                            f"no rule of the policy set, so it suppresses nothing{hint}"
                        )
        return notes

    def checkov_skips_at(self, file: str, line: int) -> list[Suppression]:
        """The real `checkov:skip=ID:reason` comments of the block at file:line."""
        return self._at(self._checkov, file, line)

    @staticmethod
    def _at(
        index: dict[str, list[tuple[int, int, list[Suppression]]]], file: str, line: int
    ) -> list[Suppression]:
        return [
            s for start, end, found in index.get(file, []) if start <= line <= end for s in found
        ]
