"""Words shared by the text and Markdown reports."""

from __future__ import annotations

from typing import Any

from portcullis.wording import counted

KIND_TITLES = {
    "allow-to-deny": "allow -> deny",
    "deny-to-allow": "deny -> allow",
    "step-up": "step-up changed",
    "validity": "allow served stale",
    "reasons": "status/reasons changed",
    "error": "candidate error",
}
DIMENSION_TITLES = {
    "app": "app",
    "route": "route",
    "method": "method",
    "group": "group",
    "subject": "subject",
    "reason": "reason",
    "step_up": "step-up asked",
}


def outcome(result: dict[str, Any], error: str | None = None) -> str:
    """``allow``, or ``deny 403 [step-up acr=phr max_age=300]: reason; reason``."""
    if error:
        return f"error (deny 403): {error}"
    if result.get("allow") is True:
        return "allow"
    text = f"deny {result.get('http_status')}"
    step_up = result.get("step_up")
    if isinstance(step_up, dict):
        text += f" [step-up acr={step_up.get('acr')} max_age={step_up.get('max_age')}]"
    reasons = [r for r in result.get("reasons") or [] if isinstance(r, str)]
    return text + (": " + "; ".join(reasons) if reasons else "")


def who(identity: dict[str, Any]) -> str:
    """``store-017 (groups store, store-017; amr hwk; signed in 600 s before)``."""
    if not identity.get("authenticated"):
        return "anonymous"
    parts = []
    groups = identity.get("groups")
    if isinstance(groups, list):
        parts.append("groups " + (", ".join(map(str, groups)) or "none"))
    amr = identity.get("amr")
    if isinstance(amr, list) and amr:
        parts.append("amr " + ", ".join(map(str, amr)))
    if identity.get("acr"):
        parts.append(f"acr {identity['acr']}")
    if "auth_age_s" in identity:
        parts.append(f"signed in {identity['auth_age_s']} s before")
    return f"{identity.get('subject') or identity.get('email') or '?'} ({'; '.join(parts)})"


def counts(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"{row['value']} ({row['count']})" for row in rows)


def verification(document: dict[str, Any]) -> str:
    check = document["verification"]
    if not check["verified"]:
        return "NOT VERIFIED (--no-verify): the log may have been edited"
    events, signatures = (
        counted(check["events"], "event"),
        counted(check["signatures"], "signature"),
    )
    text = f"verified: {events}, {signatures}, chain intact"
    if check["sealed"]:
        text += ", sealed"
    if check["unsigned_tail"]:
        text += f", {counted(check['unsigned_tail'], 'event')} after the last signature " + (
            "REPLAYED ALTHOUGH NO SIGNATURE VOUCHES FOR THEM (--allow-unsigned-tail)"
            if check["unsigned_tail_replayed"]
            else "(not replayed: no signature vouches for them)"
        )
    unsaid = [note for note in check["notes"] if "after the last signature" not in note]
    return "; ".join([text, *unsaid])


def baseline(document: dict[str, Any]) -> str:
    base = document["baseline"]
    if base["source"] == "log":
        revisions = ", ".join(row["value"] or "?" for row in base["revisions"]) or "none"
        return f"the decisions recorded in the log (policy revisions {revisions})"
    return f"{base['source']} (revision {base['revision']})"


def baseline_failures(document: dict[str, Any]) -> str | None:
    """The warning when the baseline policy failed on some decisions, else None."""
    failed = document["totals"]["baseline_errors"]
    if not failed:
        return None
    return (
        f"the baseline policy failed on {counted(failed, 'decision')}: each counts as its "
        "fail-closed deny, so a change there compares against an error, not a decision"
    )


def masked_results(document: dict[str, Any]) -> str | None:
    """The note when the log masked fields of logged results, else None."""
    fields = document["totals"]["masked_results"]
    if not fields:
        return None
    what = ", ".join(f"{name} in {n}" for name, n in fields.items())
    return (
        f"the log masked fields of the logged results (decision_log.mask_headers pointers "
        f"into /result/: {what}): those fields were not compared, so a change in them "
        "is not counted"
    )


_WHY = {
    "absent": "which {n} of {replayed} replayed decisions lack in the log (logged by a "
    "gateway that didn't set it yet)",
    "masked": "which the log masked in {n} of {replayed} replayed decisions",
    "cut": "which the log cut in {n} of {replayed} replayed decisions",
}


def not_comparable(document: dict[str, Any]) -> list[str]:
    """One warning per input field that made decisions not comparable (most first)."""
    section = document["not_comparable"]
    if not section["count"]:
        return []
    replayed = f"{document['totals']['replayed']:,}"
    reader = "the candidate" if document["baseline"]["source"] == "log" else "a replayed policy"
    lines = []
    if not section["reads_known"]:
        lines.append(
            "an OPA URL's reads are not known: it counts as reading all of input, so every "
            "decision whose logged input lacks a field or was masked is not comparable"
        )
    for why, rows in section["fields"].items():
        for row in rows:
            field = row["value"] if row["value"] != "(other)" else "other fields"
            where = _WHY[why].format(n=f"{row['count']:,}", replayed=replayed)
            lines.append(
                f"{reader} reads {field}, {where}: their answers can't be compared "
                "(counted as not comparable, not as unchanged)"
            )
    return lines


def not_replayed(document: dict[str, Any]) -> str:
    skipped = document["not_replayed"]
    parts = []
    labels = (
        ("gateway_refusals", "gateway refusals (no policy decision)"),
        ("shadow_events", "shadow-mode events"),
        ("other_paths", "other decision paths"),
        ("unreadable", "unreadable events"),
        ("outside_time", "outside --since/--until"),
        ("other_apps", "other apps"),
        ("not_sampled", "not sampled"),
        ("unsigned_tail", "after the last signature (unsigned)"),
    )
    for key, label in labels:
        if skipped[key]:
            parts.append(f"{skipped[key]} {label}")
    return ", ".join(parts)


def verdict(document: dict[str, Any]) -> str:
    """The one-line answer; it carries the log's caveat, as it may be all a CI log
    shows (the reports went to files)."""
    blocking = dict(document["blocking"])
    unknown = document["totals"]["not_comparable"]
    blocked_unknown = blocking.pop("not-comparable", 0)
    if not blocking and not blocked_unknown:
        allowed = document["totals"]["changed"]
        text = (
            "PASS: no change" if not allowed else f"PASS: {counted(allowed, 'change')}, all allowed"
        )
        if unknown:
            text += (
                f" ({counted(unknown, 'decision')} not comparable, allowed by --allow-change "
                "not-comparable)"
            )
    else:
        parts = []
        if blocking:
            what = ", ".join(f"{kind} {n}" for kind, n in blocking.items())
            parts.append(f"{counted(sum(blocking.values()), 'change')} not allowed ({what})")
        if blocked_unknown:
            parts.append(
                f"{counted(blocked_unknown, 'decision')} not comparable (the policy reads input "
                "fields the log lacks or masked)"
            )
        text = "FAIL: " + "; ".join(parts)
    check = document["verification"]
    if not check["verified"]:
        text += " (NOT VERIFIED: --no-verify)"
    elif check["unsigned_tail_replayed"]:
        unsigned = counted(check["unsigned_tail"], "UNSIGNED EVENT", "UNSIGNED EVENTS")
        text += f" (INCLUDES {unsigned}: --allow-unsigned-tail)"
    return text
