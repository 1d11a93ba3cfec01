"""Attack review of `portcullis audit verify` and `policy replay` with hostile
inputs: a --head or --jwks URL that answers as an attacker likes, and files an
attacker wrote. One test per attack, named for it. What they hold to (README
"Operations: decision log", "Anchoring"): a head or key that can't be used is
a usage error (exit 2) within the documented time, never a hang."""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audit.chain import MAX_LINE_BYTES
from tests.conftest import ROOT
from tests.test_audit_cli import PUBLIC_PEM, audit, log_file
from tests.test_decision_log import append_line_of, lines_of, write_log

__all__ = ["log_file"]  # a fixture, used by name


@pytest.fixture
def dripping_server() -> Iterator[str]:
    """A URL that answers one byte every half second, forever: each read of the
    socket returns within any per-read timeout, the answer never ends."""
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(b"{")
                while not stop.wait(0.5):
                    self.wfile.write(b" ")
                    self.wfile.flush()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/audit/head"
    stop.set()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("option", ["--head", "--jwks"])
def test_a_url_that_answers_a_byte_at_a_time_forever_is_given_up_on_after_10_s(
    log_file: Path, dripping_server: str, option: str
) -> None:
    """The 10 s timeout was per read of the socket: a server sending a byte every
    half second kept `audit verify` (and a CI job running `policy replay`) waiting
    for as long as it liked."""
    keys = ["--key", str(PUBLIC_PEM)] if option == "--head" else []
    started = time.monotonic()
    done = audit(log_file, *keys, option, dripping_server)
    assert time.monotonic() - started < 20
    assert done.returncode == 2, done.stdout + done.stderr
    what = "the head" if option == "--head" else "the JWKS"
    assert f"cannot fetch {what}: no whole answer within 10 s" in done.stderr


# `audit verify` in an address space of 1 GiB (a CI runner's, or a container's).
_IN_1_GIB = (
    "import resource, runpy; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
    "runpy.run_module('portcullis', run_name='__main__', alter_sys=True)"
)


async def test_a_log_line_of_hundreds_of_megabytes_is_reported_damaged_not_read_whole(
    tmp_path: Path,
) -> None:
    """A line of 300 MB (appended to the log while the gateway was stopped, and the
    .head file pointed at it, so the next file's start record links to it): every
    line was read whole, and the bytes, a copy and the parser's string cost `audit
    verify` some 1.7 GB: under 1 GiB it died with MemoryError instead of reporting
    the line. It is hashed in pieces and reported, and the chain goes on past it."""
    path = tmp_path / "decisions.log"
    await write_log(path, 3)
    number = len(lines_of(path)) + 1
    size = 300_000_000
    digest = append_line_of(path, size)
    path.rename(tmp_path / "decisions.log.1")
    head_file = path.with_name(path.name + ".head")
    head_file.write_text(json.dumps({"seq": 3, "hash": digest, "signed": None}))
    await write_log(path, 3)
    done = subprocess.run(
        [sys.executable, "-c", _IN_1_GIB, "audit", "verify", f"{path}.1", path, "--key",
         PUBLIC_PEM],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr, done.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == (
        f"TAMPERED: {path}.1:{number}: a line of {size} bytes, over the {MAX_LINE_BYTES} a "
        "line may hold (the gateway's are some KB; only hashed, not read): edited or "
        "damaged [damaged]\n"
    )
