"""Attack review of `portcullis audit verify` and `policy replay` with hostile
inputs: a --head or --jwks URL that answers as an attacker likes, and files an
attacker wrote. One test per attack, named for it. What they hold to (README
"Operations: decision log", "Anchoring"): a head or key that can't be used is
a usage error (exit 2) within the documented time, never a hang."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_audit_cli import PUBLIC_PEM, audit, log_file

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
