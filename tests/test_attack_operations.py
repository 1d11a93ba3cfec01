"""An attacker's review of the gateway's operations surface: the server log as
`portcullis gateway` writes it (configure_logging's format), the admin listener
and what the public listener's own pages make the gateway say.

Each test drives the real gateway (tests/gateway_stack.py), or the formatter
configure_logging installs on the root logger, as production runs it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.runner import configure_logging
from tests.gateway_stack import ServerFactory, raw_request
from tests.test_attack_server_log_secrets import (
    ServerLog,
    StubProvider,
    server_log,
    stub,
    stub_stack,
)

__all__ = ["stub"]

SIGN_OUT = "/.portcullis/sign_out"
# A line a log reader takes for a record of its own: the format's header.
RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ [A-Z]+ [\w.]+: ")
# What a terminal or a line-splitting log shipper acts on.
CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def production_formatter() -> logging.Formatter:
    """The formatter configure_logging gives the root logger's handler (the
    server log of `portcullis gateway` and `portcullis demo`)."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        configure_logging("debug")
        (handler,) = root.handlers
        assert handler.formatter is not None
        return handler.formatter
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


@contextlib.contextmanager
def production_server_log() -> Iterator[ServerLog]:
    with server_log() as log:
        log.handler.setFormatter(production_formatter())
        yield log


def forged_lines(log: ServerLog) -> list[str]:
    """Lines of the captured records that a reader would take for records of their
    own, or that hold a control a terminal or a log shipper acts on."""
    bad = []
    for record in log.handler.lines:
        lines = record.split("\n")
        bad += [line for line in lines[1:] if not line[:1].isspace()]
        bad += [line for line in lines if CONTROLS.search(line)]
    return bad


# Text a client can put in a header value: aiohttp's parser refuses C0 controls,
# the gateway's screening text that isn't UTF-8; the rest gets through.
FORGED = "2024-05-01 12:00:00,000 1 INFO portcullis.gateway: forged"
HEADER_TRICKS = {
    "next-line": f"same-origin\u0085{FORGED}",
    "line-separator": f"same-origin\u2028{FORGED}",
    "csi": "\u009b2J\u009b31mcleared the screen",
    "bidi": "same-origin\u202egnp.exe",
}


async def test_a_refused_sign_out_cannot_forge_or_colour_a_server_log_line(
    aiohttp_server: ServerFactory, tmp_path: Path, stub: StubProvider
) -> None:
    """An anonymous POST to the sign-out page with a made-up Sec-Fetch-Site or
    Origin is refused, and the refusal's reason, quoting the header, is logged:
    U+0085 (NEL: a line break to Python's and Java's line readers), U+2028 and
    the C1 CSI (U+009B, a terminal's escape sequence) went to the log as they came."""
    async with stub_stack(aiohttp_server, tmp_path, stub) as stack:
        with production_server_log() as log:
            for value in HEADER_TRICKS.values():
                for header in ("Sec-Fetch-Site", "Origin"):
                    head = (
                        f"POST {SIGN_OUT} HTTP/1.1\r\nHost: {{host}}\r\nContent-Length: 0\r\n"
                        f"{header}: {value}\r\n"
                    ).encode()
                    status, _, _ = await raw_request(stack.url, head)
                    assert status == 403
    assert log.holding("sign-out refused"), log.text
    assert not forged_lines(log), forged_lines(log)


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(text=st.text(max_size=80), traceback=st.booleans())
def test_no_text_a_record_quotes_starts_a_line_of_its_own(text: str, traceback: bool) -> None:
    """Whatever a record quotes (a token's `sub`, a provider's answer, an
    exception's message), its lines after the first are indented and hold no
    control: a multi-line policy error still reads as one record."""
    formatter = production_formatter()
    record = logging.LogRecord("portcullis.gateway", logging.WARNING, __file__, 1,
                               "signed in %s", (text,), None)  # fmt: skip
    if traceback:
        try:
            raise ValueError(text)
        except ValueError:
            record.exc_info = sys.exc_info()
    formatted = formatter.format(record)
    first, *rest = formatted.split("\n")
    assert RECORD_START.match(first)
    assert all(line[:1] == " " for line in rest), formatted
    assert not CONTROLS.search(formatted.replace("\n", "")), formatted


async def test_refused_sign_outs_do_not_flood_the_server_log(
    aiohttp_server: ServerFactory, tmp_path: Path, stub: StubProvider
) -> None:
    """Anyone can POST to the sign-out page: each refusal is a decision-log event
    (the record a SIEM counts), and it also wrote a WARNING line per request,
    so a loop of anonymous POSTs filled the server log at the attacker's rate."""
    async with stub_stack(aiohttp_server, tmp_path, stub) as stack:
        with production_server_log() as log:
            for index in range(200):
                headers = {"Sec-Fetch-Site": "cross-site", "Origin": f"https://{index}.example"}
                async with stack.session.post(stack.url + SIGN_OUT, headers=headers) as refused:
                    assert refused.status == 403
        events = await stack.events(at_least=200)
    refusals = [e for e in events if "gateway.sign_out_refused" in str(e["result"])]
    assert len(refusals) == 200
    said = log.holding("sign-out refused")
    assert 1 <= len(said) <= 2, len(said)
    assert "said once a minute" in said[0]
