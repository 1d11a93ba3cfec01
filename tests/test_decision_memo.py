"""The decision memo (gateway/policy/memo.py): a reused allow is exactly the decision
the policy would have made, and a policy whose declaration misses a read gets none."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit.chain import DECISION_PATH
from gateway.policy.decision import decide
from gateway.policy.memo import MARGIN_NS, DecisionMemo
from gateway.policy.reload import build_engine
from policy_engine import PolicyEngine, load_policy_set
from tests.conftest import POLICIES
from tests.gateway_stack import ServerFactory, start_stack
from tests.test_engine_fidelity import (
    NOW,
    catalogue_paths,
    random_browser_headers,
    random_input,
    random_signals,
)

SECOND = 1_000_000_000
REFUNDS_MAX_AGE = 900


# The memo is what these tests check, not the timeout. In one CI run an evaluation
# took 287 ms of its thread's CPU, over the gateway's 250 ms, on one side of the
# comparison only (most likely a full garbage collection of the test run's heap,
# a thousand tests in, counted into it); here it passes in 8 s in all.
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return build_engine(str(POLICIES), timeout_ms=TIMEOUT_MS)


def _templates() -> list[dict[str, Any]]:
    """Requests of every shape the fidelity test generates (hostile ones included), in
    threes: an allow that holds only until a max_age runs out, another allow, a deny
    (at NOW; the memo only remembers allows, and time-bound ones are where it can err)."""
    rng, signals_rng, headers_rng = random.Random(7), random.Random(8), random.Random(9)
    paths = catalogue_paths(load_policy_set(POLICIES))
    engine = build_engine(str(POLICIES), timeout_ms=TIMEOUT_MS)
    kinds: tuple[list[dict[str, Any]], ...] = ([], [], [])
    while min(len(kind) for kind in kinds) < 120:
        document = random_input(rng, paths, signals_rng, headers_rng)
        decision = asyncio.run(decide(engine, copy.deepcopy(document), "t"))
        result = decision.policy_result if isinstance(decision.policy_result, dict) else {}
        if not decision.allow:
            kinds[2].append(document)
        elif result.get("valid_until_ns") is not None:
            kinds[0].append(document)
        else:
            kinds[1].append(document)
    return [d for three in zip(*(kind[:120] for kind in kinds), strict=True) for d in three]


TEMPLATES = _templates()
POOL = 6


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def boundaries(document: dict[str, Any]) -> list[int]:
    """Clocks just around where this request's decision may change: its identity's
    auth_time + max_age (refunds and new-address step-up: 900 s), the 60 s of clock
    skew before auth_time, and the memo's own millisecond of margin."""
    auth_time = (document.get("identity") or {}).get("auth_time")
    if not isinstance(auth_time, (int, float)) or isinstance(auth_time, bool):
        return [NOW * SECOND]
    clocks = []
    for edge in (REFUNDS_MAX_AGE, -60):
        at = int(auth_time * SECOND) + edge * SECOND
        for delta in (-MARGIN_NS - 1, -MARGIN_NS, -MARGIN_NS + 1, -2, -1, 0, 1, 2, SECOND):
            clocks.append(at + delta)
    return clocks


def with_noise(document: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The same request as the policy sees it, with everything it doesn't read changed."""
    changed = copy.deepcopy(document)
    http = changed.get("attributes", {}).get("request", {}).get("http")
    if isinstance(http, dict):
        http["id"] = f"req-{rng.randrange(10**6)}"
        http["path"] = str(http.get("path", "")) + rng.choice(["", "?x=1", "?refund=all"])
        headers = http.setdefault("headers", {})
        if isinstance(headers, dict):
            headers["x-store"] = str(rng.randrange(500))
            headers["user-agent"] = rng.choice(["curl/8", "pos-terminal/2"])
    changed["parsed_query"] = rng.choice([{}, {"x": ["1"]}])
    changed.setdefault("attributes", {})["source"] = {
        "address": {"socketAddress": {"address": f"10.0.0.{rng.randrange(256)}", "portValue": 1}}
    }
    return changed


@settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    base=st.integers(0, len(TEMPLATES) - POOL),
    steps=st.lists(
        st.tuples(st.integers(0, POOL - 1), st.integers(0, 10**6), st.integers(0, 9)),
        min_size=20,
        max_size=80,
    ),
)
def test_a_memoized_decision_is_the_evaluated_one_across_max_age_and_skew_boundaries(
    engine: PolicyEngine, base: int, steps: list[tuple[int, int, int]]
) -> None:
    """Requests drawn from a small pool (so they repeat), each at a clock just around
    one of its boundaries, in any order (clocks go back too), with the fields the
    policy doesn't read changed: every answer through the memo equals a fresh
    evaluation of the same request."""
    memo = DecisionMemo.for_engine(engine)
    assert memo is not None
    for number, (index, seed, roll) in enumerate(steps):
        rng = random.Random(seed)
        document = with_noise(TEMPLATES[base + index], rng)
        if roll < 3:  # now and then, other risk signals for the same request
            signals = random_signals(rng)
            document.pop("signals", None)
            if signals is not None:
                document["signals"] = signals
        elif roll < 5:  # or the same request from another page (Sec-Fetch-Site, Origin)
            http = document.get("attributes", {}).get("request", {}).get("http")
            if isinstance(http, dict) and isinstance(http.get("headers"), dict):
                for name in ("sec-fetch-site", "origin"):
                    http["headers"].pop(name, None)
                http["headers"].update(random_browser_headers(rng))
        document["now_ns"] = rng.choice(boundaries(document))
        through_memo = run(memo.decide(copy.deepcopy(document), f"d{number}"))
        evaluated = run(decide(engine, copy.deepcopy(document), f"d{number}"))
        assert (through_memo.result(), through_memo.error) == (
            evaluated.result(),
            evaluated.error,
        ), document


def allowed_refund(now_ns: int, auth_time: int) -> dict[str, Any]:
    return {
        "attributes": {"request": {"http": {"method": "POST", "headers": {}, "id": "r"}}},
        "parsed_path": ["pos", "refunds", "42"],
        "parsed_query": {},
        "route": {"app": "pos"},
        "identity": {
            "authenticated": True,
            "subject": "manager-17",
            "groups": ["store"],
            "amr": ["pwd", "hwk"],
            "acr": "phr",
            "auth_time": auth_time,
            "method": "bearer",
        },
        "now_ns": now_ns,
    }


def test_the_same_request_again_is_answered_from_the_memo(engine: PolicyEngine) -> None:
    memo = DecisionMemo.for_engine(engine)
    assert memo is not None
    first = run(memo.decide(allowed_refund(NOW * SECOND, NOW - 10), "a"))
    again = with_noise(allowed_refund(NOW * SECOND + SECOND, NOW - 10), random.Random(1))
    second = run(memo.decide(again, "b"))
    assert first.allow and not first.memo_hit
    assert second.memo_hit and second.result() == first.result()
    assert second.decision_id == "b"


def test_a_remembered_allow_is_not_reused_once_max_age_has_passed(engine: PolicyEngine) -> None:
    """Refunds need a sign-in within 900 s: the allow remembered at 10 s is not
    handed out at 900 s + 1 ns, where the policy asks for a step-up."""
    memo = DecisionMemo.for_engine(engine)
    assert memo is not None
    auth_time = NOW - 10
    assert run(memo.decide(allowed_refund(NOW * SECOND, auth_time), "a")).allow
    late = (auth_time + REFUNDS_MAX_AGE) * SECOND + 1
    decision = run(memo.decide(allowed_refund(late, auth_time), "b"))
    assert not decision.allow and not decision.memo_hit
    assert decision.step_up == {"acr": "phr", "max_age": REFUNDS_MAX_AGE}


def test_a_remembered_allow_is_not_reused_for_another_identity(engine: PolicyEngine) -> None:
    memo = DecisionMemo.for_engine(engine)
    assert memo is not None
    assert run(memo.decide(allowed_refund(NOW * SECOND, NOW - 10), "a")).allow
    other = allowed_refund(NOW * SECOND, NOW - 10)
    other["identity"]["groups"] = ["analyst"]
    decision = run(memo.decide(other, "b"))
    assert not decision.allow and not decision.memo_hit


def test_a_remembered_allow_is_not_reused_for_the_same_post_from_another_site(
    engine: PolicyEngine,
) -> None:
    """A refund posted from the app's own page (Sec-Fetch-Site: same-origin) is
    remembered; the same POST with the same session sent by a sibling subdomain's
    page differs only in that header, and is refused, not served from the memo."""
    memo = DecisionMemo.for_engine(engine)
    assert memo is not None
    own_page = allowed_refund(NOW * SECOND, NOW - 10)
    own_page["identity"]["method"] = "session"
    own_page["attributes"]["request"]["http"]["headers"] = {"sec-fetch-site": "same-origin"}
    assert run(memo.decide(copy.deepcopy(own_page), "a")).allow
    assert run(memo.decide(copy.deepcopy(own_page), "b")).memo_hit
    sibling = copy.deepcopy(own_page)
    sibling["attributes"]["request"]["http"]["headers"] = {
        "sec-fetch-site": "same-site",
        "origin": "https://shop.corp.example",
    }
    decision = run(memo.decide(sibling, "c"))
    assert not decision.allow and not decision.memo_hit
    assert decision.reasons[0].startswith("requires a request from the app's own pages")


def test_a_deny_is_always_evaluated_again(engine: PolicyEngine) -> None:
    memo = DecisionMemo.for_engine(engine)
    assert memo is not None
    document = allowed_refund(NOW * SECOND, NOW - 10)
    document["identity"]["amr"] = ["pwd"]
    document["identity"]["acr"] = "pwd"
    for decision_id in ("a", "b"):
        decision = run(memo.decide(copy.deepcopy(document), decision_id))
        assert not decision.allow and not decision.memo_hit


def write_policy(directory: Path, rules: str, imports: str = "") -> str:
    directory.mkdir()
    (directory / "p.rego").write_text(
        f"package portcullis.gateway\nimport rego.v1\n{imports}"
        'decision := {"allow": allow, "reasons": [], "http_status": 403, "headers": {},'
        ' "step_up": null, "valid_until_ns": null}\n' + rules
    )
    return str(directory)


def test_a_header_the_policy_reads_but_did_not_declare_can_not_ride_a_remembered_allow(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The declaration leaves out the header the allow depends on: no memo at all,
    so the request from another store is decided (and denied) on its own."""
    source = write_policy(
        tmp_path / "p",
        'reads := ["/identity"]\n'
        "default allow := false\n"
        'allow if input.attributes.request.http.headers["x-store"] == "1"\n',
    )
    engine = build_engine(source, timeout_ms=250)
    with caplog.at_level(logging.WARNING, "portcullis.policy"):
        assert DecisionMemo.for_engine(engine) is None
    assert "reads input.attributes.request.http.headers.x-store" in caplog.text


def test_the_memo_off_warning_says_decisions_are_unchanged_and_how_to_keep_the_memo(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new rule reading the request path turned the memo off with a WARNING on every
    reload that said only what was missing: its author couldn't tell whether the
    policy was broken, nor what to change."""
    source = write_policy(
        tmp_path / "p",
        'reads := ["/identity"]\n'
        "default allow := false\n"
        'allow if input.attributes.request.http.path == "/wms/stock"\n',
    )
    with caplog.at_level(logging.WARNING, "portcullis.policy"):
        assert DecisionMemo.for_engine(build_engine(source, timeout_ms=250)) is None
    [record] = caplog.records
    assert record.getMessage() == (
        "decision memo off: the policy reads input.attributes.request.http.path, which "
        "data.portcullis.gateway.reads does not account for; every request is evaluated "
        "(decisions are unchanged, only not reused). To keep the memo, declare every input "
        "pointer the policy reads in `reads`, and call no builtin whose answer changes on its "
        'own (README "Decision memo")'
    )


@pytest.mark.parametrize(
    "rules",
    [
        'reads := ["/identity"]\ndefault allow := false\nallow if object.get(input, "ok", false)\n',
        'reads := ["/identity"]\ndefault allow := false\nallow if { x := input; x.ok }\n',
        'reads := ["/identity"]\ndefault allow := false\nallow if { k := "ok"; input[k] }\n',
    ],
    ids=["object_get_on_input", "input_aliased", "computed_key"],
)
def test_a_policy_that_reads_the_whole_input_gets_no_memo(tmp_path: Path, rules: str) -> None:
    engine = build_engine(write_policy(tmp_path / "p", rules), timeout_ms=250)
    assert DecisionMemo.for_engine(engine) is None


def test_a_read_through_another_package_must_be_declared_too(tmp_path: Path) -> None:
    source = write_policy(
        tmp_path / "p",
        'reads := ["/identity"]\ndefault allow := false\nallow if stores.known\n',
        imports="import data.lib.stores\n",
    )
    (Path(source) / "lib.rego").write_text(
        'package lib.stores\nimport rego.v1\nknown if input.store == "1"\n'
    )
    assert DecisionMemo.for_engine(build_engine(source, timeout_ms=250)) is None
    (Path(source) / "p.rego").write_text(
        (Path(source) / "p.rego").read_text().replace('["/identity"]', '["/identity", "/store"]')
    )
    assert DecisionMemo.for_engine(build_engine(source, timeout_ms=250)) is not None


def test_a_read_through_an_import_alias_below_a_non_ascii_comment_must_be_declared(
    tmp_path: Path,
) -> None:
    """regorus' spans count UTF-8 bytes: read as characters, the alias came out
    wrong and the reads through it escaped the declaration check."""
    source = write_policy(
        tmp_path / "p",
        'reads := ["/identity"]\ndefault allow := false\nallow if req.store == "1"\n',
        imports="# Prüfung ü\nimport input.request as req\n",
    )
    assert DecisionMemo.for_engine(build_engine(source, timeout_ms=250)) is None


@pytest.mark.parametrize(
    "rule",
    [
        "allow if time.now_ns() < 1800000000000000000",
        'allow if uuid.rfc4122("request") != ""',
        'allow if rand.intn("x", 2) == 0',
    ],
    ids=["clock", "uuid", "randomness"],
)
def test_a_policy_whose_answer_changes_on_its_own_gets_no_memo(
    tmp_path: Path, rule: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A builtin that reads the clock or randomness (http.send, the network, is refused
    at load): the same input can get another answer later, whatever the declaration
    says."""
    source = write_policy(
        tmp_path / "p", f'reads := ["/identity"]\ndefault allow := false\n{rule}\n'
    )
    with caplog.at_level(logging.WARNING, "portcullis.policy"):
        assert DecisionMemo.for_engine(build_engine(source, timeout_ms=250)) is None
    assert "calls " in caplog.text


@pytest.mark.parametrize("declared", ['"/identity"', "[]", '["identity"]', '["/"]', "[1]"])
def test_a_malformed_declaration_gets_no_memo(tmp_path: Path, declared: str) -> None:
    source = write_policy(
        tmp_path / "p", f"reads := {declared}\ndefault allow := false\nallow if input.identity\n"
    )
    assert DecisionMemo.for_engine(build_engine(source, timeout_ms=250)) is None


def test_no_declaration_no_memo(tmp_path: Path) -> None:
    source = write_policy(tmp_path / "p", "default allow := false\nallow if input.identity\n")
    assert DecisionMemo.for_engine(build_engine(source, timeout_ms=250)) is None


def test_an_allow_without_valid_until_ns_is_not_remembered(tmp_path: Path) -> None:
    source = write_policy(
        tmp_path / "p", 'reads := ["/identity"]\ndefault allow := false\nallow if input.identity\n'
    )
    (Path(source) / "p.rego").write_text(
        (Path(source) / "p.rego").read_text().replace(', "valid_until_ns": null', "")
    )
    memo = DecisionMemo.for_engine(build_engine(source, timeout_ms=250))
    assert memo is not None
    document = {"identity": {"sub": "a"}, "now_ns": NOW * SECOND}
    assert run(memo.decide(dict(document), "a")).allow
    assert not run(memo.decide(dict(document), "b")).memo_hit


def test_a_reused_allow_carries_the_policy_s_reasons_and_headers(tmp_path: Path) -> None:
    """A policy that explains its allows: a reuse answers (and the log records) the
    same reasons and headers as the evaluation it reuses, so replaying the log
    against the same policy, or shadowing it, shows no change."""
    directory = tmp_path / "p"
    directory.mkdir()
    (directory / "p.rego").write_text(
        "package portcullis.gateway\nimport rego.v1\n"
        'reads := ["/identity"]\n'
        'decision := {"allow": true, "reasons": ["member of the app groups"],'
        ' "http_status": 200, "headers": {"x-team": "warehouse"}, "step_up": null,'
        ' "valid_until_ns": null} if input.identity.subject == "a"\n'
    )
    engine = build_engine(str(directory), timeout_ms=250)
    memo = DecisionMemo.for_engine(engine)
    assert memo is not None
    document = {"identity": {"subject": "a"}, "now_ns": NOW * SECOND}
    first = run(memo.decide(copy.deepcopy(document), "a"))
    again = run(memo.decide({**document, "now_ns": NOW * SECOND + SECOND}, "b"))
    assert not first.memo_hit and again.memo_hit
    assert again.result() == first.result()
    assert again.result()["reasons"] == ["member of the app groups"]


async def test_the_gateway_answers_a_repeated_request_from_the_memo_and_logs_each(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """Through a real gateway: the second identical request is a memo hit, answered
    and logged like the first (its own decision id, metrics.decision_memo_hit), and
    a request the policy must refuse is still refused."""
    async with start_stack(aiohttp_server, tmp_path) as running:
        token = running.token("alice", groups=["warehouse"], amr=["pwd", "otp"])
        answers = [await running.get("/wms/stock", token) for _ in range(3)]
        assert [a.status for a in answers] == [200, 200, 200]
        assert len({await a.text() for a in answers}) == 1
        outsider = running.token("mallory", groups=["store"], amr=["pwd", "otp"])
        assert (await running.get("/wms/stock", outsider)).status == 403
        assert running.gateway.metrics.memo_hits.value() == 2
        await running.gateway.decision_log.close()  # type: ignore[union-attr]
    events = [json.loads(line) for line in running.log_path.read_text().splitlines()]
    decisions = [e for e in events if e.get("path") == DECISION_PATH]
    assert [e["result"]["allow"] for e in decisions] == [True, True, True, False]
    assert [e["metrics"].get("decision_memo_hit") for e in decisions] == [None, 1, 1, None]
    assert len({e["decision_id"] for e in decisions}) == 4
    assert decisions[1]["result"] == decisions[0]["result"]
