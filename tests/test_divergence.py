"""How two decisions differ (gateway/policy/divergence.py): the kinds replay and shadow
mode report."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.divergence import (
    ALLOW_TO_DENY,
    DENY_TO_ALLOW,
    ERROR,
    REASONS,
    STEP_UP,
    divergence,
)

ALLOWED = {"allow": True, "reasons": [], "http_status": 200, "headers": {}, "step_up": None}
STEP_UP_300 = {"acr": "phr", "max_age": 300}


def denied(*reasons: str, status: int = 403, step_up: Any = None) -> dict[str, Any]:
    return {
        "allow": False,
        "reasons": list(reasons),
        "http_status": status,
        "headers": {},
        "step_up": step_up,
    }


def field_by_field(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """The documented order of kinds, compared one field at a time (the oracle)."""
    was, now = before.get("allow") is True, after.get("allow") is True
    if was != now:
        return ALLOW_TO_DENY if was else DENY_TO_ALLOW
    if not now and before.get("step_up") != after.get("step_up"):
        return STEP_UP

    def reasons(result: dict[str, Any]) -> list[str]:
        return sorted(r for r in result.get("reasons") or [] if isinstance(r, str))

    if (
        before.get("http_status") != after.get("http_status")
        or reasons(before) != reasons(after)
        or (before.get("headers") or {}) != (after.get("headers") or {})
    ):
        return REASONS
    return None


def test_each_kind_of_change() -> None:
    assert divergence(ALLOWED, dict(ALLOWED)) is None
    assert divergence(ALLOWED, denied("no")) == ALLOW_TO_DENY
    assert divergence(denied("no"), ALLOWED) == DENY_TO_ALLOW
    assert divergence(denied("old"), denied("old", step_up=STEP_UP_300)) == STEP_UP
    assert divergence(denied("old"), denied("new")) == REASONS
    assert divergence(denied("a", "b"), denied("b", "a")) is None  # only reordered
    assert divergence(ALLOWED, dict(ALLOWED), after_failed=True) == ERROR


def test_an_allow_that_is_not_literally_true_is_a_deny_even_when_equal() -> None:
    # 1 == True in Python, so the two results compare equal as dicts; only a
    # literal true allows, so this is a flip, not "unchanged".
    assert divergence({**ALLOWED, "allow": 1}, ALLOWED) == DENY_TO_ALLOW
    assert divergence(ALLOWED, {**ALLOWED, "allow": 1}) == ALLOW_TO_DENY


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from([0.0, 1.0, 403.0, 403, "x"])
)
_results = st.fixed_dictionaries(
    {},
    optional={
        "allow": st.one_of(_scalars, st.just(True), st.just(False)),
        "reasons": st.one_of(
            st.none(), st.lists(st.one_of(st.sampled_from(["a", "b", "c"]), _scalars), max_size=3)
        ),
        "http_status": st.one_of(_scalars, st.sampled_from([401, 403, 404, 403.0])),
        "headers": st.one_of(
            st.none(), st.dictionaries(st.sampled_from(["h", "i"]), st.sampled_from(["1", "2"]))
        ),
        "step_up": st.one_of(
            st.none(), st.just(STEP_UP_300), st.just({"acr": "phr", "max_age": 300.0})
        ),
    },
)


def _lookalike(value: Any) -> Any:
    """An equal value of another type where there is one (True and 1, 403 and 403.0)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return bool(value) if value in (0, 1) else float(value)
    if isinstance(value, float):
        return int(value)
    return value


@settings(max_examples=600, derandomize=True, deadline=None, database=None)
@given(before=_results, after=_results, how=st.sampled_from(["other", "copy", "lookalike"]))
def test_the_shortcut_for_equal_results_agrees_with_the_field_by_field_comparison(
    before: dict[str, Any], after: dict[str, Any], how: str
) -> None:
    # Equal results are where the shortcut applies: copies make them common, and
    # look-alikes make them equal as dicts while differing in type.
    if how == "copy":
        after = dict(before)
    elif how == "lookalike":
        after = {key: _lookalike(value) for key, value in before.items()}
    assert divergence(before, after) == field_by_field(before, after)
