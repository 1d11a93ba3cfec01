"""The findings model every report renders: rules, findings, and the scan's outcome."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

SEVERITIES = ("low", "medium", "high", "critical")


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else SEVERITIES.index("medium")


def normalise_severity(value: object) -> str:
    """checkov reports null (or INFO) severities without a platform key: medium."""
    text = str(value).lower() if isinstance(value, str) else ""
    if text == "info":
        return "low"
    return text if text in SEVERITIES else "medium"


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    severity: str
    remediation: str = ""
    source: str = "portcullis"  # or "checkov"
    help_uri: str = ""


@dataclass
class Finding:
    rule: Rule
    resource: str
    message: str
    file: str
    line: int
    end_line: int | None = None
    # Why it doesn't count: an inline `portcullis:ignore` / `checkov:skip` reason.
    suppressed: str | None = None
    # Listed in the --baseline file: reported, but doesn't fail the build.
    baselined: bool = False
    # What this finding is about, stable from scan to scan: the key the rule
    # emits, or its message (two findings of one rule on one resource differ here).
    key: str = ""
    # The file relative to the source root (the git top-level), so the
    # fingerprint doesn't change with the directory the scan ran from.
    root_path: str = ""
    # The root module the finding was evaluated in (its directory, or the plan
    # file), as reported and relative to the source root: a module that two
    # root modules call has a finding in each.
    root_module: str = ""
    root_module_path: str = ""

    @property
    def in_called_module(self) -> bool:
        """Whether the finding's file is a called module's, so the file alone
        doesn't say which root module's resource it is (modules/app/main.tf
        called by envs/prod and envs/staging)."""
        root = self.root_module_path or self.root_module
        if not root:
            return False
        file = PurePosixPath(self.root_path or self.file)
        return PurePosixPath(root) not in (file, file.parent)

    @property
    def fingerprint(self) -> str:
        """Stable across commits that move the resource within its file and
        across working directories; distinct for distinct findings, so
        baselines and code scanning keep tracking each finding. The root
        module is part of it only for a finding in a called module: a root
        module's own file already names it, and those fingerprints stay as
        they were before roots were told apart."""
        return self._fingerprint(with_root=self.in_called_module)

    @property
    def rootless_fingerprint(self) -> str:
        """The fingerprint without the root module, as version 2 baselines hold it."""
        return self._fingerprint(with_root=False)

    def _fingerprint(self, with_root: bool) -> str:
        identity = self.key or self.message
        text = f"{self.rule.id}\0{self.resource}\0{self.root_path or self.file}\0{identity}"
        if with_root:
            text += f"\0{self.root_module_path or self.root_module}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    @property
    def counts(self) -> bool:
        """Whether this finding can fail the build."""
        return self.suppressed is None and not self.baselined

    def sort_key(self) -> tuple[str, int, str, str, str]:
        return (self.file, self.line, self.rule.id, self.resource, self.root_module)


@dataclass(frozen=True)
class Unjudged:
    """A resource a rule applies to but could not judge, and why."""

    rule_id: str
    resource: str
    path: str  # the value the rule needed, dotted ("storage_encrypted")
    reason: str  # why it is unknown ("var.encrypted has no value")
    file: str
    line: int
    # The reason is the rule's own words, not why a value is unknown.
    stated: bool = False
    # The file relative to the source root, as Finding.root_path.
    root_path: str = ""
    # A `portcullis:ignore` of the rule on the resource: the team has said why
    # the rule doesn't apply there, judged or not.
    suppressed: str | None = None
    # Listed in the --baseline file (written with --fail-on-not-judged).
    baselined: bool = False

    @property
    def counts(self) -> bool:
        """Whether this can fail the build (with --fail-on-not-judged)."""
        return self.suppressed is None and not self.baselined

    @property
    def fingerprint(self) -> str:
        """One per rule and resource, whatever values it lacked: a baseline
        entry accepts "this rule can't judge this resource yet". The leading
        marker keeps it apart from every finding's fingerprint."""
        text = f"not judged\0{self.rule_id}\0{self.resource}\0{self.root_path or self.file}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    @property
    def place(self) -> tuple[str, str]:
        """Which resource: its address in its file. Two root modules may each
        declare `aws_lb.pos`; those are two resources, not one."""
        return (self.resource, self.root_path or self.file)

    @property
    def why(self) -> str:
        if self.stated and self.path:
            return f"`{self.path}`: {self.reason}"
        return f"`{self.path}` is unknown ({self.reason})" if self.path else self.reason


def not_judged_count(items: list[Unjudged]) -> int:
    """How many (rule, resource) pairs could not be judged, as the summaries say."""
    return len({(item.rule_id, item.place) for item in items})


def not_judged_by_rule(items: list[Unjudged]) -> dict[str, dict[str, Any]]:
    """Per rule: how many resources it could not judge, and the reasons with counts."""
    summary: dict[str, dict[str, Any]] = {}
    for item in sorted(items, key=lambda u: (u.rule_id, u.resource, u.path)):
        entry = summary.setdefault(item.rule_id, {"resources": set(), "reasons": {}})
        entry["resources"].add(item.place)
        entry["reasons"][item.why] = entry["reasons"].get(item.why, 0) + 1
    return {
        rule: {"resources": len(entry["resources"]), "reasons": entry["reasons"]}
        for rule, entry in sorted(summary.items())
    }


@dataclass(frozen=True)
class Problem:
    """Something that makes the scan exit 2: a file that can't be parsed, a bad
    variable file, a policy that doesn't load, checkov failing. file is "" for
    one that is about no file (checkov missing, an option)."""

    file: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if not self.file:
            return self.message
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"


@dataclass
class ScanResult:
    findings: list[Finding] = field(default_factory=list)
    rules: dict[str, Rule] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    # Things worth knowing that don't fail the scan (an unresolved remote module,
    # a suppression without a reason).
    notes: list[str] = field(default_factory=list)
    files: int = 0
    resources: int = 0
    fail_on: str = "low"
    checkov_version: str | None = None
    # The directory SARIF URIs and fingerprints are relative to (git top-level).
    source_root: str | None = None
    # Resources a rule applies to but could not judge (values it needs are unknown).
    not_judged: list[Unjudged] = field(default_factory=list)
    # --fail-on-not-judged: such a resource fails the scan as a finding does.
    fail_on_not_judged: bool = False
    # The resource blocks' inline suppressions (scan.py), for merging checkov.
    blocks: object = None

    def failing(self) -> list[Finding]:
        floor = severity_rank(self.fail_on)
        return [f for f in self.findings if f.counts and severity_rank(f.rule.severity) >= floor]

    def failing_not_judged(self) -> list[tuple[str, tuple[str, str]]]:
        """With --fail-on-not-judged, each (rule, resource) not judged that no
        suppression or baseline entry accepts; otherwise none."""
        if not self.fail_on_not_judged:
            return []
        return sorted({(item.rule_id, item.place) for item in self.not_judged if item.counts})

    def exit_code(self) -> int:
        if self.problems:
            return 2
        return 1 if self.failing() or self.failing_not_judged() else 0


def result_to_dict(result: ScanResult) -> dict[str, Any]:
    """A ScanResult as plain data (for the scan cache)."""
    return {
        "rules": [asdict(rule) for rule in result.rules.values()],
        "findings": [{**asdict(f), "rule": f.rule.id} for f in result.findings],
        "problems": [asdict(p) for p in result.problems],
        "not_judged": [asdict(u) for u in result.not_judged],
        "notes": result.notes,
        "files": result.files,
        "resources": result.resources,
    }


def result_from_dict(data: dict[str, Any], fail_on: str) -> ScanResult:
    rules = {r["id"]: Rule(**r) for r in data["rules"]}
    findings = [Finding(**{**f, "rule": rules[f["rule"]]}) for f in data["findings"]]
    return ScanResult(
        findings=findings,
        rules=rules,
        problems=[Problem(**p) for p in data["problems"]],
        not_judged=[Unjudged(**u) for u in data.get("not_judged", [])],
        notes=list(data["notes"]),
        files=int(data["files"]),
        resources=int(data["resources"]),
        fail_on=fail_on,
    )
