"""A decision that failed closed says why in its decision-log event, as OPA's
`error` does: {code, message}, masked, bounded and on one line, in the ocsf and
ecs forms too; `audit verify` and `policy replay` read events with it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.chain import SIGNATURE_TYPE
from gateway.audit.shipping.settings import SinkConfig
from gateway.policy.engine_words import ENGINE_WORDS
from gateway.policy.failure import MAX_ERROR_MESSAGE_CHARS, logged_error
from portcullis.cli import main
from tests.conftest import FIXTURES, POLICIES
from tests.gateway_stack import ServerFactory, Stack, start_stack
from tests.test_decision_log_shipping import caught_up, log_records, with_sinks
from tests.test_gateway_limits import limited_stack
from tests.test_shadow_mode import shadow_policy, shadow_ready, until
from tests.test_shipping_formats import ecs_problems, ocsf_problems

CONFLICT = FIXTURES / "policies" / "runtime_conflict"
QUOTING = FIXTURES / "policies" / "runtime_error_quoting_input"
CHANGING = FIXTURES / "policies" / "runtime_error_quoting_changed_input"
# An API key the policy's built-in quotes in its error (x-api-key is masked in the input).
API_KEY = "S3CR3T-api-key-value-1234567890"
OTP = "Sekret-9"  # short, not token-like: masked only because the input holds it


async def failed_closed(stack: Stack, path: str, **headers: str) -> dict[str, Any]:
    """The event of one request that the policy failed on (403, failed closed)."""
    token = stack.token("alice", groups=["warehouse"], amr=["otp"])
    async with await stack.get(path, token, headers=headers) as response:
        assert response.status == 403
        assert (await response.json())["reasons"] == ["policy evaluation failed"]
    (event,) = [e for e in await stack.events() if e["input"]["identity"]["subject"] == "alice"]
    assert event["result"]["allow"] is False
    return event


async def test_a_rule_conflict_is_logged_as_the_events_error_with_its_location(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The SIEM saw only "policy evaluation failed"; the conflict and where it is
    went to the server's stderr alone."""
    async with start_stack(aiohttp_server, tmp_path, policy=CONFLICT) as stack:
        event = await failed_closed(stack, "/wms/stock")
    rego = CONFLICT / "decision.rego"
    assert event["error"] == {
        "code": "eval_conflict_error",
        "message": f"{rego}:9:1: rule conflicts with rule at {rego}:7:1",
    }
    assert event["result"]["reasons"] == ["policy evaluation failed"]


async def test_an_allow_and_a_plain_deny_carry_no_error(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with start_stack(aiohttp_server, tmp_path) as stack:
        token = stack.token("alice", groups=["warehouse"], amr=["otp"])
        assert (await stack.get("/wms/stock", token)).status == 200
        assert (await stack.get("/pos/sales", token)).status == 403
        events = await stack.events(at_least=2)
    assert [e["result"]["allow"] for e in events] == [True, False]
    assert all("error" not in e for e in events)


async def test_a_secret_a_runtime_error_quotes_is_masked_in_the_event_and_what_ships(
    aiohttp_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """net.cidr_contains' error quotes the header value it could not parse: the
    event's message keeps the location and the engine's words, not the key; the
    OCSF event (valid 1.3.0) has it in status_detail and unmapped, the ECS
    document in error.code and error.message, with outcome failure."""
    sinks = [SinkConfig(f, "file", f, path=tmp_path / f"{f}.jsonl") for f in ("ocsf", "ecs")]
    overrides = with_sinks(tmp_path, *sinks)
    async with limited_stack(aiohttp_server, tmp_path, QUOTING, overrides) as stack:
        event = await failed_closed(stack, "/wms/stock", **{"X-Api-Key": API_KEY})
        await caught_up(stack)
    assert event["error"]["code"] == "eval_error"
    assert event["error"]["message"] == (
        f"{QUOTING / 'decision.rego'}:7:30: Error parsing **REDACTED**: invalid IP address syntax"
    )
    ocsf = next(e for e in log_records(tmp_path / "ocsf.jsonl") if e.get("class_uid") == 6001)
    ecs = next(d for d in log_records(tmp_path / "ecs.jsonl") if "http" in d)
    assert ocsf_problems(ocsf) == [] and ecs_problems(ecs) == []
    assert ocsf["status"] == "Failure"
    assert ocsf["status_detail"] == (
        f"policy evaluation failed (eval_error: {event['error']['message']})"
    )
    assert ocsf["unmapped"]["portcullis"]["error"] == event["error"]
    assert ecs["error"] == event["error"]
    assert ecs["event"]["outcome"] == "failure"
    for shipped in (stack.log_path, tmp_path / "ocsf.jsonl", tmp_path / "ecs.jsonl"):
        assert API_KEY not in shipped.read_text()
    # The server log (stderr, shipped by many deployments too) says the same.
    (said,) = [r.getMessage() for r in caplog.records if "failed closed" in r.getMessage()]
    assert said.endswith(event["error"]["message"]) and API_KEY not in caplog.text


async def test_a_query_value_shaped_as_log_lines_and_escapes_forges_nothing_in_the_error(
    aiohttp_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The policy upper-cases a query value before the built-in quotes it, so it is
    no value of the input: what the client wrote up to a newline (where the
    engine's message ends) was logged as written, escaped but not masked: a
    `" ALLOW=TRUE` field, ESC, DEL, a tab, `\\"`, a "decision ... allowed" claim
    ended the event's message and the server log line. Now none of it does."""
    forged = '" allow=true\x1b[31m\x7f\t \\"} decision 1 allowed\n2026-01-01 more'
    async with start_stack(aiohttp_server, tmp_path, policy=QUOTING) as stack:
        token = stack.token("alice", groups=["warehouse"], amr=["otp"])
        response = await stack.get("/wms/stock", token, params={"net": forged})
        assert response.status == 403
        (event,) = await stack.events()
    rego = QUOTING / "decision.rego"
    assert event["error"]["message"] == f"{rego}:9:30: Error parsing **REDACTED**"
    (said,) = [r.getMessage() for r in caplog.records if "failed closed" in r.getMessage()]
    assert said.endswith(f"failed closed: {event['error']['message']}")


def test_a_long_message_is_cut_at_a_words_end() -> None:
    """Cut inside a word (or an escape, or the mask) it would end in half of one."""
    message = "p.rego:1:1: " + "invalid value " * 100
    logged = logged_error("eval_error", message, {})["message"]
    kept, more = logged.split("...[")
    assert len(kept) <= MAX_ERROR_MESSAGE_CHARS and message.startswith(f"{kept} ")
    assert more == f"{len(message.strip()) - len(kept)} more chars]"


# Secrets shaped to slip past a search for the input's values: changed by the
# policy before a built-in quotes them (lower-cased, base64-decoded, split), too
# short, or quoted with an escape; each holds a character (".", "/", ":", "@")
# that ends a run of token-like characters.
CHANGED_SECRETS = {  # header: (value sent, what of it the built-in's error quoted)
    "x-client-net": ("Sk.Live.Abc/Def:Ghi@Jkl", "abc/def:ghi@jkl"),
    "x-client-credentials": ("YWxpY2U6cEBzcy53MHJkL3h5eg==", "p@ss.w0rd/xyz"),
    "x-tenant-session": ("acme:s3ss.i0n/t0k@n", "s3ss.i0n/t0k@n"),
    "x-otp": ("Ab1", "parsing Ab1"),
    "x-device-secret": ('pa"ss.w0rd/x', "ss.w0rd/x"),
}


async def test_a_secret_the_policy_changed_before_a_builtin_quoted_it_reaches_no_log(
    aiohttp_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Masking looked for the input's values (whole, or their first 24 characters)
    and for token-like runs: a secret the policy lower-cased, base64-decoded or split
    before net.cidr_contains quoted it, a 3-character code, or one sum() quoted
    JSON-escaped, reached the event, the OCSF and ECS sinks and the server log.
    Only the engine's own words and the policy's locations are logged now."""
    sinks = [SinkConfig(f, "file", f, path=tmp_path / f"{f}.jsonl") for f in ("ocsf", "ecs")]
    overrides = with_sinks(tmp_path, *sinks)
    async with limited_stack(aiohttp_server, tmp_path, CHANGING, overrides) as stack:
        token = stack.token("alice", groups=["warehouse"], amr=["otp"])
        for header, (sent, _) in CHANGED_SECRETS.items():
            response = await stack.get("/wms/stock", token, headers={header: sent})
            assert response.status == 403
        events = await stack.events(at_least=len(CHANGED_SECRETS))
        await caught_up(stack)
    rego = CHANGING / "decision.rego"
    messages = [e["error"]["message"] for e in events]
    assert messages[:4] == [
        f"{rego}:{line}:30: Error parsing **REDACTED**: invalid IP address syntax"
        for line in (10, 13, 16, 19)
    ]
    assert messages[4] == f"{rego}:22:30: `sum` requires array/set argument. Got **REDACTED**."
    ocsf = [e for e in log_records(tmp_path / "ocsf.jsonl") if e.get("class_uid") == 6001]
    ecs = [d for d in log_records(tmp_path / "ecs.jsonl") if "http" in d]
    said = [
        *(e["status_detail"] for e in ocsf),
        *(e["unmapped"]["portcullis"]["error"]["message"] for e in ocsf),
        *(d["error"]["message"] for d in ecs),
        *(r.getMessage() for r in caplog.records if "failed closed" in r.getMessage()),
    ]
    assert len(said) == 4 * len(CHANGED_SECRETS)
    for _, quoted in CHANGED_SECRETS.values():
        assert not [text for text in said if quoted in text]


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    secret=st.text(min_size=4, max_size=120).filter(lambda s: s.strip() == s and s.strip()),
    before=st.text(max_size=40),
    cut=st.integers(min_value=24, max_value=120),
)
def test_no_input_value_a_message_quotes_whole_or_cut_is_logged(
    secret: str, before: str, cut: int
) -> None:
    """Whatever the value, quoted whole or its first 24 or more characters (as
    `repr(value)[:80]` cuts it), it is not in the logged message."""
    document = {"attributes": {"request": {"http": {"headers": {"x-thing": secret}}}}}
    quoted = secret[:cut]
    logged = logged_error("eval_error", f"p.rego:3:1: {before}{quoted}!", document)["message"]
    if len(quoted) == len(secret) or len(quoted) >= 24:
        assert quoted not in logged.replace("**REDACTED**", "\0")


@settings(derandomize=True, max_examples=300, deadline=None)
@given(quoted=st.text(max_size=200))
def test_whatever_a_builtin_quotes_the_message_shows_only_the_engines_words(
    quoted: str,
) -> None:
    """A quoted value the input doesn't hold (the policy changed it): none of its
    characters outside the engine's own words reach the message, which stays one
    printable line."""
    message = f"p.rego:3:1: Error parsing {quoted}: invalid IP address syntax"
    logged = logged_error("eval_error", message, {})["message"]
    assert logged.isprintable()
    head, rest = logged.split(": ", 1)
    assert head == "p.rego:3:1"
    for word in rest.split(" "):
        assert word.rstrip(".,:;").strip("`(") in ENGINE_WORDS | {"**REDACTED**"}, word


def test_a_short_secret_and_a_jwt_in_a_message_are_masked() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    document = {"parsed_query": {"otp": [OTP]}}
    logged = logged_error("eval_error", f"p.rego:1:1: bad {OTP} and {jwt}", document)
    masked = "p.rego:1:1: bad **REDACTED** and **REDACTED**"
    assert logged == {"code": "eval_error", "message": masked}


async def test_a_shadow_policy_that_errors_logs_its_error_masked(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The divergence event's shadow_error held the engine's message as it came
    (the key the built-in quoted too); now masked, and the event's error too."""
    options = shadow_policy(QUOTING)
    async with start_stack(aiohttp_server, tmp_path, policy_options=options) as stack:
        await shadow_ready(stack)
        token = stack.token("alice", groups=["warehouse"], amr=["otp"])
        response = await stack.get("/wms/stock", token, headers={"X-Api-Key": API_KEY})
        assert response.status == 200  # the live policy's answer: the shadow enforces nothing
        await until(lambda: '"shadow":true' in stack.log_path.read_text())
        events = await stack.events(at_least=2)
    (divergence,) = [e for e in events if e["labels"].get("shadow") is True]
    assert divergence["error"]["code"] == "eval_error"
    assert "Error parsing **REDACTED**" in divergence["error"]["message"]
    assert divergence["result"]["shadow_error"] == divergence["error"]["message"]
    assert API_KEY not in stack.log_path.read_text()


async def test_a_log_with_errors_verifies_and_replays(
    aiohttp_server: ServerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error is part of the chained line: `audit verify` still finds the chain
    intact, and `policy replay` reads the events (the shipped policy decides them)."""
    async with start_stack(aiohttp_server, tmp_path, policy=CONFLICT) as stack:
        event = await failed_closed(stack, "/wms/stock")
        # Its signature (every sign_interval, 0.5 s here) vouches for the event.
        await until(lambda: log_records(stack.log_path)[-1].get("type") == SIGNATURE_TYPE)
    assert "error" in event
    key = str(tmp_path / "assertion.pem")
    # --live: the stack's gateway is stopped (and its log sealed) only at teardown.
    code = main(["audit", "verify", str(stack.log_path), "--key", key, "--live"])
    out = capsys.readouterr().out
    assert "chain intact" in out, out
    assert code == 0, out
    command = ["policy", "replay", "--log", str(stack.log_path), "--key", key]
    # A thread: the command runs its own event loop, as from a shell.
    code = await asyncio.to_thread(main, [*command, "--policy", str(POLICIES), "--output", "json"])
    out, err = capsys.readouterr()
    assert out.startswith("{"), err
    report = json.loads(out)
    assert code in (0, 1) and report["totals"]["replayed"] == 1
