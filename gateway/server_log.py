"""The server log's line format: one record starts one line, whatever its text holds.

Log messages quote what clients and identity providers send (a refused
Sec-Fetch-Site or Origin, a token's `sub`, a provider's issuer): text that may
hold a line break or a terminal control. Each line a record starts is the
record's header (time, process, level, logger); its further lines (a policy
error, a traceback) are indented, so a record can't add a line that reads as
another record, and controls are written escaped, so none reaches the terminal
of whoever reads the log (`kubectl logs`, `journalctl`).
"""

from __future__ import annotations

import logging
import re

FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
# What a log line never holds as is: C0 controls but the tab and the line break,
# DEL and the C1 controls (U+0085 is a line break to Python and Java, U+009B a
# terminal's CSI), Unicode's line and paragraph separators and the bidirectional
# controls that reorder what a reader sees. Written as \xNN or \uNNNN.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")
CONTINUATION = "\n    "


def _escaped(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class OneRecordALine(logging.Formatter):
    """logging.Formatter whose lines after a record's first are indented, with
    controls escaped (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        text = _CONTROL.sub(_escaped, super().format(record))
        return text.replace("\n", CONTINUATION)


def configure(level: int, fmt: str = FORMAT) -> None:
    """What logging.basicConfig(level=, format=) does, with OneRecordALine."""
    root = logging.getLogger()
    if root.handlers:  # as basicConfig: a process that set up its logging keeps it
        return
    handler = logging.StreamHandler()
    handler.setFormatter(OneRecordALine(fmt))
    root.addHandler(handler)
    root.setLevel(level)
