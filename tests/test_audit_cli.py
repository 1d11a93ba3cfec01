"""`portcullis audit verify` as a user runs it: real files, a subprocess, exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audit.writer import DecisionLog
from gateway.operations import build_admin_app
from tests.conftest import ROOT
from tests.gateway_stack import ServerFactory, start_stack
from tests.test_decision_log import (
    KID,
    LOG_FIXTURES,
    OTHER_KEY,
    SIGNING_KEY,
    event_indexes,
    lines_of,
    record,
    signed_up_to,
    write_lines,
    write_log,
)

PUBLIC_PEM = LOG_FIXTURES / "signing_key.pub.pem"
OTHER_PEM = LOG_FIXTURES / "other_key.pem"
JWKS = LOG_FIXTURES / "jwks.json"


def audit(*args: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "portcullis", "audit", "verify", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture
async def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "decisions.jsonl"
    await write_log(path, 120)
    return path


def test_intact_log_verifies_with_the_public_key(log_file: Path) -> None:
    done = audit(log_file, "--key", PUBLIC_PEM)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK: 120 events, chain intact, last signed at 20")


def test_intact_log_verifies_with_a_jwks_file_matching_the_kid(log_file: Path) -> None:
    done = audit(log_file, "--jwks", JWKS)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def jwks_server() -> Iterator[str]:
    body = JWKS.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.endswith("/endless"):  # a URL that never stops answering
                self.send_response(200)
                self.end_headers()
                with contextlib.suppress(OSError):
                    while True:
                        self.wfile.write(b" " * 65536)
                return
            self.send_response(200 if self.path.endswith("/jwks.json") else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/portcullis/jwks.json"
    server.shutdown()
    server.server_close()


def test_intact_log_verifies_with_the_gateway_jwks_url(log_file: Path, jwks_server: str) -> None:
    done = audit(log_file, "--jwks", jwks_server)
    assert done.returncode == 0, done.stdout + done.stderr


def test_modified_decision_names_the_line(log_file: Path) -> None:
    lines = lines_of(log_file)
    index = event_indexes(lines)[30]
    lines[index] = lines[index].replace(b'"allow":false', b'"allow":true')
    done = audit(write_lines(log_file, lines), "--key", PUBLIC_PEM)
    assert done.returncode == 1
    assert f"decisions.jsonl:{index + 1}: this line was modified" in done.stdout
    assert "[modified]" in done.stdout


def test_deleted_line_names_the_gap(log_file: Path) -> None:
    lines = lines_of(log_file)
    index = event_indexes(lines)[40]
    del lines[index]
    done = audit(write_lines(log_file, lines), "--key", PUBLIC_PEM)
    assert done.returncode == 1
    assert f":{index + 1}: 1 event(s) deleted" in done.stdout


def test_reordered_lines_are_called_reordering(log_file: Path) -> None:
    lines = lines_of(log_file)
    index = event_indexes(lines)[60]
    lines[index], lines[index + 1] = lines[index + 1], lines[index]
    done = audit(write_lines(log_file, lines), "--key", PUBLIC_PEM)
    assert done.returncode == 1
    assert f":{index + 1}: lines reordered" in done.stdout


def test_log_signed_by_another_key_is_a_usage_error_naming_both_keys(log_file: Path) -> None:
    """Another gateway's key (or the wrong file) says so, exit 2, rather than
    calling every signature of an intact log tampered."""
    done = audit(log_file, "--key", OTHER_PEM)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith(
        f"error: this log is signed by key 'gateway-test', not the key given ({OTHER_PEM}: key id '"
    )


async def test_run_signed_by_another_key_inside_the_log_is_tampering(tmp_path: Path) -> None:
    """Once any signature verifies with the key given, the log is that gateway's:
    a run signed by some other key in it is forged, exit 1, whichever key is given."""
    path = tmp_path / "decisions.jsonl"
    await write_log(path, 3)
    await write_log(path, 3, key=OTHER_KEY)
    for key in (PUBLIC_PEM, OTHER_PEM):
        done = audit(path, "--key", key)
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stdout.startswith("TAMPERED: ") and "does not verify" in done.stdout


def test_unsigned_tail_fails_unless_live(log_file: Path) -> None:
    truncated = write_lines(log_file, lines_of(log_file)[:-3])
    strict = audit(truncated, "--key", PUBLIC_PEM)
    assert strict.returncode == 1
    assert strict.stdout.startswith("INCOMPLETE: ")
    assert (
        "events after the last signature are not yet covered by a signature "
        "(truncation after them can't be detected)" in strict.stderr
    )
    live = audit(truncated, "--key", PUBLIC_PEM, "--live")
    assert live.returncode == 0
    assert live.stdout.startswith("OK: 118 events")
    assert "not yet covered by a signature" in live.stderr


def test_missing_log_is_a_usage_error(tmp_path: Path) -> None:
    done = audit(tmp_path / "nope.jsonl", "--key", PUBLIC_PEM)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {tmp_path / 'nope.jsonl'}: no such file"


def test_bad_key_is_a_usage_error(log_file: Path) -> None:
    done = audit(log_file, "--key", JWKS)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {JWKS}: not a PEM public key"


def test_a_pem_key_given_as_jwks_says_to_give_it_with_key(log_file: Path) -> None:
    done = audit(log_file, "--jwks", PUBLIC_PEM)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {PUBLIC_PEM}: a PEM key, not a JWKS: give it with --key"


def test_jwks_that_is_not_json_is_a_usage_error(log_file: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "jwks.json"
    garbage.write_text("{keys: [")
    done = audit(log_file, "--jwks", garbage)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {garbage}: not JSON")
    assert len(done.stderr.strip().splitlines()) == 1


def test_log_that_is_not_json_is_a_usage_error() -> None:
    done = audit(LOG_FIXTURES / "not_a_log.txt", "--key", PUBLIC_PEM)
    assert done.returncode == 2
    assert "is not a Portcullis decision log" in done.stderr


@pytest.mark.parametrize("option", ["--jwks", "--head"])
def test_a_url_that_never_stops_answering_is_a_usage_error_not_a_memory_hog(
    log_file: Path, jwks_server: str, option: str
) -> None:
    url = jwks_server.rpartition("/")[0] + "/endless"
    done = audit(log_file, *(["--key", PUBLIC_PEM] if option == "--head" else []), option, url)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "more than 1048576 bytes" in done.stderr


def test_unreachable_jwks_url_is_a_usage_error(log_file: Path) -> None:
    done = audit(log_file, "--jwks", "http://127.0.0.1:9/jwks.json")
    assert done.returncode == 2
    assert "cannot fetch the JWKS" in done.stderr


def test_kid_missing_from_the_jwks_is_reported(log_file: Path, tmp_path: Path) -> None:
    jwks = json.loads(JWKS.read_text())
    jwks["keys"] = [key for key in jwks["keys"] if key["kid"] != "gateway-test"]
    only_old = tmp_path / "jwks.json"
    only_old.write_text(json.dumps(jwks))
    done = audit(log_file, "--jwks", only_old)
    assert done.returncode == 2
    assert (
        done.stderr.strip() == "error: this log is signed by key 'gateway-test', not the key "
        f"given ({only_old}: key id 'old-key')"
    )


# -- runs, files and outside heads (--after, --head) ---------------------------


async def test_deleted_first_run_fails_unless_told_where_it_continues(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    await write_log(path, 30)
    run_one = path.read_bytes()
    await write_log(path, 20)
    path.write_bytes(path.read_bytes()[len(run_one) :])  # run 1 deleted
    done = audit(path, "--key", PUBLIC_PEM)
    assert done.returncode == 1
    assert "decisions.jsonl:1: the log does not begin the chain: 30 event(s)" in done.stdout
    # The file before it, verified alone, prints where it ends: that is --after.
    before = tmp_path / "run-one.jsonl"
    before.write_bytes(run_one)
    first = audit(before, "--key", PUBLIC_PEM)
    assert first.returncode == 0
    tail = first.stdout.splitlines()[1].rsplit(" ", 1)[-1]
    assert first.stdout.splitlines()[1] == f"chain ends at seq 30, line hash {tail}"
    assert audit(path, "--key", PUBLIC_PEM, "--after", tail).returncode == 0
    assert audit(before, path, "--key", PUBLIC_PEM).returncode == 0  # or both files


def test_after_that_is_not_a_hash_is_a_usage_error(log_file: Path) -> None:
    done = audit(log_file, "--key", PUBLIC_PEM, "--after", "run-1")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --after 'run-1': not a line hash (64 hex digits)"


def test_after_naming_another_line_is_reported(log_file: Path) -> None:
    done = audit(log_file, "--key", PUBLIC_PEM, "--after", "ab" * 32)
    assert done.returncode == 1
    assert "not from --after" in done.stdout


async def test_truncation_after_first_runs_seal_is_detected_with_a_saved_head(
    tmp_path: Path,
) -> None:
    path = tmp_path / "decisions.jsonl"
    await write_log(path, 30)
    size = path.stat().st_size
    second = await write_log(path, 20)
    saved = tmp_path / "head.json"
    saved.write_text(json.dumps(second.signed_head(), indent=2))  # e.g. `curl .../audit/head`
    with path.open("r+b") as file:
        file.truncate(size)
    assert audit(path, "--key", PUBLIC_PEM).returncode == 0  # the limit without a head
    done = audit(path, "--key", PUBLIC_PEM, "--head", saved)
    assert done.returncode == 1
    assert done.stdout.startswith("TAMPERED: ")
    assert "20 event(s) and their signatures are missing" in done.stdout


async def test_run_erased_and_the_head_file_forged_is_caught_by_every_kept_head(
    tmp_path: Path,
) -> None:
    """The pen test's rollback, with the head file rewritten to match the cut log
    (it isn't signed): run 3 continues from run 1's seal and the newest head is
    reached; only a head kept from run 2 shows what is gone."""
    path = tmp_path / "decisions.jsonl"
    head_file = path.with_name(path.name + ".head")
    await write_log(path, 3)
    cut_at, state_after_run_one = path.stat().st_size, head_file.read_bytes()
    second = await write_log(path, 3)
    kept = [second.signed_head()]  # e.g. `curl .../audit/head >> heads.jsonl`
    with path.open("r+b") as file:
        file.truncate(cut_at)
    head_file.write_bytes(state_after_run_one)
    third = await write_log(path, 3)
    kept.append(third.signed_head())
    heads = tmp_path / "heads.jsonl"
    heads.write_text("".join(json.dumps(head) + "\n" for head in kept))
    newest = tmp_path / "newest.json"
    newest.write_text(json.dumps(kept[-1]))
    assert audit(path, "--key", PUBLIC_PEM).returncode == 0  # the limit of the files alone
    assert audit(path, "--key", PUBLIC_PEM, "--head", newest).returncode == 0
    done = audit(path, "--key", PUBLIC_PEM, "--head", heads)
    assert done.returncode == 1
    assert done.stdout.startswith("TAMPERED: ")


@pytest.mark.parametrize("separator", ["", "\n"], ids=["answers-run-together", "one-answer-a-line"])
async def test_run_erased_is_caught_by_every_head_polled_with_curl_append(
    tmp_path: Path, separator: str
) -> None:
    """The pen test: `curl -s .../audit/head >> heads.jsonl` polled across two runs,
    then run 1's log given alone. Before /audit/head ended with a newline the
    answers ran together on one line, and only the first (run 1's, reached) was
    checked: `OK`, though run 2's events were erased."""
    path = tmp_path / "decisions.jsonl"
    polled = [(await write_log(path, 5, sign_every=2)).signed_head()]
    run_one = tmp_path / "run-one.jsonl"
    run_one.write_bytes(path.read_bytes())
    second = await write_log(path, 4, sign_every=2)
    polled.append(second.signed_head())
    heads = tmp_path / "heads.jsonl"
    heads.write_text("".join(json.dumps(head) + separator for head in polled))
    assert audit(path, "--key", PUBLIC_PEM, "--head", heads).returncode == 0  # both runs: whole
    done = audit(run_one, "--key", PUBLIC_PEM, "--head", heads)
    assert done.returncode == 1, done.stdout + done.stderr
    # The newest head says how much is gone; run 1's head alone was reached.
    assert done.stdout.startswith("TAMPERED: ")
    assert "the log ends here at seq 5, but the gateway signed a head at seq 9" in done.stdout
    assert "4 event(s) and their signatures are missing" in done.stdout


async def test_next_rotated_file_vouches_for_the_one_before_with_its_start_record(
    tmp_path: Path,
) -> None:
    """A log file given as --head: only its `start` record is a head; its later
    signatures are beyond the end of the file before it, not missing from it."""
    path = tmp_path / "decisions.jsonl"
    await write_log(path, 4)
    before = tmp_path / "decisions.jsonl.1"
    path.rename(before)
    await write_log(path, 6, sign_every=2)
    done = audit(before, "--key", PUBLIC_PEM, "--head", path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reaches the outside head" in done.stderr


async def test_deleted_newest_rotated_file_is_detected_with_the_admin_head(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with start_stack(aiohttp_server, tmp_path) as running:
        admin = await aiohttp_server(build_admin_app(running.gateway))
        head_url = f"http://127.0.0.1:{admin.port}/audit/head"
        token = running.token("alice", groups=["warehouse"], amr=["pwd", "otp"])
        for _ in range(3):
            assert (await running.get("/wms/stock", token)).status == 200
        await asyncio.sleep(0.3)
        rotated = tmp_path / "decisions.log.1"
        running.log_path.rename(rotated)
        assert running.gateway.decision_log is not None
        running.gateway.decision_log.reopen()  # what SIGUSR1 does after logrotate
        for _ in range(4):
            assert (await running.get("/wms/stock", token)).status == 200
        # The writer reopened the path and a signature covers the 4 (sign_interval
        # 0.5); a fixed 0.8 s was not enough for a writer held up by a slow fsync.
        await signed_up_to(running.gateway.decision_log, 3 + 4, within=10.0)
        running.log_path.unlink()  # the newest file deleted
        key = tmp_path / "assertion.pem"
        alone = await asyncio.to_thread(audit, rotated, "--key", key)
        assert alone.returncode == 0, alone.stdout + alone.stderr  # looks whole
        done = await asyncio.to_thread(audit, rotated, "--key", key, "--head", head_url)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "4 event(s) and their signatures are missing" in done.stdout


async def test_admin_head_answer_ends_with_a_newline_so_appended_heads_stay_apart(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with start_stack(aiohttp_server, tmp_path) as running:
        admin = await aiohttp_server(build_admin_app(running.gateway))
        token = running.token("alice", groups=["warehouse"], amr=["pwd", "otp"])
        assert (await running.get("/wms/stock", token)).status == 200
        await asyncio.sleep(0.8)  # a signature covers it (sign_interval 0.5)
        url = f"http://127.0.0.1:{admin.port}/audit/head"
        async with running.session.get(url) as response:
            body = await response.read()
        assert response.status == 200
        assert body.endswith(b"}\n") and body.count(b"\n") == 1
        assert json.loads(body)["type"] == "chain_signature"


def test_unreachable_head_url_is_a_usage_error(log_file: Path) -> None:
    done = audit(log_file, "--key", PUBLIC_PEM, "--head", "http://127.0.0.1:9/audit/head")
    assert done.returncode == 2
    assert "error: --head http://127.0.0.1:9/audit/head: cannot fetch the head" in done.stderr


async def test_head_signed_by_another_key_is_a_usage_error(tmp_path: Path, log_file: Path) -> None:
    other = await write_log(tmp_path / "other.jsonl", 3)
    head = other.signed_head()
    assert head is not None
    head["signature"] = json.loads(lines_of(log_file)[-1])["signature"]  # not its signature
    saved = tmp_path / "head.json"
    saved.write_text(json.dumps(head))
    done = audit(log_file, "--key", PUBLIC_PEM, "--head", saved)
    assert done.returncode == 2
    assert f"error: --head {saved}: the head's signature (key id " in done.stderr
    assert "does not verify with the key given" in done.stderr
    foreign = await write_log(tmp_path / "foreign.jsonl", 3, key=OTHER_KEY)
    saved.write_text(json.dumps(foreign.signed_head()))
    done = audit(log_file, "--key", PUBLIC_PEM, "--head", saved)
    assert done.returncode == 2
    # The key id is the head's own, not the key given: the message says which.
    assert "the head's signature (key id " in done.stderr
    assert ") does not verify with the key given" in done.stderr


async def test_two_heads_signed_by_another_key_say_one_more_head_in_the_singular(
    tmp_path: Path, log_file: Path
) -> None:
    """Two heads that don't verify read "(and 1 more heads that don't verify)"."""
    heads = tmp_path / "heads.jsonl"
    foreign = [await write_log(tmp_path / f"f{n}.jsonl", 3, key=OTHER_KEY) for n in (1, 2)]
    heads.write_text("".join(json.dumps(log.signed_head()) + "\n" for log in foreign))
    done = audit(log_file, "--key", PUBLIC_PEM, "--head", heads)
    assert done.returncode == 2
    assert done.stderr.rstrip().endswith("(and 1 more head that doesn't verify)"), done.stderr


@pytest.mark.parametrize("forged_first", [True, False], ids=["forged-first", "forged-last"])
async def test_one_forged_head_in_a_siem_export_does_not_switch_the_head_check_off(
    tmp_path: Path, forged_first: bool
) -> None:
    """Anyone who can send the SIEM one line (plain syslog has no authentication)
    adds a copy of a real head with its seq changed. It used to stop the whole
    check (exit 2, nothing checked) when it came first, and to hide the real head
    when it came last. The forged head is left out, loudly; the real ones still
    catch the cut tail."""
    path = tmp_path / "decisions.jsonl"
    writer = await write_log(path, 6, sign_every=2)
    real = writer.signed_head()
    assert real is not None
    forged = {**real, "seq": real["seq"] + 1000}
    export = [forged, real] if forged_first else [real, forged]
    heads = tmp_path / "siem-export.jsonl"
    heads.write_text("".join(json.dumps(head) + "\n" for head in export))
    done = audit(path, "--key", PUBLIC_PEM, "--head", heads)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 of 2 chain heads in it don't verify" in done.stderr
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-3]))  # the tail cut: the real head catches it
    done = audit(path, "--key", PUBLIC_PEM, "--head", heads)
    assert done.returncode == 1 and done.stdout.startswith("TAMPERED: "), done.stdout
    assert "the gateway signed a head at seq" in done.stdout


def test_head_that_is_not_a_head_is_a_usage_error(log_file: Path) -> None:
    done = audit(log_file, "--key", PUBLIC_PEM, "--head", JWKS)
    assert done.returncode == 2
    assert "not a decision-log head" in done.stderr


def shipped_heads(*logs: Path) -> list[dict[str, object]]:
    """The chain signatures of ``logs`` as a file sink in the ``opa`` format ships
    them (whole, with line_hash), interleaved as one SIEM index holds them."""
    per_log = []
    for path in logs:
        heads = []
        for raw in lines_of(path):
            record = json.loads(raw)
            if record.get("type") == "chain_signature":
                heads.append({**record, "line_hash": hashlib.sha256(raw).hexdigest()})
        per_log.append(heads)
    return [head for group in itertools.zip_longest(*per_log) for head in group if head]


async def two_replicas(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two replicas' logs, same key (the Helm chart's default), each with two runs,
    and one export of every head both shipped."""
    logs = []
    for replica in ("portcullis-0", "portcullis-1"):
        path = tmp_path / replica / "decisions.log"
        path.parent.mkdir()
        for _ in range(2):
            await write_log(path, 7, sign_every=3, name=f"{replica}:decisions.log")
        logs.append(path)
    export = tmp_path / "siem-export.jsonl"
    export.write_text("".join(json.dumps(head) + "\n" for head in shipped_heads(*logs)))
    return logs[0], logs[1], export


async def test_replicas_sharing_a_key_each_verify_against_one_siem_export(
    tmp_path: Path,
) -> None:
    """Heads didn't say which log signed them: each replica's log was checked
    against the other's heads too, and failed (`names a line that is not in the
    log`), so the documented anchoring failed for the chart's two replicas."""
    first, second, export = await two_replicas(tmp_path)
    for path in (first, second):
        done = audit(path, "--key", PUBLIC_PEM, "--head", export)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith("OK: 14 events")
        other = "portcullis-1" if path is first else "portcullis-0"
        assert f"of 1 other log(s) left out ('{other}:decisions.log')" in done.stderr


async def test_another_replicas_intact_log_passed_off_as_this_one_fails_with_log_name(
    tmp_path: Path,
) -> None:
    """Replicas share the signing key: portcullis-1's whole, intact log copied over
    portcullis-0's verifies, even against the SIEM's export (portcullis-0's heads
    are left out as another log's). The auditor names the log they mean and the
    swap fails; the OK line says which log it checked."""
    first, second, export = await two_replicas(tmp_path)
    first.write_bytes(second.read_bytes())
    done = audit(first, "--key", PUBLIC_PEM, "--head", export)
    assert done.returncode == 0 and "log: 'portcullis-1:decisions.log'" in done.stdout
    done = audit(first, "--key", PUBLIC_PEM, "--head", export,
                 "--log-name", "portcullis-0:decisions.log")  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert done.stdout.startswith(
        f"TAMPERED: {first}: not the log 'portcullis-0:decisions.log': its signatures call "
        "it 'portcullis-1:decisions.log'"
    )
    done = audit(second, "--key", PUBLIC_PEM, "--log-name", "portcullis-1:decisions.log")
    assert done.returncode == 0, done.stdout + done.stderr


async def test_replica_log_cut_after_a_signature_is_caught_by_its_own_shipped_heads(
    tmp_path: Path,
) -> None:
    first, _, export = await two_replicas(tmp_path)
    lines = lines_of(first)
    write_lines(first, lines[:-4])  # the last events and the close signature, gone
    assert audit(first, "--key", PUBLIC_PEM, "--live").returncode == 0  # alone: looks live
    done = audit(first, "--key", PUBLIC_PEM, "--head", export)
    assert done.returncode == 1 and done.stdout.startswith("TAMPERED: "), done.stdout
    assert "event(s) and their signatures are missing" in done.stdout


async def test_log_rewritten_under_another_name_is_not_vouched_for_by_the_export(
    tmp_path: Path,
) -> None:
    """Whoever holds the key could write a new log that names itself differently,
    so that none of the SIEM's heads would apply: that is a failure, not a pass."""
    _, _, export = await two_replicas(tmp_path)
    forged = tmp_path / "forged" / "decisions.log"
    forged.parent.mkdir()
    await write_log(forged, 3, name="portcullis-9:decisions.log")
    assert audit(forged, "--key", PUBLIC_PEM).returncode == 0  # a valid log on its own
    done = audit(forged, "--key", PUBLIC_PEM, "--head", export)
    assert done.returncode == 1, done.stdout + done.stderr
    heads = len(export.read_text().splitlines())
    assert f"none of the {heads} outside heads is this log's: it signs as " in done.stdout
    assert "'portcullis-0:decisions.log', 'portcullis-1:decisions.log'" in done.stdout


@pytest.mark.parametrize("change", ["renamed", "name-removed", "name-added"])
async def test_a_heads_log_name_is_covered_by_its_signature(tmp_path: Path, change: str) -> None:
    """Otherwise one replica's head could be passed off as another's (or as an
    older, unnamed one, which every log must reach)."""
    path = tmp_path / "decisions.log"
    await write_log(path, 3, name=None if change == "name-added" else "portcullis-0:decisions.log")
    lines = lines_of(path)
    record = json.loads(lines[0])
    if change == "renamed":
        record["log"] = "portcullis-1:decisions.log"
    elif change == "name-removed":
        del record["log"]
    else:
        record["log"] = "portcullis-0:decisions.log"
    lines[0] = json.dumps(record, separators=(",", ":")).encode()
    done = audit(write_lines(path, lines), "--key", PUBLIC_PEM)
    assert done.returncode == 1
    assert "chain signature invalid: signature (key id " in done.stdout
    assert ") does not verify with the key given" in done.stdout


async def test_copies_of_real_heads_with_another_log_name_do_not_hide_them(
    tmp_path: Path,
) -> None:
    """Anyone who can send the SIEM a line puts copies of the newest heads with
    only `log` changed ahead of the real ones: the export's de-duplication left
    `log` out of the signed fields, kept the copies (which then fail their
    signature) and dropped the real heads, so a log cut back a run passed."""
    path = tmp_path / "decisions.log"
    await write_log(path, 5, sign_every=2, name="pos-0:decisions.log")
    cut_at = path.stat().st_size
    await write_log(path, 5, sign_every=2, name="pos-0:decisions.log")
    real = shipped_heads(path)
    copies = [{**head, "log": "x"} for head in real[-2:]]
    export = tmp_path / "siem-export.jsonl"
    export.write_text("".join(json.dumps(head) + "\n" for head in copies + real))
    with path.open("r+b") as file:
        file.truncate(cut_at)  # the second run erased
    done = audit(path, "--key", PUBLIC_PEM, "--head", export)
    assert done.returncode == 1 and done.stdout.startswith("TAMPERED: "), done.stdout
    assert "the gateway signed a head at seq 10" in done.stdout


async def test_a_log_keeps_its_default_name_when_its_host_is_renamed(tmp_path: Path) -> None:
    """The default name is the host's: a container made anew on the same volume
    renamed the log, and a cut back to before the rename then passed, the later
    heads taken for another log's. A chain that goes on keeps the name its head
    file records; a configured name is used as configured."""
    path = tmp_path / "decisions.log"
    await write_log(path, 2, name="3f2a9c1b7d4e:decisions.log", keep_name=True)
    cut_at = path.stat().st_size
    await write_log(path, 2, name="9b8e7d6c5a4f:decisions.log", keep_name=True)
    names = {json.loads(line).get("log") for line in lines_of(path) if b"chain_signature" in line}
    assert names == {"3f2a9c1b7d4e:decisions.log"}
    export = tmp_path / "heads.jsonl"
    export.write_text("".join(json.dumps(head) + "\n" for head in shipped_heads(path)))
    with path.open("r+b") as file:
        file.truncate(cut_at)
    assert audit(path, "--key", PUBLIC_PEM, "--head", export).returncode == 1
    await write_log(path, 1, name="pos-0:decisions.log")  # configured: as configured
    assert json.loads(lines_of(path)[-1])["log"] == "pos-0:decisions.log"


async def chain_begun_again(tmp_path: Path) -> tuple[Path, Path, Path]:
    """One log name, two chains: the gateway's log and its .head file lost (a
    volume replaced, a host rebuilt), so it began a new chain at GENESIS under the
    name it is configured with. The SIEM's export holds both chains' heads."""
    name = "pos-0:decisions.log"
    old = tmp_path / "old" / "decisions.log"
    old.parent.mkdir()
    for _ in range(2):
        await write_log(old, 5, sign_every=2, name=name)
    new = tmp_path / "decisions.log"
    for _ in range(2):
        await write_log(new, 4, sign_every=2, name=name)
    export = tmp_path / "siem-export.jsonl"
    export.write_text("".join(json.dumps(head) + "\n" for head in shipped_heads(old, new)))
    return old, new, export


def genesis_of(path: Path) -> str:
    return str(json.loads(lines_of(path)[0])["signed_at"])


async def test_the_chain_before_a_new_one_under_its_name_verifies_against_the_export(
    tmp_path: Path,
) -> None:
    """The old log was TAMPERED: the new chain's heads, past its end, looked like a
    cut. A head signed after a later GENESIS of the name, which the log doesn't
    reach, is that chain's."""
    old, _, export = await chain_begun_again(tmp_path)
    done = audit(old, "--key", PUBLIC_PEM, "--head", export)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK: 10 events")
    assert "of a later chain under the name 'pos-0:decisions.log' left out" in done.stderr


async def test_a_new_chain_fails_until_told_it_began_anew_then_verifies_alone(
    tmp_path: Path,
) -> None:
    """The new log can't show the earlier chain wasn't erased (deleting log and .head
    and restarting looks the same): one clear failure naming --new-chain, not a
    'line that is not in the log' per head. Told when it began, it verifies."""
    _, new, export = await chain_begun_again(tmp_path)
    done = audit(new, "--key", PUBLIC_PEM, "--head", export)
    assert done.returncode == 1 and done.stdout.startswith("TAMPERED: "), done.stdout
    assert "of an earlier chain under the name 'pos-0:decisions.log'" in done.stdout
    assert f"--new-chain {genesis_of(new)} checks this log alone [head]" in done.stdout
    assert "also" not in done.stdout
    done = audit(new, "--key", PUBLIC_PEM, "--head", export, "--new-chain", genesis_of(new))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK: 8 events")
    assert "began anew at GENESIS at" in done.stderr


async def test_new_chain_is_refused_without_head_or_for_another_start(tmp_path: Path) -> None:
    old, new, export = await chain_begun_again(tmp_path)
    done = audit(new, "--key", PUBLIC_PEM, "--new-chain", genesis_of(new))
    assert done.returncode == 2 and "--new-chain needs --head" in done.stderr
    done = audit(new, "--key", PUBLIC_PEM, "--head", export, "--new-chain", genesis_of(old))
    assert done.returncode == 2
    assert f"this log's chain began at GENESIS at {genesis_of(new)}" in done.stderr


@pytest.mark.parametrize("which", ["old", "new"])
async def test_either_chain_cut_back_a_run_is_still_caught_by_its_own_heads(
    tmp_path: Path, which: str
) -> None:
    old, new, export = await chain_begun_again(tmp_path)
    path = old if which == "old" else new
    told = [] if which == "old" else ["--new-chain", genesis_of(new)]
    lines = lines_of(path)
    second_start = max(i for i, line in enumerate(lines) if b'"reason":"start"' in line)
    write_lines(path, lines[:second_start])  # the second run erased
    assert audit(path, "--key", PUBLIC_PEM).returncode == 0  # the limit of the files alone
    done = audit(path, "--key", PUBLIC_PEM, "--head", export, *told)
    assert done.returncode == 1 and done.stdout.startswith("TAMPERED: "), done.stdout
    assert "event(s) and their signatures are missing" in done.stdout


async def test_a_genesis_of_another_log_name_does_not_end_this_logs_chain(
    tmp_path: Path,
) -> None:
    """Only a chain begun under this log's own name ends the span of its heads: a
    replica started after the cut doesn't excuse it."""
    path = tmp_path / "decisions.log"
    await write_log(path, 3, sign_every=2, name="pos-0:decisions.log")
    cut_at = path.stat().st_size
    await write_log(path, 3, sign_every=2, name="pos-0:decisions.log")
    other = tmp_path / "other" / "decisions.log"
    other.parent.mkdir()
    await write_log(other, 2, name="pos-1:decisions.log")
    export = tmp_path / "siem-export.jsonl"
    export.write_text("".join(json.dumps(head) + "\n" for head in shipped_heads(path, other)))
    with path.open("r+b") as file:
        file.truncate(cut_at)
    done = audit(path, "--key", PUBLIC_PEM, "--head", export)
    assert done.returncode == 1 and done.stdout.startswith("TAMPERED: "), done.stdout


async def test_a_genesis_planted_while_the_chain_goes_on_does_not_hide_its_cut_tail(
    tmp_path: Path,
) -> None:
    """The attacker moves log and .head aside, starts the gateway once (it ships a
    GENESIS start), puts them back: the chain goes on, and its next run is then
    cut off. Its heads, signed after the planted GENESIS, were taken for a later
    chain's. The cut log reaches that run's start (it vouches for the last line
    kept), signed after the GENESIS: the chain went on past it."""
    name = "pos-0:decisions.log"
    path = tmp_path / "decisions.log"
    head_file = path.with_name(path.name + ".head")
    await write_log(path, 5, sign_every=2, name=name)
    cut_at, kept = path.stat().st_size, tmp_path / "kept"
    kept.mkdir()
    path.rename(kept / path.name)
    head_file.rename(kept / head_file.name)
    await write_log(path, 0, name=name)  # the planted GENESIS
    planted = shipped_heads(path)
    path.unlink()
    head_file.unlink()
    (kept / path.name).rename(path)
    (kept / head_file.name).rename(head_file)
    await write_log(path, 7, sign_every=2, name=name)  # the run to erase
    export = tmp_path / "siem-export.jsonl"
    heads = planted + shipped_heads(path)
    export.write_text("".join(json.dumps(head) + "\n" for head in heads))
    with path.open("r+b") as file:
        file.truncate(cut_at)
    done = audit(path, "--key", PUBLIC_PEM, "--head", export)
    assert done.returncode == 1 and done.stdout.startswith("TAMPERED: "), done.stdout
    assert "7 event(s) and their signatures are missing" in done.stdout


async def test_a_fork_verified_with_after_does_not_take_a_planted_genesis_for_its_start(
    tmp_path: Path,
) -> None:
    """A run erased, a GENESIS planted, the .head file written to go on from a line
    the auditor already verified: the next file, given with --after, began with a
    start record signed after the GENESIS, which was taken as its chain's start."""
    name = "pos-0:decisions.log"
    path = tmp_path / "decisions.log"
    head_file = path.with_name(path.name + ".head")
    await write_log(path, 4, sign_every=2, name=name)
    verified = hashlib.sha256(lines_of(path)[-1]).hexdigest()
    cut_at = path.stat().st_size
    await write_log(path, 6, sign_every=2, name=name)  # the run to erase
    heads = shipped_heads(path)
    path.rename(tmp_path / "kept")
    head_file.unlink()
    await write_log(path, 0, name=name)  # the planted GENESIS
    heads += shipped_heads(path)
    path.unlink()
    (tmp_path / "kept").rename(path)
    with path.open("r+b") as file:
        file.truncate(cut_at)
    path.rename(tmp_path / "decisions.log.1")
    head_file.write_text(json.dumps({"seq": 4, "hash": verified, "signed": None}))
    await write_log(path, 3, sign_every=2, name=name)
    heads += shipped_heads(path)
    export = tmp_path / "siem-export.jsonl"
    export.write_text("".join(json.dumps(head) + "\n" for head in heads))
    done = audit(path, "--key", PUBLIC_PEM, "--head", export, "--after", verified)
    assert done.returncode == 1 and done.stdout.startswith("TAMPERED: "), done.stdout


async def test_the_newest_rotated_file_verifies_alone_with_after_against_the_export(
    tmp_path: Path,
) -> None:
    """The file before's rotate signature has the seq the next file begins at: it
    was asked of the newest file, which can't reach it (TAMPERED)."""
    path = tmp_path / "decisions.log"
    log = DecisionLog(path, SIGNING_KEY, key_id=KID, labels={"id": "gw"}, sign_every=2)
    await log.start()
    for n in range(3):
        record(log, n)
    await asyncio.sleep(0.05)
    rotated = path.rename(tmp_path / "decisions.log.1")
    log.reopen()
    for n in range(4):
        record(log, n)
    await log.close()
    after = hashlib.sha256(lines_of(rotated)[-1]).hexdigest()
    export = tmp_path / "siem-export.jsonl"
    export.write_text("".join(json.dumps(h) + "\n" for h in shipped_heads(rotated, path)))
    done = audit(path, "--key", PUBLIC_PEM, "--head", export, "--after", after)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK: 4 events")


async def a_run_cut_out_behind_a_moved_count(tmp_path: Path) -> tuple[Path, str, list[dict]]:
    """Run 1 verified (chain ends at seq 4, line hash X) and rotated; run 2 logged
    and shipped; then, the gateway stopped, run 2's file deleted and the .head
    file (not signed) pointed at X with the count moved to run 2's end: the
    restarted gateway signs a start that continues from X at seq 10."""
    name = "pos-0:decisions.log"
    path = tmp_path / "decisions.log"
    await write_log(path, 4, sign_every=2, name=name)
    after = hashlib.sha256(lines_of(path)[-1]).hexdigest()
    path.rename(tmp_path / "decisions.log.1")
    await write_log(path, 6, sign_every=2, name=name)
    erased = shipped_heads(path)
    path.unlink()
    state = {"seq": 10, "hash": after, "signed": None}
    path.with_name(path.name + ".head").write_text(json.dumps(state))
    await write_log(path, 3, sign_every=2, name=name)
    return path, after, erased + shipped_heads(path)


async def test_after_with_its_seq_catches_a_run_cut_out_behind_a_moved_count(
    tmp_path: Path,
) -> None:
    """With the bare hash the file's own start said how many events came before
    it, so every head of the erased run was 'before these files begin'. Even with
    none of the erased run's heads kept, SEQ:HASH shows the gap."""
    path, after, _ = await a_run_cut_out_behind_a_moved_count(tmp_path)
    done = audit(path, "--key", PUBLIC_PEM, "--after", f"4:{after}")
    assert done.returncode == 1 and done.stdout.startswith("TAMPERED: "), done.stdout
    assert "start says 10 events came before it, --after says 4: 6 event(s)" in done.stdout


async def test_a_bare_after_with_the_export_catches_the_fork(tmp_path: Path) -> None:
    path, after, heads = await a_run_cut_out_behind_a_moved_count(tmp_path)
    export = tmp_path / "siem-export.jsonl"
    export.write_text("".join(json.dumps(head) + "\n" for head in heads))
    done = audit(path, "--key", PUBLIC_PEM, "--head", export, "--after", after)
    assert done.returncode == 1 and done.stdout.startswith("TAMPERED: "), done.stdout
    assert "(seq 4, signed at " in done.stdout
    assert "the chain forked there" in done.stdout and "[fork]" in done.stdout


def test_after_that_is_neither_a_hash_nor_seq_colon_hash_is_a_usage_error(
    log_file: Path,
) -> None:
    done = audit(log_file, "--key", PUBLIC_PEM, "--after", "four:" + "ab" * 32)
    assert done.returncode == 2 and "not SEQ:HASH" in done.stderr


async def test_a_run_signed_under_a_new_name_and_then_cut_off_is_caught(tmp_path: Path) -> None:
    """`decision_log.name` changed between runs (or a .head file edited to name
    another log): the later run's heads were taken for another log's, so cutting
    the log back to before it passed. Its start vouches for a line of this log."""
    path = tmp_path / "decisions.log"
    await write_log(path, 3, sign_every=2, name="pos-0:decisions.log")
    cut_at = path.stat().st_size
    await write_log(path, 4, sign_every=2, name="pos-7:decisions.log")
    export = tmp_path / "siem-export.jsonl"
    export.write_text("".join(json.dumps(head) + "\n" for head in shipped_heads(path)))
    with path.open("r+b") as file:
        file.truncate(cut_at)
    done = audit(path, "--key", PUBLIC_PEM, "--head", export)
    assert done.returncode == 1 and done.stdout.startswith("TAMPERED: "), done.stdout
    assert "4 event(s) and their signatures are missing" in done.stdout


async def test_a_log_name_edited_into_the_head_file_is_not_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The head file isn't signed: the name in its copy of the last signature is
    taken only when that signature verifies."""
    path = tmp_path / "decisions.log"
    head_file = path.with_name(path.name + ".head")
    await write_log(path, 2, name="3f2a9c1b7d4e:decisions.log", keep_name=True)
    state = json.loads(head_file.read_text())
    signed = state["signed"]
    signed["log"] = "pos-7:decisions.log"
    line = {k: v for k, v in signed.items() if k not in ("file", "line_hash")}
    raw = json.dumps(line, separators=(",", ":")).encode()
    signed["line_hash"] = hashlib.sha256(raw).hexdigest()  # as the attacker would
    head_file.write_text(json.dumps(state))
    await write_log(path, 1, name="9b8e7d6c5a4f:decisions.log", keep_name=True)
    assert json.loads(lines_of(path)[-1])["log"] == "9b8e7d6c5a4f:decisions.log"
    assert "is not under this key's signature" in caplog.text


@pytest.mark.parametrize("where", ["log", "head"])
def test_json_nested_past_the_parsers_depth_is_reported_not_a_traceback(
    tmp_path: Path, log_file: Path, where: str
) -> None:
    """A first line (or a --head file) of 5,000 nested arrays: the stdlib parser's
    RecursionError escaped the checks that only caught ValueError (the log's
    first line read to check what it is and to order the files; a head file's
    JSON), and verify died with a traceback instead of naming the damage."""
    deep = b"[" * 5000 + b"\n"
    if where == "log":
        log_file.write_bytes(deep + log_file.read_bytes())
        done = audit(log_file, "--key", PUBLIC_PEM)
        assert done.returncode in (1, 2), done.stdout + done.stderr
        assert f"{log_file.name}" in done.stdout + done.stderr
    else:
        head = tmp_path / "head.json"
        head.write_bytes(b'{"head": ' + deep)
        done = audit(log_file, "--key", PUBLIC_PEM, "--head", head)
        assert done.returncode == 2 and "not a decision-log head" in done.stderr, done.stderr


async def test_events_a_crash_left_unsigned_and_edited_before_the_restart_are_not_intact(
    tmp_path: Path,
) -> None:
    """The gateway crashed with events after its last signature; while it was down,
    one allow among them was deleted (the rest relinked, and the unsigned .head file
    set to the new last line). On restart the gateway continues the chain from the
    file's last line, and its start record signs whatever the file then held: verify
    said OK, the deletion laundered by the gateway's own signature."""
    path = tmp_path / "decisions.log"
    await write_log(path, 12, sign_every=5)  # signatures after events 5 and 10
    lines = lines_of(path)[:-1]  # the close never written: the crash
    events = event_indexes(lines)
    assert json.loads(lines[events[9] + 1])["reason"] == "interval"
    hidden = events[10]  # event 11: after the last signature
    assert json.loads(lines[hidden])["result"]["allow"] is True
    del lines[hidden]
    for index in range(hidden, len(lines)):  # relink as a careful forger would
        event = json.loads(lines[index])
        event["seq"] -= 1
        event["prev_hash"] = hashlib.sha256(lines[index - 1]).hexdigest()
        lines[index] = json.dumps(event, separators=(",", ":")).encode()
    write_lines(path, lines)
    head_file = path.with_name(path.name + ".head")
    state = json.loads(head_file.read_text())
    state.update(seq=11, hash=hashlib.sha256(lines[-1]).hexdigest())
    head_file.write_text(json.dumps(state))
    await write_log(path, 2)  # the restart
    done = audit(path, "--key", PUBLIC_PEM)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "chain intact" not in done.stdout, done.stdout
    restart = len(lines) + 1
    assert f"decisions.log:{hidden + 1}-{restart - 1}" in done.stdout, done.stdout
    assert f"decisions.log:{restart}" in done.stdout, done.stdout
    assert "crash" in done.stdout
    live = audit(path, "--key", PUBLIC_PEM, "--live")  # not a tail: --live doesn't excuse it
    assert live.returncode == 1 and "chain intact" not in live.stdout, live.stdout
