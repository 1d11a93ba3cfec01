"""Following the decision log as it is written: complete lines from a byte position
on, across the writer's reopen after logrotate (the shippers' reader).

:mod:`gateway.audit.reader` reads finished files; this follows a live one. A
position is (inode, byte offset after the last line taken), so it survives a
restart and a rotation: a position in a file that was renamed (``decisions.log.1``)
is found again by its inode among the log's siblings, read to its end, and the
reader then moves on to the file now at the log's path.

It moves on only when the writer is done with the old file: once that file ends
with the writer's ``rotate`` (or ``close``) signature, which the writer appends
before it reopens the path. It moves on to the file that continues the chain (whose
``start`` record links to the old file's last line), not simply to the log's
path: a shipper that fell behind by several rotations (a long SIEM outage) finds
``decisions.log.1`` between ``decisions.log.2`` and ``decisions.log``, and a file
of the chain that is gone (deleted, compressed) is said and counted as a
discontinuity. Logrotate's ``create`` puts an empty file at the path
at once, while the writer goes on appending to the old one until it is told to
reopen (SIGUSR1); moving on earlier would leave those events unshipped. A writer
that died without a seal is waited for ``ROTATION_GRACE`` seconds of an unchanged
old file once the new one has content.

A file found shorter than the position (``copytruncate``, ``: > decisions.log``),
or whose line before the position is not the one the cursor recorded, is read
again from its start (at least once: the SIEM may see duplicates, never half a
line), with an error logged and ``discontinuities`` counted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import time
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import orjson

from gateway.audit.chain import MAX_LINE_BYTES, SIGNATURE_TYPE, line_hash
from gateway.audit.reader import OVERLONG_HEAD, parse_line, read_line_on

logger = logging.getLogger("portcullis.decision_log.tail")

_READ_BLOCK = 1 << 20
# A rotated file without the writer's seal is left once it was unchanged this long
# (seconds) and the new file has content (the writer crashed before reopening).
ROTATION_GRACE = 5.0
_SEALS = (b'"rotate"', b'"close"')
_CHECK_BACK = 1 << 20  # how far back from a cursor its line is looked for
_SEAL_MAX = 4096  # a signature line is some 400 bytes
_ROTATED = re.compile(r"[.-][0-9][0-9.-]*")  # logrotate's suffixes: .1, -20261203
_WATCH_LEFT_BEHIND = 60.0  # seconds a rotated file is watched after the tail left it


class Position(NamedTuple):
    """Where the next line starts: the file's inode and a byte offset in it."""

    inode: int
    offset: int


class TailLine(NamedTuple):
    """One complete line: its bytes, chain hash, and the position after it.
    (Tuples: the shippers make thousands a second, and a frozen dataclass costs more.)

    Not parsed here: its reader parses it (:func:`parse_record`) just before it
    uses the record and drops it right after. A batch of 500 records parsed
    first and formatted later no longer fits the CPU's caches, and the
    shippers spent up to twice the CPU per record on it."""

    raw: bytes
    digest: str
    end: Position
    # A line longer than MAX_LINE_BYTES: its length. It was hashed in pieces, never
    # held whole: ``raw`` is its first bytes, and it is shipped as a damaged record.
    overlong: int = 0


def parse_record(raw: bytes) -> dict[str, Any] | None:
    """A line's JSON object; None if it is not one (a damaged line). Lines the
    writer wrote with its fallback (lone surrogates of bytes that were not UTF-8)
    are records too: :func:`gateway.audit.reader.parse_line` reads them."""
    record = parse_line(raw)
    return record if type(record) is dict else None


class LogTail:
    """Complete lines of a growing log, in order, from a position."""

    def __init__(
        self, path: Path, position: Position | None = None, line_hash: str | None = None
    ) -> None:
        """``line_hash``: the chain hash of the line that ends at ``position``
        (the cursor's), checked when the file is opened."""
        self.path = Path(path)
        self._file: BinaryIO | None = None
        self._inode = 0
        self._offset = 0
        self._start = position
        self._start_hash = line_hash
        self._unchanged: tuple[int, float] = (-1, 0.0)  # rotated file: (size, since)
        # The rotated file just left: (file, size then, when), watched for a while.
        self._left_behind: tuple[BinaryIO, int, float] | None = None
        self.discontinuities = 0  # files found cut, replaced, or not matching the cursor

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._left_behind is not None:
            self._left_behind[0].close()
            self._left_behind = None

    @property
    def position(self) -> Position:
        return Position(self._inode, self._offset)

    def read(self, max_lines: int, max_bytes: int = _READ_BLOCK) -> list[TailLine]:
        """Up to ``max_lines`` complete lines after the position (none: nothing new).
        The position moves past them only when :meth:`advance` is called."""
        if self._file is None and not self._open():
            return []
        self._check_truncated()
        if self._left_behind is not None:
            self._check_left_behind()
        lines = self._read_lines(max_lines, max_bytes)
        if not lines and self._rotated() and self._writer_left():
            # Read the old file once more (it may have grown since), then move on.
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
        """Bytes written to the log past the position: the rest of the file being
        shipped, and, when that is a rotated file, every file written after it
        (rotated ones too: a shipper several rotations behind) up to the log's path."""
        try:
            if self._file is None:
                return self.path.stat().st_size if self.path.exists() else 0
            shipping = os.fstat(self._file.fileno())
            total = max(0, shipping.st_size - self._offset)
            if os.stat(self.path).st_ino == self._inode:
                return total
            for sibling in [self.path, *self._rotated_siblings()]:
                try:
                    found = os.stat(sibling)
                except OSError:
                    continue
                later = found.st_mtime_ns > shipping.st_mtime_ns or sibling == self.path
                if stat.S_ISREG(found.st_mode) and found.st_ino != self._inode and later:
                    total += found.st_size
            return total
        except OSError:
            return 0

    def _rotated_siblings(self) -> list[Path]:
        """Files beside the log named as logrotate names its rotations, by name
        (``decisions.log.1``, ``decisions.log-20261203``; not ``.gz``, ``.head``,
        cursors): the one rule for which files the tail looks at, when it counts
        the backlog, finds the cursor's file, and follows the chain."""
        try:
            names = os.listdir(self.path.parent)
        except OSError:
            return []
        prefix = self.path.name
        return [
            self.path.parent / name
            for name in sorted(names)
            if name.startswith(prefix) and _ROTATED.fullmatch(name[len(prefix) :])
        ]

    # -- internals ----------------------------------------------------------

    def _open(self) -> bool:
        start, self._start = self._start, None
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return False
        expected, self._start_hash = self._start_hash, None
        if start is None or start.inode == current.st_ino:
            self._attach(self.path, start.offset if start else 0, expected)
            return True
        rotated = self._find_inode(start.inode)
        if rotated is not None and not _holds(rotated, start.offset, expected):
            # Inodes are reused: the cursor's file was deleted (or compressed) and
            # another file beside the log now has its number. Not the log: never shipped.
            logger.error(
                "decision log %s: %s has the inode the shipping cursor points into (%d) but "
                "not the line the cursor recorded before byte %d: another file now",
                self.path,
                rotated,
                start.inode,
                start.offset,
            )
            rotated = None
        if rotated is not None:
            logger.info("shipping resumes in %s (rotated) at byte %d", rotated, start.offset)
            self._attach(rotated, start.offset, expected)
        else:
            self.discontinuities += 1
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

    def _attach(self, path: Path, offset: int, expected_hash: str | None = None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        file = path.open("rb")
        size = os.fstat(file.fileno()).st_size
        if offset > size:
            self.discontinuities += 1
            logger.error(
                "decision log %s is shorter (%d bytes) than the shipping cursor (%d): it was "
                "truncated or replaced, and what was cut from it is gone from this file; "
                "shipping it again from its start (the SIEM may see duplicates)",
                path,
                size,
                offset,
            )
            offset = 0
        elif offset > 0 and expected_hash and not _ends_with(file, offset, expected_hash):
            self.discontinuities += 1
            logger.error(
                "decision log %s: the line before byte %d is not the one the shipping cursor "
                "recorded (the file was truncated and rewritten, or replaced); shipping it "
                "again from its start (the SIEM may see duplicates), not from mid-line",
                path,
                offset,
            )
            offset = 0
        self._file = file
        self._inode = os.fstat(file.fileno()).st_ino
        self._offset = offset
        self._unchanged = (-1, 0.0)

    def _check_truncated(self) -> None:
        """A file cut in place (``copytruncate``) while it is followed: from its start.
        Cut and written past the position again before this look (a sink in a long
        backoff): the byte before the position is then rarely a line's end."""
        file = self._file
        assert file is not None
        size = os.fstat(file.fileno()).st_size
        offset = self._offset
        if size < offset:
            how = f"truncated in place (now {size} bytes, shipped up to byte {offset})"
        elif 0 < offset < size and os.pread(file.fileno(), 1, offset - 1) != b"\n":
            how = f"truncated in place and written again (byte {offset} is not after a line)"
        else:
            return
        self.discontinuities += 1
        logger.error(
            "decision log %s was %s: shipping it from its start; records written after the "
            "last acknowledged one and cut before they were read are gone from this file "
            "(copytruncate loses them: use logrotate's create and SIGUSR1)",
            self.path,
            how,
        )
        self._offset = 0

    def _writer_left(self) -> bool:
        """Whether the writer is done with the rotated file: it ends with the
        writer's seal, or (a writer that died) it stayed unchanged for
        ``ROTATION_GRACE`` s while the new file has content."""
        file = self._file
        assert file is not None
        size = os.fstat(file.fileno()).st_size
        if size == self._offset and self._offset > 0:
            last = _last_line(file, self._offset, _SEAL_MAX)
            if last is not None and _is_seal(last):
                return True
        now = time.monotonic()
        if self._unchanged[0] != size:
            self._unchanged = (size, now)
            return False
        if now - self._unchanged[1] < ROTATION_GRACE:
            return False
        try:
            new_has_content = os.stat(self.path).st_size > 0
        except FileNotFoundError:
            return False
        if new_has_content:
            logger.warning(
                "decision log %s: the rotated file (inode %d) has no closing seal and was "
                "unchanged for %.0f s while the new one has content: moving on to the new one",
                self.path,
                self._inode,
                ROTATION_GRACE,
            )
        return new_has_content

    def _find_inode(self, inode: int) -> Path | None:
        for sibling in self._rotated_siblings():
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
            if len(data) < max_bytes:
                return []  # the writer is mid-line
            # One line longer than a read: take it whole, up to MAX_LINE_BYTES.
            data += file.readline(max(0, MAX_LINE_BYTES + 1 - len(data)))
            if not data.endswith(b"\n"):
                return self._overlong(data) if len(data) > MAX_LINE_BYTES else []
        lines: list[TailLine] = []
        inode, offset = self._inode, self._offset
        # At most max_lines lines: the rest of the block (the last piece: past the
        # max_lines-th newline, or after the last one) is read again next time.
        for raw in data.split(b"\n", max_lines)[:-1]:
            offset += len(raw) + 1
            lines.append(TailLine(raw, line_hash(raw), Position(inode, offset)))
        return lines

    def _overlong(self, start: bytes) -> list[TailLine]:
        """The line that begins with ``start`` (more than MAX_LINE_BYTES, no newline),
        read on to its end a piece at a time and hashed as it goes: never held
        whole. Nothing while it has no newline yet (the writer is mid-line)."""
        assert self._file is not None
        digest = hashlib.sha256(start)
        read, ended = read_line_on(self._file, digest)
        if not ended:
            return []
        size = len(start) + read - 1
        end = Position(self._inode, self._offset + size + 1)
        return [TailLine(start[:OVERLONG_HEAD], digest.hexdigest(), end, size)]

    def _rotated(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return False

    def _switch_to_current(self) -> None:
        """Move on from the finished file to the one that continues its chain."""
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
        shipped = self._inode
        last = _last_line(file, self._offset, _CHECK_BACK) if self._offset else None
        following = self._next_in_chain(line_hash(last)) if last is not None else None
        if self._left_behind is not None:
            self._left_behind[0].close()
        self._left_behind = (file, self._offset + max(0, leftover), time.monotonic())
        self._file = None  # kept open in _left_behind
        if following is None:
            following = self.path
            if last is not None:
                self.discontinuities += 1
                logger.error(
                    "decision log %s: no file beside it continues the chain from the rotated "
                    "file (inode %d) just shipped: the file after it was deleted or "
                    "compressed before it was shipped, or a new chain began; its events are "
                    "not shipped. Moving on to %s",
                    self.path,
                    shipped,
                    self.path,
                )
        self._attach(following, 0)

    def _next_in_chain(self, digest: str) -> Path | None:
        """The file beside the log whose first line is a ``start`` signature linking
        to the line ``digest``: the log's path if it is the one, else a rotated
        file (several rotations happened while this one was being shipped)."""
        candidates = [self.path, *self._rotated_siblings()]
        for candidate in candidates:
            try:
                # Regular files only, opened without blocking: a FIFO beside the log
                # would otherwise hold the shipper's thread for good.
                fd = os.open(candidate, os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                status = os.fstat(fd)
                if not stat.S_ISREG(status.st_mode) or status.st_ino == self._inode:
                    continue
                first = os.pread(fd, _SEAL_MAX, 0).split(b"\n", 1)[0]
            except OSError:
                continue
            finally:
                os.close(fd)
            if _starts_after(first, digest):
                return candidate
        return None

    def _check_left_behind(self) -> None:
        """Nothing may be written to a rotated file once the tail moved on (the
        writer sealed it, or stopped writing to it): if something is, say so."""
        assert self._left_behind is not None
        file, size, since = self._left_behind
        now = os.fstat(file.fileno()).st_size
        if now > size:
            self.discontinuities += 1
            logger.error(
                "decision log %s: %d bytes were written to the rotated file (inode %d) after "
                "shipping moved on to the new one; they are not shipped (two gateways writing "
                "one log, or a writer stopped longer than %.0f s?)",
                self.path,
                now - size,
                os.fstat(file.fileno()).st_ino,
                ROTATION_GRACE,
            )
            self._left_behind = (file, now, since)
        elif time.monotonic() - since > _WATCH_LEFT_BEHIND:
            file.close()
            self._left_behind = None


def _last_line(file: BinaryIO, end: int, window: int) -> bytes | None:
    """The whole line that ends at byte ``end`` (its newline excluded); None if
    ``end`` is not at a line's end, or the line is longer than ``window``."""
    start = max(0, end - window)
    file.seek(start)
    data = file.read(end - start)
    if not data.endswith(b"\n"):
        return None
    cut = data.rfind(b"\n", 0, len(data) - 1)
    if cut < 0 and start > 0:
        return None
    return data[cut + 1 : -1]


def _holds(path: Path, end: int, digest: str | None) -> bool:
    """Whether ``path`` is the file a cursor (its offset ``end`` and the hash
    ``digest`` of the line before it) points into, as far as can be told."""
    if digest is None or end == 0:
        return True
    try:
        with path.open("rb") as file:
            return end <= os.fstat(file.fileno()).st_size and _ends_with(file, end, digest)
    except OSError:
        return False


def _ends_with(file: BinaryIO, end: int, digest: str) -> bool:
    """Whether the line ending at byte ``end`` has chain hash ``digest`` (a cursor
    check; a line too long to look at only has to end there)."""
    line = _last_line(file, end, _CHECK_BACK)
    if line is not None:
        return line_hash(line) == digest
    file.seek(end - 1)
    return file.read(1) == b"\n"


def _starts_after(line: bytes, digest: str) -> bool:
    """Whether ``line`` is a ``start`` signature linking to the line ``digest``."""
    if digest.encode() not in line:
        return False
    record = _signature(line)
    return record is not None and record.get("reason") == "start" and record.get("head") == digest


def _is_seal(line: bytes) -> bool:
    """The writer's signature for a rotation or its close: nothing follows in this file."""
    if not any(seal in line for seal in _SEALS):
        return False
    record = _signature(line)
    return record is not None and record.get("reason") in ("rotate", "close")


def _signature(line: bytes) -> dict[str, Any] | None:
    """The chain signature record ``line`` holds, if it is one."""
    if SIGNATURE_TYPE.encode() not in line:
        return None
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(record, dict) and record.get("type") == SIGNATURE_TYPE:
        return record
    return None
