"""The terminal report: totals, each change kind broken down, samples, latency, rate."""

from __future__ import annotations

import re
from typing import Any

from portcullis.replay.output.describe import (
    DIMENSION_TITLES,
    KIND_TITLES,
    baseline,
    baseline_failures,
    counts,
    masked_results,
    not_comparable,
    not_replayed,
    outcome,
    verdict,
    verification,
    who,
)
from portcullis.wording import counted


def render(document: dict[str, Any]) -> str:
    document = _printable(document)
    lines: list[str] = []
    add = lines.append
    candidate = document["candidate"]
    totals = document["totals"]
    add(f"Policy replay: candidate {candidate['source']} (revision {candidate['revision']})")
    add(f"  against {baseline(document)}")
    add(f"  log: {', '.join(document['logs'])}: {verification(document)}")
    for warning in not_comparable(document):
        add(f"warning: {warning}")
    add("")
    skipped = not_replayed(document)
    add(
        f"Replayed {counted(totals['replayed'], 'decision')}"
        + (f" (not replayed: {skipped})" if skipped else "")
    )
    add(f"  {'unchanged':<24}{totals['unchanged']:>8}")
    allowed = set(document["allowed_changes"])
    for kind, change in document["changes"].items():
        note = ""
        if change["count"]:
            note = "  allowed by --allow-change" if kind in allowed else "  BLOCKING"
        add(f"  {KIND_TITLES[kind]:<24}{change['count']:>8}{note}")
    unknown = document["not_comparable"]
    if unknown["count"]:
        note = "  allowed by --allow-change" if "not-comparable" in allowed else "  BLOCKING"
        add(f"  {'not comparable':<24}{unknown['count']:>8}{note}")
    if failures := baseline_failures(document):
        add(f"  warning: {failures}")
    if masked := masked_results(document):
        add(f"  note: {masked}")
    if totals["changed_with_masked_inputs"]:
        add(
            f"  ({counted(totals['changed_with_masked_inputs'], 'changed decision')} had masked "
            "or cut input fields: a policy reading them saw **REDACTED**)"
        )
    for kind, change in document["changes"].items():
        if not change["count"]:
            continue
        add("")
        add(f"{KIND_TITLES[kind]}: {change['count']}")
        for dimension, rows in change["breakdown"].items():
            if rows:
                add(f"  by {DIMENSION_TITLES[dimension] + ':':<15}{counts(rows)}")
        for sample in change["samples"]:
            add(f"  - {sample['method']} {sample['path']}  {who(sample['identity'])}")
            add(f"      before: {outcome(sample['before'])}")
            add(f"      after:  {outcome(sample['after'], sample['error'])}")
            add(
                f"      at {sample['where']} ({sample['timestamp']}, "
                f"decision {sample['decision_id']})"
            )
    if unknown["count"]:
        add("")
        add(f"not comparable: {unknown['count']}")
        as_replayed = [f"{kind} ({n})" for kind, n in unknown["as_replayed"].items() if n]
        add(f"  {'replayed as:':<18}{', '.join(as_replayed)} (not evidence)")
        for sample in unknown["samples"]:
            fields = ", ".join(f"{f['field']} {f['why']}" for f in sample["not_comparable"])
            add(f"  - {sample['method']} {sample['path']}  {who(sample['identity'])}")
            add(f"      reads: {fields}")
            add(f"      logged: {outcome(sample['before'])}")
            add(f"      replayed: {outcome(sample['after'], sample['error'])}")
            add(f"      at {sample['where']} ({sample['timestamp']})")
    add("")
    latency = document["latency"]
    add("Latency (policy evaluation):")
    for side in ("candidate", "baseline"):
        figures = latency[side]
        if figures.get("count"):
            add(
                f"  {side:<10} p50 {figures['p50_us']} us, p99 {figures['p99_us']} us, "
                f"max {figures['max_us']} us "
                f"({figures['measured']}, {counted(figures['count'], 'decision')})"
            )
    rate = document["rate"]
    if rate["decisions_per_second"] is not None:
        checked = (
            f"the chain check before it took {rate['verify_seconds']} s"
            if document["verification"]["verified"]
            else "no chain check (--no-verify)"
        )
        add(
            f"Rate: {totals['replayed']:,} {'decision' if totals['replayed'] == 1 else 'decisions'}"
            f" replayed in {rate['seconds']} s, "
            f"{rate['cpu_seconds']} s of this process's CPU: "
            f"{rate['decisions_per_second']:,} decisions/s, "
            f"{rate['decisions_per_cpu_second']:,} per CPU second (reading the log, "
            f"evaluating, comparing; {checked}, loading the policies is not counted)"
        )
    add("")
    add(verdict(document))
    return "\n".join(lines) + "\n"


# Logged text (claims, paths, reasons) reaches a terminal: an escape sequence or a
# carriage return in it would act there (recolour, rewrite the verdict line).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _printable(value: Any) -> Any:
    """``value`` with every control character in its strings shown as an escape."""
    if isinstance(value, str):
        return _CONTROL.sub(_escaped, value)
    if isinstance(value, dict):
        return {key: _printable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_printable(item) for item in value]
    return value


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
