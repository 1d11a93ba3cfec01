"""Following the decision log as it is written: complete lines from a byte position
on, across the writer's reopen after logrotate (the shippers' reader).

:mod:`gateway.audit.reader` reads finished files; this follows a live one. A
position is (inode, byte offset after the last line taken), so it survives a
restart and a rotation: a position in a file that was renamed (``decisions.log.1``)
is found again by its inode among the log's siblings, read to its end, and the
reader then moves on to the file now at the log's path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from gateway.audit.chain import line_hash

logger = logging.getLogger("portcullis.decision_log.tail")

_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class Position:
    """Where the next line starts: the file's inode and a byte offset in it."""

    inode: int
    offset: int


@dataclass(frozen=True)
class TailLine:
    """One complete line: its bytes, chain hash, parsed record, and the position after it."""

    raw: bytes
    digest: str
    record: dict[str, Any] | None
    end: Position


class LogTail:
    """Complete lines of a growing log, in order, from a position."""

    def __init__(self, path: Path, position: Position | None = None) -> None:
        self.path = Path(path)
        self._file: BinaryIO | None = None
        self._inode = 0
        self._offset = 0
        self._start = position

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def position(self) -> Position:
        return Position(self._inode, self._offset)

    def read(self, max_lines: int, max_bytes: int = _READ_BLOCK) -> list[TailLine]:
        """Up to ``max_lines`` complete lines after the position (none: nothing new).
        The position moves past them only when :meth:`advance` is called."""
        if self._file is None and not self._open():
            return []
        lines = self._read_lines(max_lines, max_bytes)
        if not lines and self._rotated():
            # The writer finishes the old file before it creates the new one:
            # read the old one once more, then move on.
            lines = self._read_lines(max_lines, max_bytes)
            if not lines:
                self._switch_to_current()
                lines = self._read_lines(max_lines, max_bytes)
        return lines

    def advance(self, position: Position) -> None:
        """Take the lines up to ``position`` as done."""
        if position.inode == self._inode:
            self._offset = position.offset

    def backlog_bytes(self) -> int:
        """Bytes written to the log (current file and the one being finished) past the position."""
        total = 0
        try:
            if self._file is not None:
                total += max(0, os.fstat(self._file.fileno()).st_size - self._offset)
                current = os.stat(self.path)
                if current.st_ino != self._inode:
                    total += current.st_size
            elif self.path.exists():
                total = self.path.stat().st_size
        except OSError:
            pass
        return total

    # -- internals ----------------------------------------------------------

    def _open(self) -> bool:
        start, self._start = self._start, None
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return False
        if start is None or start.inode == current.st_ino:
            self._attach(self.path, start.offset if start else 0)
            return True
        rotated = self._find_inode(start.inode)
        if rotated is not None:
            logger.info("shipping resumes in %s (rotated) at byte %d", rotated, start.offset)
            self._attach(rotated, start.offset)
        else:
            logger.error(
                "decision log %s: the file the shipping cursor points into (inode %d) is gone; "
                "events after byte %d of it may not have been shipped. Shipping %s from its start",
                self.path,
                start.inode,
                start.offset,
                self.path,
            )
            self._attach(self.path, 0)
        return True

    def _attach(self, path: Path, offset: int) -> None:
        self.close()
        file = path.open("rb")
        size = os.fstat(file.fileno()).st_size
        if offset > size:
            logger.error(
                "%s is shorter (%d bytes) than the shipping cursor (%d): it was cut or replaced; "
                "shipping it from its start",
                path,
                size,
                offset,
            )
            offset = 0
        self._file = file
        self._inode = os.fstat(file.fileno()).st_ino
        self._offset = offset

    def _find_inode(self, inode: int) -> Path | None:
        try:
            siblings = list(self.path.parent.iterdir())
        except OSError:
            return None
        for sibling in siblings:
            if not sibling.name.startswith(self.path.name):
                continue
            try:
                if sibling.stat().st_ino == inode and sibling.is_file():
                    return sibling
            except OSError:
                continue
        return None

    def _read_lines(self, max_lines: int, max_bytes: int) -> list[TailLine]:
        file = self._file
        assert file is not None
        file.seek(self._offset)
        data = file.read(max_bytes)
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) >= max_bytes:  # one line longer than a read: take it whole
                data += file.readline()
                end = data.rfind(b"\n")
            if end < 0:
                return []
        lines: list[TailLine] = []
        offset = self._offset
        for raw in data[: end + 1].split(b"\n")[:-1]:
            offset += len(raw) + 1
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                record = None
            lines.append(
                TailLine(
                    raw,
                    line_hash(raw),
                    record if isinstance(record, dict) else None,
                    Position(self._inode, offset),
                )
            )
            if len(lines) >= max_lines:
                break
        return lines

    def _rotated(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return False

    def _switch_to_current(self) -> None:
        file = self._file
        assert file is not None
        leftover = os.fstat(file.fileno()).st_size - self._offset
        if leftover > 0:  # a line the writer never finished (a crash before rotation)
            logger.error(
                "decision log %s: %d bytes at the end of the rotated file are not a whole "
                "line; skipped",
                self.path,
                leftover,
            )
        self._attach(self.path, 0)
