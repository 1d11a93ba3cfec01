"""A sink's durable cursor: where in the decision log its acknowledged records end.

One small file per sink beside the log (``decisions.log.sink-<name>.cursor``),
overwritten in place with one ``pwrite`` (padded, so a crash never leaves a
torn document) and ``fdatasync``'d after every acknowledged batch: a restart
resumes after the last acknowledged record and never re-sends it. The file is
locked (``flock``) while a shipper uses it: two shippers on one cursor (a
gateway restarted while its previous shipping process still drains) would
ship records twice, so the second waits (:class:`CursorBusy`)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from gateway.audit.tail import Position

logger = logging.getLogger("portcullis.decision_log.shipping")


class CursorError(Exception):
    """The cursor file can't be read or written."""


class CursorBusy(CursorError):
    """Another shipper holds this cursor (its lock)."""


@dataclass(frozen=True)
class CursorState:
    position: Position
    seq: int  # seq of the last acknowledged record
    hash: str  # its chain hash


class Cursor:
    def __init__(self, log_path: Path, sink_name: str) -> None:
        self.path = log_path.with_name(f"{log_path.name}.sink-{sink_name}.cursor")
        self._fd = -1
        self._size = 0

    def load(self) -> CursorState | None:
        """Open the cursor file (kept open) and read where a previous run stopped."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as error:
            raise CursorError(f"cannot open sink cursor {self.path}: {error.strerror}") from error
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise CursorBusy(f"sink cursor {self.path} is in use by another shipper") from None
        try:
            data = os.pread(self._fd, 4096, 0)
        except OSError as error:
            self.close()
            raise CursorError(f"cannot read sink cursor {self.path}: {error.strerror}") from error
        self._size = len(data)
        if not data.strip():
            return None
        try:
            state = json.loads(data)
            inode, offset = _count(state["inode"]), _count(state["offset"])
            seq = state["seq"]  # the last acknowledged record's, as the log holds it
            if type(seq) is not int:
                raise ValueError(f"seq {seq!r} is not an integer")
            return CursorState(Position(inode, offset), seq, str(state["hash"]))
        except (ValueError, KeyError, TypeError, RecursionError):  # nested past the parser
            self.close()  # and its lock: the next attempt says the same, not "busy"
            raise CursorError(
                f"{self.path} is damaged: it records what this sink has shipped. Remove it to "
                "ship the current log file again from its start (the SIEM then sees duplicates, "
                "recognisable by their chain_hash)"
            ) from None

    def save(self, state: CursorState) -> None:
        document = {
            "inode": state.position.inode,
            "offset": state.position.offset,
            "seq": state.seq,
            "hash": state.hash,
        }
        data = json.dumps(document, separators=(",", ":")).encode().ljust(self._size)
        try:
            os.pwrite(self._fd, data, 0)
            os.fdatasync(self._fd)
        except OSError as error:
            raise CursorError(f"cannot save sink cursor {self.path}: {error.strerror}") from error
        self._size = len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _count(value: object) -> int:
    """A cursor's inode or offset: a whole number, never negative (what save()
    writes); anything else (1e400, -5, "7", true) means the file is damaged."""
    if type(value) is not int or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value
