"""`portcullis audit verify` as a user runs it: real files, a subprocess, exit codes."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_decision_log import (
    LOG_FIXTURES,
    event_indexes,
    lines_of,
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


def test_other_key_does_not_verify(log_file: Path) -> None:
    done = audit(log_file, "--key", OTHER_PEM)
    assert done.returncode == 1
    assert "signature does not verify" in done.stdout


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


def test_jwks_that_is_not_json_is_a_usage_error(log_file: Path) -> None:
    done = audit(log_file, "--jwks", PUBLIC_PEM)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {PUBLIC_PEM}: not JSON")
    assert len(done.stderr.strip().splitlines()) == 1


def test_log_that_is_not_json_is_a_usage_error() -> None:
    done = audit(LOG_FIXTURES / "not_a_log.txt", "--key", PUBLIC_PEM)
    assert done.returncode == 2
    assert "is not a Portcullis decision log" in done.stderr


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
    assert done.returncode == 1
    assert "unknown key id 'gateway-test'" in done.stdout
