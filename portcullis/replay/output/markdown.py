"""The Markdown report, for a pull-request comment: a summary table, then each
change kind in a collapsed section with its breakdown and samples."""

from __future__ import annotations

from typing import Any

from portcullis.markdown_escape import cell, code
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
    lines: list[str] = []
    add = lines.append
    totals = document["totals"]
    candidate = document["candidate"]
    mark = "✅" if not document["blocking"] else "❌"
    add(f"### {mark} Policy replay: {verdict(document)}")
    add("")
    add(
        f"Candidate `{code(candidate['source'])}` (revision `{code(candidate['revision'])}`) "
        f"against {cell(baseline(document))}: "
        f"**{totals['replayed']}** {'decision' if totals['replayed'] == 1 else 'decisions'} "
        "replayed "
        f"from {', '.join(f'`{code(log)}`' for log in document['logs'])} "
        f"({cell(verification(document))})."
    )
    skipped = not_replayed(document)
    if skipped:
        add(f"Not replayed: {cell(skipped)}.")
    for warning in not_comparable(document):
        add("")
        add(f"**Warning**: {cell(warning)}.")
    add("")
    add("| change | decisions | |")
    add("|---|---:|---|")
    add(f"| unchanged | {totals['unchanged']} | |")
    allowed = set(document["allowed_changes"])
    for kind, change in document["changes"].items():
        note = ""
        if change["count"]:
            note = "allowed" if kind in allowed else "**blocking**"
        add(f"| {KIND_TITLES[kind]} | {change['count']} | {note} |")
    unknown = document["not_comparable"]
    if unknown["count"]:
        note = "allowed" if "not-comparable" in allowed else "**blocking**"
        add(f"| not comparable | {unknown['count']} | {note} |")
    if failures := baseline_failures(document):
        add("")
        add(f"**Warning**: {cell(failures)}.")
    if masked := masked_results(document):
        add("")
        add(f"**Note**: {cell(masked)}.")
    if totals["changed_with_masked_inputs"]:
        add("")
        add(
            f"{counted(totals['changed_with_masked_inputs'], 'changed decision')} had masked or "
            "cut input fields (a policy reading them saw `**REDACTED**`)."
        )
    for kind, change in document["changes"].items():
        if not change["count"]:
            continue
        add("")
        add(f"<details><summary>{KIND_TITLES[kind]}: {change['count']}</summary>")
        add("")
        for dimension, rows in change["breakdown"].items():
            if rows:
                add(f"- **{DIMENSION_TITLES[dimension]}**: {cell(counts(rows))}")
        add("")
        add("| request | who | before | after |")
        add("|---|---|---|---|")
        for sample in change["samples"]:
            add(
                f"| `{code(str(sample['method']))} {code(str(sample['path']))}` "
                f"| {cell(who(sample['identity']))} "
                f"| {cell(outcome(sample['before']))} "
                f"| {cell(outcome(sample['after'], sample['error']))} |"
            )
        add("")
        add("</details>")
    latency = document["latency"]
    parts = []
    for side in ("candidate", "baseline"):
        figures = latency[side]
        if figures.get("count"):
            parts.append(
                f"{side} p50 {figures['p50_us']} µs / p99 {figures['p99_us']} µs "
                f"({figures['measured']})"
            )
    if parts:
        add("")
        add("Policy evaluation: " + "; ".join(parts) + ".")
    return "\n".join(lines) + "\n"
