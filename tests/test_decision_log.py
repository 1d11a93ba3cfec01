"""The decision log: OPA-shaped events, masked secrets, a signed hash chain, attacks on it."""

from __future__ import annotations

import asyncio
import base64
import copy
import errno
import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import chain, writer
from gateway.audit.chain import GENESIS, REDACTED, line_hash
from gateway.audit.reader import SignedHead, VerifyResult, verify_log
from gateway.audit.writer import DecisionLog, DecisionLogError
from tests.conftest import FIXTURES, ROOT

LOG_FIXTURES = FIXTURES / "decision_log"
KID = "gateway-test"


def load_key(name: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((LOG_FIXTURES / name).read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


SIGNING_KEY = load_key("signing_key.pem")
OTHER_KEY = load_key("other_key.pem")
PUBLIC_KEYS = {KID: SIGNING_KEY.public_key()}


def request_input(n: int = 0) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((LOG_FIXTURES / "request_input.json").read_text())
    data["attributes"]["request"]["http"]["id"] = f"req-{n}"
    return data


def decision(allow: bool) -> dict[str, Any]:
    return {
        "allow": allow,
        "reasons": [] if allow else ["group store required"],
        "http_status": 200 if allow else 403,
        "headers": {},
        "step_up": None,
    }


def record(log: DecisionLog, n: int, *, allow: bool | None = None) -> None:
    log.record(
        decision_id=str(uuid.uuid4()),
        input=request_input(n),
        result=decision(n % 3 != 0 if allow is None else allow),
        revision="rev-1",
        metrics={"timer_rego_query_eval_ns": 41_000 + n, "timer_server_handler_ns": 90_000},
    )


async def write_log(path: Path, events: int, **options: Any) -> DecisionLog:
    """A closed log of ``events`` decisions, written through DecisionLog."""
    options.setdefault("sign_every", 50)
    key = options.pop("key", SIGNING_KEY)
    log = DecisionLog(path, key, key_id=KID, labels={"id": "gw-test"}, **options)
    await log.start()
    for n in range(events):
        record(log, n)
    await log.close()
    return log


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def append_line_of(path: Path, size: int) -> str:
    """Append a line of ``size`` bytes (a JSON record) to ``path``, written and
    hashed a MiB at a time; its chain hash."""
    start, end = b'{"decision_id":"big","pad":"', b'"}'
    digest = hashlib.sha256(start)
    piece = b"x" * (1 << 20)
    with path.open("ab") as file:
        file.write(start)
        left = size - len(start) - len(end)
        while left:
            chunk = piece[: min(left, len(piece))]
            file.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
        file.write(end + b"\n")
    digest.update(end)
    return digest.hexdigest()


def record_of(size: int, seq: int) -> bytes:
    """A JSON record of exactly ``size`` bytes."""
    start, end = b'{"pad":"', f'","seq":{seq}}}'.encode()
    return start + b"x" * (size - len(start) - len(end)) + end


def event_indexes(lines: list[bytes]) -> list[int]:
    return [i for i, line in enumerate(lines) if "decision_id" in json.loads(line)]


def first_problem(result: VerifyResult) -> tuple[int, str]:
    assert result.problems, "tampering not detected"
    return result.problems[0].line, result.problems[0].kind


@pytest.fixture
async def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "decisions.jsonl"
    await write_log(path, 420)
    return path


# -- writing --------------------------------------------------------------


async def test_log_of_many_events_verifies(log_file: Path) -> None:
    result = verify_log([log_file], PUBLIC_KEYS)
    assert result.ok, result.problems
    assert result.complete
    assert result.events == 420
    assert result.unsigned_tail == 0
    assert result.signatures == 1 + 420 // 50 + 1  # start, every 50 events, close
    assert result.last_signed_at is not None


async def test_event_has_opa_decision_log_fields(log_file: Path) -> None:
    event = json.loads(lines_of(log_file)[1])
    assert list(event)[:8] == [
        "decision_id",
        "timestamp",
        "path",
        "input",
        "result",
        "labels",
        "metrics",
        "bundles",
    ]
    assert uuid.UUID(event["decision_id"]).version == 4
    assert event["path"] == "portcullis/gateway/decision"
    assert event["bundles"] == {"portcullis": {"revision": "rev-1"}}
    assert event["labels"]["id"] == "gw-test" and event["labels"]["version"]
    assert event["metrics"]["timer_rego_query_eval_ns"] == 41_000
    assert event["result"]["allow"] is False
    # RFC 3339, UTC, nanoseconds like OPA: 2024-05-01T12:00:00.123456789Z
    stamp = event["timestamp"]
    assert len(stamp) == 30 and stamp.endswith("Z") and stamp[19] == "."
    assert event["seq"] == 1


async def test_chain_links_each_line_to_the_previous_line_bytes(log_file: Path) -> None:
    lines = lines_of(log_file)
    first = json.loads(lines[0])
    assert first["type"] == "chain_signature" and first["reason"] == "start"
    assert first["head"] == GENESIS and first["seq"] == 0
    for before, line in itertools.pairwise(lines):
        record = json.loads(line)
        link = record.get("prev_hash", record.get("head"))
        assert link == hashlib.sha256(before).hexdigest()
    last = json.loads(lines[-1])
    assert last["reason"] == "close" and last["seq"] == 420


async def test_credential_headers_never_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    await write_log(path, 20, mask_headers=["X-Api-Key", "/input/identity/email"])
    raw = path.read_bytes()
    assert b"SECRET" not in raw
    assert b"alice@example.com" not in raw
    event = json.loads(lines_of(path)[1])
    headers = event["input"]["attributes"]["request"]["http"]["headers"]
    assert headers["authorization"] == REDACTED
    assert headers["Cookie"] == REDACTED  # header names match case-insensitively
    assert headers["x-api-key"] == REDACTED
    assert headers["user-agent"] == "curl/8.5"
    assert event["input"]["identity"]["email"] == REDACTED
    assert "/input/attributes/request/http/headers/authorization" in event["masked"]
    assert "/input/identity/email" in event["masked"]
    assert verify_log([path], PUBLIC_KEYS).complete


async def test_caller_input_is_not_mutated(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.jsonl", SIGNING_KEY, key_id=KID, mask_headers=["x-api-key"])
    await log.start()
    given = request_input()
    result = decision(True)
    before = copy.deepcopy((given, result))
    log.record(decision_id="d-1", input=given, result=result, revision="r", metrics={})
    await log.close()
    assert (given, result) == before


async def test_close_writes_everything_recorded_before_it(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID)
    await log.start()
    same_input = request_input()
    for n in range(10_000):
        log.record(
            decision_id=str(n), input=same_input, result=decision(True), revision="r", metrics={}
        )
    await log.close()
    ids = [json.loads(line).get("decision_id") for line in lines_of(path)]
    assert [i for i in ids if i is not None] == [str(n) for n in range(10_000)]
    assert log.stats["events_written"] == 10_000
    assert log.stats["queue_depth"] == 0
    assert verify_log([path], PUBLIC_KEYS).complete


async def test_record_after_close_is_refused_not_dropped(tmp_path: Path) -> None:
    log = await write_log(tmp_path / "d.jsonl", 1)
    with pytest.raises(RuntimeError, match="closed"):
        record(log, 2)


async def test_signs_every_interval_while_running(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID, sign_interval=0.1, flush_interval=0.01)
    await log.start()
    record(log, 1)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if log.stats["signatures_written"] >= 2:
            break
    live = verify_log([path], PUBLIC_KEYS)
    assert live.ok and live.unsigned_tail == 0 and not live.sealed  # signed, still running
    await log.close()
    assert verify_log([path], PUBLIC_KEYS).complete


async def test_record_from_event_loop_while_writer_writes(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID, sign_every=500, flush_interval=0.001)
    await log.start()
    lags: list[float] = []

    async def ticker() -> None:  # how long the loop is kept from running a ready task
        # In CPU time of this process: the writer thread's work while it held the GIL
        # counts, the time the OS gave other processes doesn't (wall-clock lags
        # passed 0.25 s on a loaded machine with the writer doing nothing of it).
        while True:
            start = time.process_time()
            await asyncio.sleep(0)
            lags.append(time.process_time() - start)

    async def requests(worker: int) -> None:
        for n in range(2_000):
            record(log, worker * 10_000 + n)
            if n % 50 == 0:
                await asyncio.sleep(0)

    tick = asyncio.create_task(ticker())
    await asyncio.gather(*(requests(w) for w in range(5)))
    tick.cancel()
    written_while_recording = log.stats["events_written"]
    await log.close()
    result = verify_log([path], PUBLIC_KEYS)
    assert result.complete and result.events == 10_000
    assert written_while_recording > 0 or log.stats["events_written"] == 10_000
    assert max(lags) < 0.25  # the writer never holds the loop for long


async def test_keys_that_are_not_strings_are_written_as_json_strings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A policy result with an integer or null key (Rego objects may have any key)
    is written by orjson, keys as JSON strings (not by the slow fallback writer,
    which would warn), and the chain verifies."""
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID)
    await log.start()
    result = {**decision(True), "counts": {1: "one", None: "none", "s": 2}}
    log.record(decision_id="d-1", input=request_input(), result=result, revision="r", metrics={})
    await log.close()
    event = json.loads(lines_of(path)[1])
    assert event["result"]["counts"] == {"1": "one", "null": "none", "s": 2}
    assert "fallback writer" not in caplog.text
    assert verify_log([path], PUBLIC_KEYS).complete


async def test_a_client_sending_bytes_that_are_not_utf8_on_every_request_gets_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Header bytes that are not UTF-8 (kept as lone surrogates) send the event to
    the slower fallback writer, in record(), on the request's path: every event is
    written with its bytes, but the app log says so once a minute, not per request."""
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID)
    await log.start()
    raw = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
    for n in range(200):
        given = request_input(n)
        given["attributes"]["request"]["http"]["headers"]["x-note"] = raw
        log.record(decision_id=f"d-{n}", input=given, result=decision(True), revision="r",
                   metrics={})  # fmt: skip
    await log.close()
    events = [json.loads(line) for line in lines_of(path) if b"decision_id" in line]
    assert len(events) == 200
    for event in events:  # the reader gives back the bytes as they came
        assert event["input"]["attributes"]["request"]["http"]["headers"]["x-note"] == raw
    assert caplog.text.count("needs the fallback writer") == 1
    assert verify_log([path], PUBLIC_KEYS).complete


async def test_an_event_the_redactor_fails_on_is_logged_without_its_input(
    tmp_path: Path,
) -> None:
    """Masking runs in record(), on the request's path: a bug in it must neither
    fail the request, nor write the unmasked input, nor lose the decision."""

    class Broken(writer.Redactor):
        def apply(self, event: dict[str, Any]) -> tuple[list[str], list[str]]:
            if event["input"]["attributes"]["request"]["http"]["id"] == "req-1":
                raise ValueError("a bug")
            return super().apply(event)

    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID, redactor=Broken())
    await log.start()
    for n in range(3):
        record(log, n)
    await log.close()
    events = [json.loads(line) for line in lines_of(path) if b"decision_id" in line]
    assert len(events) == 3
    assert events[1]["input"] == {"not_logged": "redaction failed: ValueError"}
    assert events[1]["masked"] == ["/input"]
    assert events[1]["result"] == decision(True)
    assert b"SECRET" not in path.read_bytes()
    assert events[2]["input"]["attributes"]["request"]["http"]["id"] == "req-2"
    assert verify_log([path], PUBLIC_KEYS).complete


async def test_a_redactor_failure_never_writes_a_result_field_a_pointer_masks(
    tmp_path: Path,
) -> None:
    """`mask_headers` pointers may name fields of the result (README: `/result/...`).
    When masking the input fails (a bug), the event keeps its result: the pointers
    into it are still applied, and listed, or the file holds the secret they hide."""

    class Broken(writer.Redactor):
        def apply(self, event: dict[str, Any]) -> tuple[list[str], list[str]]:
            raise ValueError("a bug")

    path = tmp_path / "decisions.jsonl"
    pointer = "/result/headers/x-internal-token"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID, redactor=Broken(mask_headers=[pointer]))
    await log.start()
    result = {**decision(True), "headers": {"x-internal-token": "SECRET-upstream", "x-a": "1"}}
    log.record(decision_id="d-1", input=request_input(), result=result, revision="r", metrics={})
    await log.close()
    assert b"SECRET" not in path.read_bytes()
    event = json.loads(next(line for line in lines_of(path) if b"decision_id" in line))
    assert event["result"]["allow"] is True
    assert event["result"]["headers"] == {"x-internal-token": REDACTED, "x-a": "1"}
    assert event["masked"] == ["/input", pointer]
    assert result["headers"]["x-internal-token"] == "SECRET-upstream"  # the caller's, as given
    assert verify_log([path], PUBLIC_KEYS).complete


async def test_a_redactor_failing_on_the_result_too_writes_neither_input_nor_result(
    tmp_path: Path,
) -> None:
    class Broken(writer.Redactor):
        def apply(self, event: dict[str, Any]) -> tuple[list[str], list[str]]:
            raise ValueError("a bug")

        def mask_pointers(self, event: dict[str, Any], root: str) -> list[str]:
            raise KeyError("another")

    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID, redactor=Broken())
    await log.start()
    log.record(decision_id="d-1", input=request_input(), result=decision(False), revision="r",
               metrics={})  # fmt: skip
    await log.close()
    event = json.loads(next(line for line in lines_of(path) if b"decision_id" in line))
    assert event["result"] == {"not_logged": "redaction failed: KeyError"}
    assert event["masked"] == ["/input", "/result"]
    assert verify_log([path], PUBLIC_KEYS).complete


async def test_input_not_even_the_fallback_writer_can_write_never_fails_record(
    tmp_path: Path,
) -> None:
    """record() runs on the request's path: what orjson and the stdlib both refuse (a
    cycle, a tuple key, nesting past either's depth) together with what the plain
    copy kept as is (an integer past 64 bits, a surrogate surrogateescape can't
    encode, an object whose str() raises) must still be logged, never raise."""

    class Unprintable:
        def __str__(self) -> str:
            raise LookupError("no")

    nested: Any = 1
    for _ in range(5000):
        nested = [nested]
    loop: dict[str, Any] = {}
    loop["self"] = loop
    odd = [
        {"n": 2**70, "loop": loop},
        {"s": "\ud800", (1, 2): "tuple key"},
        {"n": -(2**70), "deep": nested},
        {"o": Unprintable(), "loop": loop},
        {"o": Unprintable()},
        {"n": 10**5000, "loop": loop},  # more digits than str() writes
    ]
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID)
    await log.start()
    for n, value in enumerate(odd):
        log.record(decision_id=f"d-{n}", input=value, result=decision(True), revision="r",
                   metrics={})  # fmt: skip
    await log.close()
    events = [json.loads(line) for line in lines_of(path) if b"decision_id" in line]
    assert [e["decision_id"] for e in events] == [f"d-{n}" for n in range(len(odd))]
    assert events[0]["input"]["n"] == str(2**70)
    assert events[1]["input"]["s"] == "\ufffd"
    assert events[2]["input"]["n"] == str(-(2**70))
    assert events[3]["input"]["o"] == events[4]["input"]["o"] == "<unprintable Unprintable>"
    assert events[5]["input"]["n"] == f"<integer of {(10**5000).bit_length()} bits>"
    assert verify_log([path], PUBLIC_KEYS).complete


def test_record_is_cheap(tmp_path: Path) -> None:
    """record() is on every request's path, and masks and serializes the event
    (instead of the writer thread doing it while holding the GIL the event loop
    needs): ~6 us for bench/gateway.py's events, ~17 us for this one, with a
    secret in most of its headers; stdlib json instead of orjson would be several
    times that. Measured in this thread's CPU time: what record() costs, not how
    the OS shared the cores (the wall clock passed 20 us a call on a loaded
    machine)."""

    async def measure() -> float:
        log = DecisionLog(tmp_path / "d.jsonl", SIGNING_KEY, key_id=KID)
        await log.start()
        given, result = request_input(), decision(True)
        metrics = {"timer_rego_query_eval_ns": 40_000}
        ids = [str(n) for n in range(20_000)]
        start = time.thread_time()
        for decision_id in ids:
            log.record(
                decision_id=decision_id, input=given, result=result, revision="r", metrics=metrics
            )
        per_call = (time.thread_time() - start) / len(ids)
        await log.close()
        return per_call

    per_call = asyncio.run(measure())
    print(f"record(): {per_call * 1e6:.2f} us per call")
    assert per_call < 50e-6


async def test_json_nested_past_the_parsers_depth_never_stops_the_writer_with_a_traceback(
    tmp_path: Path,
) -> None:
    """Someone who can write the log's directory leaves a last line, or a .head
    file, of 5,000 nested arrays: the stdlib parser raises RecursionError, not
    ValueError. A last line like that is damage the chain goes on from (verify
    names it); a .head file like that stops the start with a clear error naming
    it, as any damaged .head file does."""
    path = tmp_path / "decisions.jsonl"
    path.write_bytes(b"[" * 5000 + b"\n")
    log = DecisionLog(path, SIGNING_KEY, key_id=KID)
    await log.start()
    record(log, 1)
    await log.close()
    problems = verify_log([path], PUBLIC_KEYS).problems
    assert [(p.line, p.kind) for p in problems][:1] == [(1, "damaged")], problems

    other = tmp_path / "other.jsonl"
    Path(f"{other}.head").write_bytes(b"[" * 5000)
    with pytest.raises(DecisionLogError, match=r"other\.jsonl\.head is damaged"):
        await DecisionLog(other, SIGNING_KEY, key_id=KID).start()


async def test_second_writer_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    first = DecisionLog(path, SIGNING_KEY, key_id=KID)
    await first.start()
    second = DecisionLog(path, SIGNING_KEY, key_id=KID)
    with pytest.raises(DecisionLogError, match="in use by another process"):
        await second.start()
    await first.close()


async def test_unopenable_path_fails_at_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    log = DecisionLog(tmp_path / "file" / "d.jsonl", SIGNING_KEY, key_id=KID)
    with pytest.raises(DecisionLogError, match="cannot open decision log"):
        await log.start()


def test_refuses_a_key_that_is_not_p256() -> None:
    with pytest.raises(ValueError, match="P-256"):
        DecisionLog("x", ec.generate_private_key(ec.SECP384R1()), key_id=KID)


async def test_restart_on_an_existing_file_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    await write_log(path, 30)
    await write_log(path, 20)
    result = verify_log([path], PUBLIC_KEYS)
    assert result.complete and result.events == 50
    seqs = [json.loads(line)["seq"] for line in lines_of(path)]
    assert seqs[-1] == 50


async def test_reopen_with_the_file_not_moved_is_ignored_not_a_write_error(
    tmp_path: Path,
) -> None:
    """SIGUSR1 twice after one logrotate, or an operator's test: reopening the same
    file failed on the writer's own lock (an error line, write_errors 1, a rotate
    and a start in the middle of one file). Now there is nothing to reopen."""
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID, flush_interval=0.01)
    await log.start()
    record(log, 1)
    log.reopen()
    log.reopen()
    record(log, 2)
    await log.close()
    reasons = [json.loads(line).get("reason") for line in lines_of(path)]
    assert reasons == ["start", None, None, "close"]
    assert log.stats["write_errors"] == 0
    assert verify_log([path], PUBLIC_KEYS).complete


async def deleted_after_one_event(path: Path) -> DecisionLog:
    """A running log with one event written, its file then deleted (`rm`)."""
    log = DecisionLog(path, SIGNING_KEY, key_id=KID, flush_interval=0.01)
    await log.start()
    record(log, 1)
    await asyncio.sleep(0.1)
    path.unlink()
    return log


async def reopened_at(path: Path, within: float) -> None:
    """Wait until the writer has switched to a new file at ``path``: its start
    record is there. The file alone is not enough: the writer creates it to see
    that the path can be opened, and an event recorded before the switch itself
    still goes to the old file (the error line says so)."""
    deadline = time.monotonic() + within
    while not (path.is_file() and path.stat().st_size):
        assert time.monotonic() < deadline, f"{path} not reopened within {within} s"
        await asyncio.sleep(0.05)


async def test_a_log_file_deleted_under_the_writer_is_said_and_the_path_reopened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`rm decisions.log` while the gateway runs: every event after it went to the
    unlinked file, silently (no error, write_errors 0), and was gone with the
    process. Now it is an error line, and the path is opened again within a
    second: the chain goes on there."""
    path = tmp_path / "decisions.jsonl"
    log = await deleted_after_one_event(path)
    await reopened_at(path, within=5.0)  # the writer looks once a second
    record(log, 2)
    await log.close()
    assert "the path no longer names the file being written" in caplog.text
    records = [json.loads(line) for line in lines_of(path)]
    assert records[0]["reason"] == "start" and records[0]["head"] != GENESIS
    assert sum(1 for r in records if "decision_id" in r) == 1  # the event after the reopen


async def test_a_deleted_log_whose_path_cannot_be_opened_yet_is_reopened_once_it_can(
    tmp_path: Path,
) -> None:
    """The reopen after a deletion was tried once: if the path couldn't be opened
    then (a read-only remount, a directory in the way), every later event went to
    the unlinked file for good."""
    path = tmp_path / "decisions.jsonl"
    log = await deleted_after_one_event(path)
    path.mkdir()  # in the way for a while
    await asyncio.sleep(1.5)
    path.rmdir()
    await reopened_at(path, within=5.0)
    record(log, 2)
    await log.close()
    records = [json.loads(line) for line in lines_of(path)]
    assert records[0]["reason"] == "start"
    assert sum(1 for r in records if "decision_id" in r) == 1


async def test_logrotates_create_waits_for_its_sigusr1_without_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """mv and create, then SIGUSR1 1.5 s later (a delayed or shared postrotate):
    the writer took it for a log moved without SIGUSR1 (an error line)."""
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID, flush_interval=0.01)
    await log.start()
    record(log, 1)
    await asyncio.sleep(0.1)
    path.rename(tmp_path / "decisions.jsonl.1")
    path.touch()
    await asyncio.sleep(1.5)
    log.reopen()
    record(log, 2)
    await log.close()
    assert "no longer names the file" not in caplog.text
    assert verify_log([tmp_path / "decisions.jsonl.1", path], PUBLIC_KEYS).complete


async def test_reopen_after_logrotate_chains_the_files(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    rotated = tmp_path / "decisions.jsonl.1"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID, sign_every=25, flush_interval=0.01)
    await log.start()
    for n in range(60):
        record(log, n)
    await asyncio.sleep(0.1)
    path.rename(rotated)  # what logrotate does, then SIGHUP
    log.reopen()
    for n in range(60, 100):
        record(log, n)
    await log.close()

    both = verify_log([rotated, path], PUBLIC_KEYS)
    assert both.complete and both.events == 100
    assert json.loads(lines_of(rotated)[-1])["reason"] == "rotate"
    # The new file alone verifies only when told where it continues from.
    alone = verify_log([path], PUBLIC_KEYS)
    assert first_problem(alone) == (1, "start")
    after = verify_log([rotated], PUBLIC_KEYS).tail_hash
    alone = verify_log([path], PUBLIC_KEYS, after=after)
    assert alone.complete
    assert any("continues from" in note for note in alone.notes)
    newest_first = verify_log([path, rotated], PUBLIC_KEYS)  # as logrotate numbers them
    assert newest_first.complete and newest_first.events == 100


async def test_a_missing_rotated_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID, flush_interval=0.01)
    await log.start()
    for generation in (1, 2):
        for n in range(10):
            record(log, n)
        await asyncio.sleep(0.05)
        path.rename(tmp_path / f"decisions.jsonl.{generation}")
        log.reopen()
        await reopened_at(path, within=10.0)  # else the next rename finds no file
    record(log, 99)
    await log.close()
    files = [tmp_path / "decisions.jsonl.1", tmp_path / "decisions.jsonl"]
    result = verify_log(files, PUBLIC_KEYS)
    assert first_problem(result) == (1, "deleted")
    assert result.problems[0].file == str(path)
    assert "10 events are missing" in result.problems[0].message


async def test_write_failure_is_counted_and_nothing_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: half a chunk is written, then ENOSPC; then the disk is back."""
    real_write_all = writer._write_all
    disk_full = True

    def full_disk(fd: int, data: bytes) -> None:
        if disk_full:
            real_write_all(fd, data[: len(data) // 2])  # a partial line hits the file
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(fd, data)

    monkeypatch.setattr(writer, "_write_all", full_disk)
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID, flush_interval=0.01)
    await log.start()
    for n in range(300):
        record(log, n)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if log.stats["write_errors"] >= 2:
            break
    stats = log.stats
    assert stats["write_errors"] >= 2
    assert stats["events_written"] == 0
    assert stats["queue_depth"] == 300
    disk_full = False
    await log.close()
    assert log.stats["events_written"] == 300
    result = verify_log([path], PUBLIC_KEYS)
    assert result.complete and result.events == 300, result.problems


async def test_full_disk_then_reopen_on_another_file_keeps_every_event(tmp_path: Path) -> None:
    """A real ENOSPC (/dev/full), then the operator points the log elsewhere."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    path = tmp_path / "decisions.jsonl"
    path.symlink_to("/dev/full")
    log = DecisionLog(path, SIGNING_KEY, key_id=KID, flush_interval=0.01)
    await log.start()
    for n in range(100):
        record(log, n)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if log.stats["write_errors"]:
            break
    assert log.stats["write_errors"] >= 1 and log.stats["queue_depth"] == 100
    path.unlink()  # the new file is a real one
    log.reopen()
    await log.close()
    assert log.stats["events_written"] == 100
    result = verify_log([path], PUBLIC_KEYS)
    assert result.complete and result.events == 100, result.problems


async def test_torn_last_line_after_a_crash_is_reported_and_writing_continues(
    tmp_path: Path,
) -> None:
    path = tmp_path / "decisions.jsonl"
    await write_log(path, 10)
    with path.open("ab") as file:
        file.write(b'{"decision_id":"cut-off mid-wr')
    await write_log(path, 10)
    result = verify_log([path], PUBLIC_KEYS)
    assert first_problem(result) == (13, "damaged")
    assert len(result.problems) == 1  # the chain continues past it
    assert result.events == 20


async def test_a_restart_on_a_log_ending_in_a_line_of_hundreds_of_megabytes_chains_on_from_it(
    tmp_path: Path,
) -> None:
    """The writer reads the log's last line at start, a block at a time back from
    the end, each block prepended to all it held: a last line of 300 MB (appended
    while the gateway was stopped) would take it about half an hour (32 MB took
    22 s) and ~2 GB. It is found holding one block and hashed in pieces: the
    gateway starts in seconds within 1 GiB, its start record links to that line's
    exact hash with the count of the events before it, and verify reports the line."""
    path = tmp_path / "decisions.jsonl"
    await write_log(path, 3)
    number, offset = len(lines_of(path)) + 1, path.stat().st_size
    size = 300_000_000
    digest = append_line_of(path, size)
    restart = (
        "import asyncio, resource, sys; from pathlib import Path; "
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
        "from tests.test_decision_log import write_log; "
        "asyncio.run(write_log(Path(sys.argv[1]), 3))"
    )
    subprocess.run([sys.executable, "-c", restart, path], cwd=ROOT, timeout=60, check=True)
    with path.open("rb") as file:
        file.seek(offset + size + 1)
        start = json.loads(file.readline())
    assert (start["reason"], start["head"], start["seq"]) == ("start", digest, 3)
    result = verify_log([path], PUBLIC_KEYS)
    assert [(problem.line, problem.kind) for problem in result.problems] == [(number, "damaged")]
    assert result.events == 6


def test_a_line_at_the_limit_is_read_and_one_byte_over_is_only_hashed(tmp_path: Path) -> None:
    """MAX_LINE_BYTES is the longest line a reader takes whole: one byte more and it
    is hashed in pieces (its chain hash exact), kept as its first bytes, and
    reported damaged with its length; the lines after it read as before, and a
    change to its bytes after verification is still found."""
    from gateway.audit.chain import MAX_LINE_BYTES
    from gateway.audit.reader import OVERLONG_HEAD, LogChanged, iter_lines, iter_records

    path = tmp_path / "decisions.jsonl"
    at, over = record_of(MAX_LINE_BYTES, 2), record_of(MAX_LINE_BYTES + 1, 3)
    longer = record_of(MAX_LINE_BYTES + (3 << 20), 5)  # read on in several pieces
    raws = [b'{"seq":1}', at, over, b'{"seq":4}', longer]
    write_lines(path, raws)
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size - 1)  # the last one torn: no newline yet
    lines = list(iter_lines([path]))
    assert [line.digest for line in lines] == [line_hash(raw) for raw in raws]
    assert [line.overlong for line in lines] == [0, 0, len(over), 0, len(longer)]
    assert [line.torn for line in lines] == [False] * 4 + [True]
    assert lines[1].raw == at and lines[1].record is not None and lines[1].record["seq"] == 2
    assert lines[2].raw == over[:OVERLONG_HEAD] and lines[2].record is None
    assert lines[3].record == {"seq": 4}
    result = verify_log([path], {})
    messages = {problem.line: problem.message for problem in result.problems}
    assert messages[2] == "record has no chain fields (prev_hash/head, seq)"  # read, parsed
    assert messages[3] == (
        f"a line of {MAX_LINE_BYTES + 1} bytes, over the {MAX_LINE_BYTES} a line may hold "
        "(the gateway's are some KB; only hashed, not read): edited or damaged"
    )
    assert messages[5] == (
        f"a line of {len(longer)} bytes, with no newline at its end, over the "
        f"{MAX_LINE_BYTES} a line may hold (the gateway's are some KB; only hashed, not read): "
        "edited or damaged"
    )
    assert result.extents[str(path)].size == path.stat().st_size
    records = [record for _, _, record in iter_records([path], result.extents)]
    assert [r and r["seq"] for r in records] == [1, 2, None, 4, None]
    with path.open("r+b") as file:
        file.seek(-20, os.SEEK_END)  # in the last line, past its first MAX_LINE_BYTES
        file.write(b"y")
    with pytest.raises(LogChanged):
        list(iter_records([path], result.extents))


# -- attacks: each on a copy of a good log ---------------------------------


async def test_flipped_allow_is_reported_at_the_modified_line(log_file: Path) -> None:
    lines = lines_of(log_file)
    index = event_indexes(lines)[99]
    assert b'"allow":false' in lines[index]
    lines[index] = lines[index].replace(b'"allow":false', b'"allow":true')
    result = verify_log([write_lines(log_file, lines)], PUBLIC_KEYS)
    assert first_problem(result) == (index + 1, "modified")


async def test_deleted_line_in_the_middle_is_reported(log_file: Path) -> None:
    lines = lines_of(log_file)
    index = event_indexes(lines)[200]
    del lines[index]
    result = verify_log([write_lines(log_file, lines)], PUBLIC_KEYS)
    assert first_problem(result) == (index + 1, "deleted")


async def test_deleted_events_before_the_final_signature_are_reported(log_file: Path) -> None:
    lines = lines_of(log_file)
    del lines[-4:-1]
    result = verify_log([write_lines(log_file, lines)], PUBLIC_KEYS)
    assert first_problem(result) == (len(lines), "deleted")
    assert "3 event(s) deleted" in result.problems[0].message


async def test_deleted_lines_at_the_beginning_are_reported(log_file: Path) -> None:
    lines = lines_of(log_file)
    result = verify_log([write_lines(log_file, lines[5:])], PUBLIC_KEYS)
    assert first_problem(result) == (1, "start")


def forge_event(template: bytes, prev: bytes) -> bytes:
    event = json.loads(template)
    event["decision_id"] = str(uuid.uuid4())
    event["input"]["identity"]["subject"] = "mallory"
    event["result"] = decision(True)
    event["prev_hash"] = hashlib.sha256(prev).hexdigest()
    return json.dumps(event, separators=(",", ":")).encode()


def relink(lines: list[bytes], start: int) -> list[bytes]:
    """Recompute prev_hash/head and seq from ``start`` on, as a careful forger would."""
    out = lines[:start]
    seq = json.loads(out[-1])["seq"]
    for line in lines[start:]:
        record = json.loads(line)
        link = "head" if record.get("type") == "chain_signature" else "prev_hash"
        if link == "prev_hash":
            seq += 1
        record["seq"] = seq
        record[link] = hashlib.sha256(out[-1]).hexdigest()
        out.append(json.dumps(record, separators=(",", ":")).encode())
    return out


async def test_forged_line_inserted_is_reported(log_file: Path) -> None:
    lines = lines_of(log_file)
    index = event_indexes(lines)[150]
    lines.insert(index, forge_event(lines[index], lines[index - 1]))
    result = verify_log([write_lines(log_file, lines)], PUBLIC_KEYS)
    assert first_problem(result) == (index + 1, "inserted")


async def test_forged_line_with_recomputed_chain_is_caught_by_the_signature(
    log_file: Path,
) -> None:
    lines = lines_of(log_file)
    index = event_indexes(lines)[150]
    lines.insert(index, forge_event(lines[index], lines[index - 1]))
    lines = relink(lines, index + 1)
    result = verify_log([write_lines(log_file, lines)], PUBLIC_KEYS)
    line, kind = first_problem(result)
    assert kind == "signature"
    assert index + 1 < line <= index + 60  # the next signature after the forgery
    assert json.loads(lines[line - 1])["type"] == "chain_signature"


async def test_swapped_lines_are_reported_as_reordering(log_file: Path) -> None:
    lines = lines_of(log_file)
    index = event_indexes(lines)[120]
    lines[index], lines[index + 1] = lines[index + 1], lines[index]
    result = verify_log([write_lines(log_file, lines)], PUBLIC_KEYS)
    assert first_problem(result) == (index + 1, "reordered")
    assert len(result.problems) == 1


async def test_swapped_lines_with_recomputed_chain_are_still_reordering(log_file: Path) -> None:
    lines = lines_of(log_file)
    index = event_indexes(lines)[120]
    lines[index], lines[index + 1] = lines[index + 1], lines[index]
    relinked = relink(lines, index)
    # keep the original seq numbers: relink renumbers, a forger who wants the
    # reorder to stick would have to too, and then the signature catches it
    result = verify_log([write_lines(log_file, relinked)], PUBLIC_KEYS)
    assert first_problem(result)[1] == "signature"
    lines_kept_seq = lines[:index]
    for line in lines[index:]:
        record = json.loads(line)
        key = "head" if record.get("type") == "chain_signature" else "prev_hash"
        record[key] = hashlib.sha256(lines_kept_seq[-1]).hexdigest()
        lines_kept_seq.append(json.dumps(record, separators=(",", ":")).encode())
    result = verify_log([write_lines(log_file, lines_kept_seq)], PUBLIC_KEYS)
    assert first_problem(result) == (index + 1, "reordered")


async def test_truncated_tail_with_the_final_signature_is_incomplete(log_file: Path) -> None:
    lines = lines_of(log_file)
    result = verify_log([write_lines(log_file, lines[:-6])], PUBLIC_KEYS)
    assert result.ok and not result.complete
    assert result.unsigned_tail == 15


async def test_tail_cut_exactly_at_a_signature_is_not_sealed(log_file: Path) -> None:
    lines = lines_of(log_file)
    signatures = [i for i, line in enumerate(lines) if b"chain_signature" in line]
    result = verify_log([write_lines(log_file, lines[: signatures[-2] + 1])], PUBLIC_KEYS)
    assert result.ok and result.unsigned_tail == 0
    assert not result.sealed and not result.complete


async def test_signature_forged_with_another_key_is_reported(log_file: Path) -> None:
    lines = lines_of(log_file)
    index = event_indexes(lines)[300]
    lines[index] = lines[index].replace(b'"allow":true', b'"allow":false')
    lines = relink(lines, index + 1)
    # the forger re-signs every later signature record with a key of their own
    for i in range(index + 1, len(lines)):
        record = json.loads(lines[i])
        if record.get("type") != "chain_signature":
            continue
        message = chain.signing_input(
            record["reason"], record["seq"], record["head"], record["signed_at"], record["kid"]
        )
        der = OTHER_KEY.sign(message, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        record["signature"] = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        lines[i] = json.dumps(record, separators=(",", ":")).encode()
        lines = relink(lines, i + 1) if i + 1 < len(lines) else lines
    result = verify_log([write_lines(log_file, lines)], PUBLIC_KEYS)
    line, kind = first_problem(result)
    assert kind == "signature" and "does not verify" in result.problems[0].message
    assert line > index + 1


async def test_signature_with_unknown_kid_is_reported(log_file: Path) -> None:
    result = verify_log([log_file], {"someone-else": SIGNING_KEY.public_key()})
    assert first_problem(result) == (1, "signature")
    assert "unknown key id 'gateway-test'" in result.problems[0].message


def test_file_that_is_not_a_log_is_damaged(tmp_path: Path) -> None:
    result = verify_log([LOG_FIXTURES / "not_a_log.txt"], PUBLIC_KEYS)
    assert first_problem(result) == (1, "damaged")
    assert result.events == 0 and result.signatures == 0


def test_writer_leaves_no_file_descriptor_open(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    asyncio.run(write_log(tmp_path / "d.jsonl", 5))
    assert len(os.listdir("/proc/self/fd")) <= before


# -- runs, files and the end of the log: what only an outside head can show ---


async def signed_up_to(log: DecisionLog, seq: int, within: float) -> None:
    """Wait until the writer thread has written a signature at ``seq`` (the start
    record's is seq 0): ``start()`` returns before the thread writes anything."""
    deadline = time.monotonic() + within
    while (log.signed_head() or {}).get("seq") != seq:
        assert time.monotonic() < deadline, f"no signature at seq {seq} within {within} s"
        await asyncio.sleep(0.01)


def head_of(log: DecisionLog) -> SignedHead:
    """The head the admin listener would publish for ``log``, checked like verify does."""
    return SignedHead.from_record(log.signed_head(), PUBLIC_KEYS, "test")


async def two_runs(path: Path) -> tuple[int, DecisionLog]:
    """Run 1 (30 events) and run 2 (20 events) of the gateway on one file; returns
    the size of the file after run 1 and run 2's writer."""
    await write_log(path, 30)
    size = path.stat().st_size
    return size, await write_log(path, 20)


async def test_truncation_after_first_runs_seal_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    size, second = await two_runs(path)
    with path.open("r+b") as file:
        file.truncate(size)  # the file now ends with run 1's close seal
    # The file alone can't tell: a run's seal is a valid end.
    assert verify_log([path], PUBLIC_KEYS).complete
    result = verify_log([path], PUBLIC_KEYS, head=head_of(second))
    assert first_problem(result) == (len(lines_of(path)), "truncated")
    assert "20 event(s) and their signatures are missing" in result.problems[0].message


async def test_deleted_first_run_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    size, _ = await two_runs(path)
    data = path.read_bytes()
    run_one_end = line_hash(data[:size].rstrip(b"\n").rsplit(b"\n", 1)[-1])
    path.write_bytes(data[size:])  # the file now begins at run 2's start record
    result = verify_log([path], PUBLIC_KEYS)
    assert first_problem(result) == (1, "start")
    assert "30 event(s) were logged before it" in result.problems[0].message
    # Told where it continues from, it verifies (e.g. run 1 was archived elsewhere).
    assert verify_log([path], PUBLIC_KEYS, after=run_one_end).complete
    wrong = verify_log([path], PUBLIC_KEYS, after="ab" * 32)
    assert first_problem(wrong) == (1, "start")
    assert "not from --after" in wrong.problems[0].message


async def test_a_log_continuing_after_one_event_counts_it_in_the_singular(
    tmp_path: Path,
) -> None:
    """A second run after a first of one event read "(1 events before it" and
    "this log's start says 1 events came before it"."""
    path = tmp_path / "decisions.jsonl"
    await write_log(path, 1)
    size = path.stat().st_size
    await write_log(path, 1)
    data = path.read_bytes()
    run_one_end = line_hash(data[:size].rstrip(b"\n").rsplit(b"\n", 1)[-1])
    path.write_bytes(data[size:])  # run 2 alone, its start record counting run 1's event
    result = verify_log([path], PUBLIC_KEYS, after=run_one_end)
    assert result.complete
    assert f"continues from {run_one_end} (1 event before it, as its start" in result.notes[0]
    cut = verify_log([path], PUBLIC_KEYS, after=run_one_end, after_seq=3)
    assert first_problem(cut) == (1, "start")
    assert "start says 1 event came before it, --after says 3" in cut.problems[0].message


async def rotated_logs(tmp_path: Path) -> tuple[list[Path], DecisionLog]:
    """Three files, oldest first, as logrotate + SIGUSR1 leave them; the writer closed."""
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID, flush_interval=0.01)
    await log.start()
    for generation in (2, 1):
        for n in range(10):
            record(log, n)
        await asyncio.sleep(0.05)
        path.rename(tmp_path / f"decisions.jsonl.{generation}")
        log.reopen()
        await reopened_at(path, within=10.0)  # else the next rename finds no file
    for n in range(7):
        record(log, n)
    await log.close()
    return [tmp_path / "decisions.jsonl.2", tmp_path / "decisions.jsonl.1", path], log


async def test_deleted_newest_rotated_file_is_detected_with_head(tmp_path: Path) -> None:
    files, log = await rotated_logs(tmp_path)
    files[-1].unlink()
    older = files[:-1]
    assert verify_log(older, PUBLIC_KEYS).complete  # ends with a rotate seal: looks whole
    result = verify_log(older, PUBLIC_KEYS, head=head_of(log))
    assert first_problem(result)[1] == "truncated"
    assert result.problems[0].file == str(files[1])
    assert "7 event(s) and their signatures are missing" in result.problems[0].message


async def test_next_rotated_file_is_a_head_for_the_one_before(tmp_path: Path) -> None:
    files, _ = await rotated_logs(tmp_path)
    start = json.loads(lines_of(files[1])[0])
    head = SignedHead.from_record(start, PUBLIC_KEYS, str(files[1]))
    covered = verify_log(files[:1], PUBLIC_KEYS, head=head)
    assert covered.complete and covered.head_covered
    cut = lines_of(files[0])
    signatures = [i for i, line in enumerate(cut) if b"chain_signature" in line]
    write_lines(files[0], cut[: signatures[-2] + 1])  # cut at the signature before the seal
    result = verify_log(files[:1], PUBLIC_KEYS, head=head)
    assert first_problem(result)[1] == "truncated"


async def test_tail_cut_at_last_signature_is_detected_with_head(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = await write_log(path, 420)  # signed every 50 events, then sealed
    lines = lines_of(path)
    signatures = [i for i, line in enumerate(lines) if b"chain_signature" in line]
    write_lines(path, lines[: signatures[-2] + 1])  # ends at the signature of seq 400
    cut = verify_log([path], PUBLIC_KEYS)
    assert cut.ok and cut.unsigned_tail == 0  # a live log looks like this: nothing to see
    result = verify_log([path], PUBLIC_KEYS, head=head_of(log))
    assert first_problem(result) == (len(lines) - 21, "truncated")
    assert "20 event(s) and their signatures are missing" in result.problems[0].message


@pytest.mark.parametrize("seal", ["close", "rotate"])
async def test_an_event_forged_after_the_gateways_seal_is_tampering(
    tmp_path: Path, seal: str
) -> None:
    """Appended after the run's close (or a rotated file's rotate), linked and
    numbered right: it used to verify as "1 event after the last signature" (audit
    verify --live, and policy replay, accepted and replayed it). The gateway writes
    a signed start after a seal, never an event."""
    if seal == "close":
        path = tmp_path / "decisions.jsonl"
        await write_log(path, 3)
    else:
        path = (await rotated_logs(tmp_path))[0][0]
    lines = lines_of(path)
    last = json.loads(lines[-1])
    assert last["reason"] == seal
    forged = {"decision_id": "forged", "timestamp": "2026-12-03T07:00:00.000000000Z",
              "path": "portcullis/gateway/decision", "input": {}, "result": {"allow": True},
              "seq": last["seq"] + 1, "prev_hash": line_hash(lines[-1])}  # fmt: skip
    write_lines(path, [*lines, json.dumps(forged).encode()])
    result = verify_log([path], PUBLIC_KEYS)
    assert first_problem(result) == (len(lines) + 1, "inserted")
    assert f"an event follows the gateway's {seal} signature" in result.problems[0].message


async def close_with_a_reopen_during_the_drain(path: Path, reopen: Any) -> list[str | None]:
    """2,000 events, then close(), then ``reopen(log)`` while the writer drains
    them (logrotate's SIGUSR1 during a shutdown); the signature reasons written."""
    log = DecisionLog(path, SIGNING_KEY, key_id=KID)
    await log.start()
    for n in range(2000):
        record(log, n)
    closing = asyncio.create_task(log.close())
    await asyncio.sleep(0)
    reopen(log)
    await closing
    return [json.loads(line).get("reason") for line in lines_of(path)]


def _unguarded_reopen(log: DecisionLog) -> None:
    """What reopen() did before it checked for a close (or for a file not moved)."""
    log._still_at_path = lambda: False  # type: ignore[method-assign]
    log._queue.append(("reopen",))
    log._wake.set()


async def test_logrotates_signal_during_shutdown_leaves_a_log_that_verifies(
    tmp_path: Path,
) -> None:
    """SIGUSR1 (reopen) while close() drains a backlog: the writer used to write
    close, then rotate, then start a new file, and the seal rule then called the
    genuine log tampered. A reopen after close() is ignored; and a log written
    that way by an older version (close, rotate, start) still verifies."""
    path = tmp_path / "decisions.jsonl"
    reasons = await close_with_a_reopen_during_the_drain(path, DecisionLog.reopen)
    assert reasons[-1] == "close" and "rotate" not in reasons
    assert verify_log([path], PUBLIC_KEYS).complete
    older = tmp_path / "older.jsonl"
    reasons = await close_with_a_reopen_during_the_drain(older, _unguarded_reopen)
    assert reasons[-3:] == ["close", "rotate", "start"]
    assert verify_log([older], PUBLIC_KEYS).ok


async def test_log_that_reaches_the_head_is_covered(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID, sign_every=5, flush_interval=0.01)
    await log.start()
    for n in range(12):
        record(log, n)
    # Until the writer has signed the tenth (a fixed 0.1 s failed once in CI on a
    # loaded machine: the head was still the start record's).
    await signed_up_to(log, 10, within=10.0)
    head = head_of(log)  # taken while the gateway runs; the log grows past it
    for n in range(12, 20):
        record(log, n)
    await log.close()
    result = verify_log([path], PUBLIC_KEYS, head=head)
    assert result.complete and result.head_covered
    assert head.seq == 10


async def test_run_erased_together_with_the_head_file_is_a_gap(tmp_path: Path) -> None:
    """The pen test's rollback: with the gateway down, cut the log back to the end
    of run 1 (erasing run 2) and delete the head file; run 3 must not continue the
    chain from run 1's seal as if run 2 never happened."""
    path = tmp_path / "decisions.jsonl"
    await write_log(path, 3)
    run_one = path.stat().st_size
    await write_log(path, 3)
    with path.open("r+b") as file:
        file.truncate(run_one)
    path.with_name(path.name + ".head").unlink()
    await write_log(path, 3)
    result = verify_log([path], PUBLIC_KEYS)
    assert not result.ok
    assert first_problem(result)[1] == "start"


async def test_head_taken_before_any_event_is_reached_by_its_start_record(
    tmp_path: Path,
) -> None:
    """A brand-new chain's start record vouches for no line before it (its head is
    GENESIS): the start line itself is what the log must reach."""
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID, flush_interval=0.01)
    await log.start()
    await signed_up_to(log, 0, within=10.0)
    head = head_of(log)
    assert head.seq == 0 and head.head == GENESIS
    record(log, 1)
    await log.close()
    result = verify_log([path], PUBLIC_KEYS, head=head)
    assert result.complete and result.head_covered
    path.write_bytes(b"")
    assert not verify_log([path], PUBLIC_KEYS, head=head).ok


async def test_restart_on_an_empty_file_continues_the_chain_from_the_head_file(
    tmp_path: Path,
) -> None:
    """logrotate moved the file while the gateway was stopped: the next run still
    links to the last one, so a rotated file deleted later is a gap."""
    path = tmp_path / "decisions.jsonl"
    await write_log(path, 30)
    path.rename(tmp_path / "decisions.jsonl.1")
    await write_log(path, 5)
    first = json.loads(lines_of(path)[0])
    assert first["reason"] == "start" and first["seq"] == 30 and first["head"] != GENESIS
    both = verify_log([tmp_path / "decisions.jsonl.1", path], PUBLIC_KEYS)
    assert both.complete and both.events == 35
    assert first_problem(verify_log([path], PUBLIC_KEYS)) == (1, "start")


async def test_log_cut_while_the_gateway_was_down_stays_visible(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    size, _ = await two_runs(path)
    with path.open("r+b") as file:
        file.truncate(size)
    await write_log(path, 5)  # the next run continues from the head it recorded
    result = verify_log([path], PUBLIC_KEYS)
    line, kind = first_problem(result)
    assert kind == "deleted" and line == len(lines_of(path)) - 6
    assert "20" in result.problems[0].message


async def test_damaged_head_file_stops_the_start_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    (tmp_path / "decisions.jsonl.head").write_text('{"seq": "x"')
    with pytest.raises(DecisionLogError, match=r"decisions.jsonl.head is damaged.*remove it"):
        await DecisionLog(path, SIGNING_KEY, key_id=KID).start()


async def test_new_chain_in_the_middle_of_the_log_is_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    await write_log(path, 10)
    path.rename(tmp_path / "decisions.jsonl.1")
    (tmp_path / "decisions.jsonl.head").unlink()  # the gateway lost where the chain stood
    await write_log(path, 5)
    result = verify_log([tmp_path / "decisions.jsonl.1", path], PUBLIC_KEYS)
    assert first_problem(result) == (1, "start")
    assert "a new chain starts here" in result.problems[0].message


@settings(max_examples=25, derandomize=True, deadline=None)
@given(
    unsigned=st.integers(min_value=1, max_value=4),  # sign_every=5: a signature at 10
    edit=st.sampled_from(["none", "delete", "flip", "append", "swap"]),
    at=st.integers(min_value=0, max_value=5),
)
def test_events_a_crash_left_unsigned_are_never_vouched_for_by_the_restart(
    tmp_path_factory: pytest.TempPathFactory, unsigned: int, edit: str, at: int
) -> None:
    """However a forger changed the events a crashed run left after its last
    signature (relinking the rest, and the .head file to match), the restart's
    start record signs them; the verifier never calls such a log complete, and names
    the events and the start."""
    path = tmp_path_factory.mktemp("crash") / "decisions.jsonl"
    asyncio.run(write_log(path, 5 + unsigned, sign_every=5))
    lines = lines_of(path)[:-1]  # the crash: no close
    first = len(lines) - unsigned  # the first unsigned event
    at = first + at % unsigned
    if edit == "delete" and unsigned > 1:
        del lines[at]
    elif edit == "flip":
        event = json.loads(lines[at])
        event["result"]["allow"] = not event["result"]["allow"]
        lines[at] = json.dumps(event, separators=(",", ":")).encode()
    elif edit == "append":
        lines.append(forge_event(lines[-1], lines[-1]))
    elif edit == "swap" and at + 1 < len(lines):
        lines[at], lines[at + 1] = lines[at + 1], lines[at]
    lines = relink(lines, first)
    write_lines(path, lines)
    head_file = path.with_name(path.name + ".head")
    state = json.loads(head_file.read_text())
    state.update(seq=json.loads(lines[-1])["seq"], hash=line_hash(lines[-1]))
    head_file.write_text(json.dumps(state))
    asyncio.run(write_log(path, 1))  # the restart
    result = verify_log([path], PUBLIC_KEYS)
    assert result.ok and not result.complete  # the chain links: only the crash shows
    [resigned] = result.resigned
    assert resigned.first == (str(path), first + 1)
    assert resigned.last == (str(path), len(lines))
    assert resigned.start == (str(path), len(lines) + 1)
