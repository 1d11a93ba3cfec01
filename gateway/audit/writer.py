"""The decision log's writer: every decision as one hash-chained JSON line, the chain signed.

The file format is described in :mod:`gateway.audit.chain`.

Writing: ``record()`` masks and serialises the event (no I/O, no locks) and
appends it to a deque; the writer thread adds the chain fields, hashes and
appends chunks of lines with ``os.write`` (``O_APPEND``), fsyncs at every
signature, and releases the GIL between chunks, so the event loop never waits
for it. A chunk is committed (the chain advances) only once fully written; when
a write fails (full disk, I/O error) the partial bytes are cut off again,
``write_errors`` counts it, an error is logged, the events stay queued and are
retried with backoff, so nothing is dropped while the process lives.
``queue_depth`` shows the backlog for /metrics and alerting.

Durability: ``record()`` returns a ticket (the event's number in this run);
``await durable(ticket)`` returns once the event is written and fsync'd. The
writer fsyncs once per round when anyone waits, so every request recorded
while the previous fsync ran shares the next one (group commit). Nobody
waiting (``durability: async``) costs nothing: fsyncs stay at signatures.

``await close()`` drains everything, writes the
``close`` signature and fsyncs; if the disk is still failing when its timeout
runs out, it logs how many events are lost.

``record()`` serialises ``input`` and ``result`` before it returns: the caller
may change them afterwards. Masking copies the dicts on the way to the masked
value, so the caller's objects are never modified.

One writer per file: the file is locked (``flock``); with several worker
processes give each its own path.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import errno
import fcntl
import hashlib
import heapq
import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.audit.chain import (
    DECISION_PATH,
    GENESIS,
    MAX_LINE_BYTES,
    SIGNATURE_TYPE,
    check_signature,
    line_hash,
    rfc3339_ns,
    signing_input,
)
from gateway.audit.reader import read_line_on
from gateway.audit.redaction import DEFAULT_MASKED_HEADERS, Redactor
from portcullis import __version__

logger = logging.getLogger("portcullis.decision_log")

# Lines per write: bounds how long the writer holds the GIL between syscalls.
_CHUNK = 64
# Wake the writer early when this many events wait (else every flush_interval).
_WAKE_AT = 2048
_MAX_BACKOFF = 5.0
# In a round with waiters, fsync at least every this many chunks, so a steady
# stream of events can't postpone a waiting request's fsync indefinitely.
_SYNC_EVERY_CHUNKS = 16


class DecisionLogError(Exception):
    """The decision log can't be opened (bad path, in use by another process)."""


# Queue items: ("event", line without its chain fields),
# ("sign", reason) and ("reopen",).
_Item = tuple[Any, ...]
_PATH_CHECK_EVERY = 1.0  # seconds between checks that the path still names the file
_FALLBACK_SAY_EVERY = 60.0  # seconds between warnings that events needed the fallback writer
_PATH_GRACE = 30.0  # seconds a file put at the path waits for its SIGUSR1 (logrotate's create)


@dataclass
class _Chain:
    head: str = GENESIS
    seq: int = 0  # events in the chain so far
    signed: int = 0  # seq of the last signature written
    signature: bytes | None = None  # the last signature line written


class DecisionLog:
    """Append-only, hash-chained, periodically signed decision log."""

    def __init__(
        self,
        path: str | Path,
        signing_key: ec.EllipticCurvePrivateKey,
        *,
        key_id: str,
        sign_interval: float = 10.0,
        mask_headers: Iterable[str] = (),
        redactor: Redactor | None = None,
        labels: dict[str, str] | None = None,
        sign_every: int = 10_000,
        flush_interval: float = 0.05,
        name: str | None = None,
        keep_name: bool = False,
    ) -> None:
        if not isinstance(signing_key, ec.EllipticCurvePrivateKey) or not isinstance(
            signing_key.curve, ec.SECP256R1
        ):
            raise ValueError("the decision log is signed with ES256: need an EC P-256 key")
        if sign_interval <= 0 or sign_every <= 0 or flush_interval <= 0:
            raise ValueError("sign_interval, sign_every and flush_interval must be positive")
        self.path = Path(path)
        # Where the chain stands, kept beside the log: a run that starts on an
        # empty file (logrotate moved the old one away) continues the chain from it.
        self.head_path = self.path.with_name(self.path.name + ".head")
        self._head_fd = -1
        self._head_size = 0
        self._key = signing_key
        self._kid = key_id
        # Signed into every chain signature (gateway/audit/chain.py), so heads of
        # several logs in one SIEM index can be told apart; None: not named. With
        # ``keep_name`` (a default name, not a configured one), a chain that goes on
        # keeps the name its head file records: a host renamed (a container made
        # anew on the same volume) must not rename the log, or a cut back to before
        # the rename would pass as "the later heads are another log's".
        self._name = name
        self._keep_name = keep_name
        self._saved_name: str | None = None
        self._sign_interval = sign_interval
        self._sign_every = sign_every
        self._flush_interval = flush_interval
        # Masking and shortening: gateway/audit/redaction.py. Without a redactor,
        # ``mask_headers`` adds to its default list.
        self._redactor = redactor or Redactor(mask_headers=(*DEFAULT_MASKED_HEADERS, *mask_headers))
        self._labels = {"version": __version__, **(labels or {})}

        self._queue: collections.deque[_Item] = collections.deque()
        self._fallbacks = 0  # events the fallback writer wrote, and when that was last said
        self._fallback_said = -_FALLBACK_SAY_EVERY
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stopping = False
        self._abandon = False
        # When the path was last checked to still name the file written (monotonic
        # s), and whether it was found not to (deleted, or moved without SIGUSR1).
        self._path_checked = 0.0
        self._path_lost = 0.0  # since when (monotonic s); 0: the path is the file
        self._path_unusable = False  # said: the path can't be opened again
        self._reopen_wanted = False
        self._fd = -1
        self._chain = _Chain()
        self._chunk: list[_Item] | None = None
        self._last_signed = time.monotonic()
        self._failures = 0
        self._events_written = 0
        self._write_errors = 0
        self._signatures_written = 0
        # Durability (group commit): tickets recorded, events known durable,
        # and the event loop's waiters as a heap of (ticket, n, future).
        self._recorded = 0
        self._durable = 0
        # Events written before an fsync failed: Linux may drop their pages and
        # clear the error, so a later fsync succeeding proves nothing for them.
        self._poisoned = 0
        self._fsyncs = 0
        self._sync_wanted = False
        self._waiters: list[tuple[int, int, asyncio.Future[bool]]] = []
        self._waiter_ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the gateway's side -------------------------------------------------

    async def start(self) -> None:
        """Open (or continue) the file and start the writer; raises DecisionLogError."""
        if self._thread is not None:
            return
        self._fd, self._chain = await asyncio.to_thread(self._open, None)
        if self._keep_name and self._saved_name is not None:
            self._name = self._saved_name
        self._loop = asyncio.get_running_loop()
        self._queue.appendleft(("sign", "start"))
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def record(
        self,
        *,
        decision_id: str,
        input: dict[str, Any],
        result: Any,
        revision: str,
        metrics: dict[str, int],
        labels: dict[str, Any] | None = None,
        path: str = DECISION_PATH,
        error: dict[str, str] | None = None,
    ) -> int:
        """Queue one decision, masked and serialized now (input and result may
        change afterwards); never blocks.

        ``path`` names the policy that decided, or ``gateway`` for a request the
        gateway refused before any policy was asked (see REFUSAL_PATH). Returns
        the event's ticket for :meth:`durable`. ``error``: why a decision that
        failed closed did (``{code, message}``, masked already: see
        gateway/policy/failure.py), the event's ``error`` as OPA's."""
        if self._closed:
            raise RuntimeError("decision log is closed: this decision would be lost")
        body = self._event_body(
            time.time_ns(), decision_id, input, result, revision, metrics, labels, path, error
        )
        queue = self._queue
        queue.append(("event", body))
        if len(queue) >= _WAKE_AT:
            self._wake.set()
        self._recorded += 1
        return self._recorded

    async def durable(self, ticket: int, timeout: float) -> bool:
        """Wait until the event with this ticket is written and fsync'd; False
        if that didn't happen within ``timeout`` s (a failing disk, a closed log)."""
        if ticket <= self._durable:
            return ticket > self._poisoned
        if self._thread is None or self._abandon:
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (ticket, next(self._waiter_ids), future))
        self._sync_wanted = True
        self._wake.set()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False

    def _release(self, durable: int) -> None:
        """On the event loop: wake every waiter whose event is now durable."""
        waiters = self._waiters
        while waiters and waiters[0][0] <= durable:
            ticket, _, future = heapq.heappop(waiters)
            if not future.done():
                future.set_result(ticket > self._poisoned)
        self._sync_wanted = bool(waiters)

    def reopen(self) -> None:
        """Seal the current file and continue the chain in a fresh open of ``path``.

        For SIGHUP after logrotate moved the file away (like nginx's reopen).
        Ignored once close() began: the run ends sealed in the file it has (a
        rotate after the close would begin a file the run never writes to).
        """
        if self._closed:
            return
        self._reopen_wanted = True
        self._queue.append(("reopen",))
        self._wake.set()

    async def close(self, timeout: float = 30.0) -> None:
        """Write everything recorded so far, a ``close`` signature, fsync, stop."""
        if self._closed:
            return
        self._closed = True
        self._queue.append(("sign", "close"))
        thread = self._thread
        if thread is None:  # never started: nothing was written, nothing to seal
            return
        self._stopping = True
        self._wake.set()
        await asyncio.to_thread(thread.join, timeout)
        if thread.is_alive():
            self._abandon = True
            self._wake.set()
            await asyncio.to_thread(thread.join, 5.0)
            pending = self.stats["queue_depth"]
            logger.error(
                "decision log %s: closing with %d events not written after %d write errors",
                self.path,
                pending,
                self._write_errors,
            )

    def signed_head(self) -> dict[str, Any] | None:
        """The latest chain signature written (for ``/audit/head``): kept outside
        the file, it shows later whether the file's end was cut off."""
        line = self._chain.signature
        if line is None:
            return None
        return {**json.loads(line), "file": str(self.path), "line_hash": line_hash(line)}

    @property
    def seq(self) -> int:
        """Events in the chain so far (written to the file)."""
        return self._chain.seq

    @property
    def stats(self) -> dict[str, int]:
        """Counters for /metrics."""
        chunk = self._chunk
        in_chunk = sum(1 for item in chunk if item[0] == "event") if chunk else 0
        return {
            "events_written": self._events_written,
            "write_errors": self._write_errors,
            "queue_depth": len(self._queue) + in_chunk,
            "signatures_written": self._signatures_written,
            "fsyncs": self._fsyncs,
        }

    # -- the writer thread --------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                # Cleared before draining: a wake-up set while we write is kept.
                self._wake.clear()
                self._check_path()
                delay = self._drain()
                if self._abandon or (self._stopping and not self._queue and self._chunk is None):
                    break
                self._wake.wait(delay)
        except Exception:  # a bug here must be loud: the log is an audit trail
            logger.exception("decision log %s: writer stopped", self.path)
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._close_head()

    def _close_head(self) -> None:
        if self._head_fd >= 0:
            os.close(self._head_fd)
            self._head_fd = -1

    def _drain(self) -> float:
        """Write queued chunks; returns how long to sleep before the next round."""
        chunks = 0
        while not self._abandon:
            if self._sync_wanted and chunks >= _SYNC_EVERY_CHUNKS:
                self._sync_waiters()
                chunks = 0
            if self._chunk is None:
                self._chunk = self._take_chunk()
                if not self._chunk:
                    self._chunk = None
                    if self._sync_wanted:
                        self._sync_waiters()
                    return self._flush_interval
            chunks += 1
            data, chain, events, signatures, reopen = self._serialize(self._chunk)
            start = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                _write_all(self._fd, data)
            except OSError as error:
                self._failed(error, start)
                if self._reopen_wanted:
                    self._reopen_failing()
                return min(_MAX_BACKOFF, 0.05 * 2.0 ** min(self._failures, 7))
            if self._failures:
                logger.warning("decision log %s: writing again", self.path)
            self._failures = 0
            self._chain = chain
            self._save_head()
            self._events_written += events
            self._signatures_written += signatures
            self._chunk = None
            if signatures:
                self._last_signed = time.monotonic()
                if self._fsync():
                    self._published(self._events_written)
            if reopen:
                self._reopen_wanted = False
                self._reopen()
        return self._flush_interval

    def _take_chunk(self) -> list[_Item]:
        chunk: list[_Item] = []
        queue = self._queue
        pending = self._chain.seq - self._chain.signed
        while queue and len(chunk) < _CHUNK and pending < self._sign_every:
            item = queue.popleft()
            chunk.append(item)
            if item[0] == "event":
                pending += 1
            elif item[0] == "reopen":
                if self._still_at_path():
                    # SIGUSR1 with the file not moved (a second signal, an operator's
                    # test): reopening it would only fail on this writer's own lock.
                    chunk.pop()
                    self._reopen_wanted = ("reopen",) in queue
                    logger.info("decision log %s: reopen asked, but the file was not "
                                "moved: still writing it", self.path)  # fmt: skip
                    continue
                break
            else:
                pending = 0
        due = time.monotonic() - self._last_signed >= self._sign_interval
        if pending and (pending >= self._sign_every or due) and not _ends_signed(chunk):
            chunk.append(("sign", "interval"))
        return chunk

    def _serialize(self, chunk: list[_Item]) -> tuple[bytes, _Chain, int, int, bool]:
        head, seq, signed = self._chain.head, self._chain.seq, self._chain.signed
        signature = self._chain.signature
        lines: list[bytes] = []
        events = signatures = 0
        reopen = False
        for item in chunk:
            kind = item[0]
            if kind == "event":
                seq += 1
                events += 1
                line = self._event_line(item, seq, head)
            else:
                reopen = kind == "reopen"
                line = self._signature_line("rotate" if reopen else item[1], seq, head)
                signatures += 1
                signed = seq
                signature = line
            lines.append(line)
            head = line_hash(line)
        lines.append(b"")
        chain = _Chain(head, seq, signed, signature)
        return b"\n".join(lines), chain, events, signatures, reopen

    def _event_body(
        self,
        ns: int,
        decision_id: str,
        input_: dict[str, Any],
        result: Any,
        revision: str,
        metrics: dict[str, int],
        labels: dict[str, Any] | None,
        path: str,
        error: dict[str, str] | None = None,
    ) -> bytes:
        """The event's line without its chain fields (``seq``, ``prev_hash``), which
        the writer adds in order: redacted and serialized on the caller's thread.

        Here, not in the writer thread: Python work in a second thread holds the
        GIL the event loop needs, and every request in flight waits for it. With
        this in the writer, bench/gateway.py's added p99 at 2,000 req/s was
        2.9-3.5 ms; here, 2.0 ms, and the gateway used less CPU per request."""
        event, masked, truncated = self._masked(decision_id, input_, result)
        record: dict[str, Any] = {
            "decision_id": decision_id,
            "timestamp": rfc3339_ns(ns),
            "path": path,
            "input": event["input"],
            "result": event["result"],
            "labels": {**self._labels, **labels} if labels else self._labels,
            "metrics": metrics,
            "bundles": {"portcullis": {"revision": revision}},
        }
        if error is not None:
            record["error"] = error
        if masked:
            record["masked"] = masked
        if truncated:
            record["truncated"] = truncated
        return self._serialized(record)

    def _masked(
        self, decision_id: str, input_: dict[str, Any], result: Any
    ) -> tuple[dict[str, Any], list[str], list[str]]:
        """{"input", "result"} as logged, and the masked and truncated pointers.
        When the redactor fails (a bug), the input is replaced by a note and the
        result kept, masked where a pointer (/result/...) says, or replaced too:
        the event is never lost, and nothing unmasked is written."""
        event: dict[str, Any] = {"input": input_, "result": result}
        try:
            masked, truncated = self._redactor.apply(event)
            return event, masked, truncated
        except Exception as error:
            logger.exception("decision log: event %s could not be redacted", decision_id)
            event = {"input": {"not_logged": f"redaction failed: {type(error).__name__}"},
                     "result": result}  # fmt: skip
        masked = ["/input"]
        try:
            masked += self._redactor.mask_pointers(event, "result")
        except Exception as again:
            logger.exception("decision log: event %s: its result could not be redacted "
                             "either", decision_id)  # fmt: skip
            event["result"] = {"not_logged": f"redaction failed: {type(again).__name__}"}
            masked.append("/result")
        return event, masked, []

    def _serialized(self, record: dict[str, Any]) -> bytes:
        """The record as one JSON object: by orjson (~14x faster than json here),
        with OPT_NON_STR_KEYS, which doubles its cost, only for a record that
        needs it; else by the fallback writer, which keeps all of it (lone
        surrogates: request bytes that were not UTF-8; a cycle...)."""
        try:
            try:
                return orjson.dumps(record, default=_json_fallback)
            except TypeError:  # a key that isn't a string, among orjson's other refusals
                option = orjson.OPT_NON_STR_KEYS
                return orjson.dumps(record, default=_json_fallback, option=option)
        except (TypeError, ValueError, RuntimeError) as error:  # circular, or changed under us
            # Said once a minute at most: a client chooses its bytes, on every request.
            self._fallbacks += 1
            now = time.monotonic()
            if now - self._fallback_said >= _FALLBACK_SAY_EVERY:
                logger.warning(
                    "decision log: event %s needs the fallback writer: %s (%d events so far)",
                    record["decision_id"], error, self._fallbacks,
                )  # fmt: skip
                self._fallback_said = now
            return _forgiving_line(record)

    @staticmethod
    def _event_line(item: _Item, seq: int, prev_hash: str) -> bytes:
        """The event's line: its body with the chain fields added as its last keys."""
        body: bytes = item[1]
        return b'%b,"seq":%d,"prev_hash":"%b"}' % (body[:-1], seq, prev_hash.encode())

    def _signature_line(self, reason: str, seq: int, head: str) -> bytes:
        signed_at = rfc3339_ns(time.time_ns())
        message = signing_input(reason, seq, head, signed_at, self._kid, self._name)
        der = self._key.sign(message, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        record: dict[str, Any] = {
            "type": SIGNATURE_TYPE,
            "reason": reason,
            "seq": seq,
            "head": head,
            "signed_at": signed_at,
            "kid": self._kid,
        }
        if self._name is not None:
            record["log"] = self._name
        record["alg"] = "ES256"
        record["signature"] = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return json.dumps(record, separators=(",", ":")).encode()

    def _save_head(self) -> None:
        """Record where the chain stands in ``head_path`` (one pwrite, no fsync:
        the log's own fsync at each signature is what makes lines durable)."""
        chain = self._chain
        state = {"seq": chain.seq, "hash": chain.head, "signed": self.signed_head()}
        data = json.dumps(state, separators=(",", ":")).encode()
        # Overwrite in place, padded with spaces (JSON ignores them): no torn
        # state from a crash between a truncate and a write.
        data = data.ljust(self._head_size)
        try:
            os.pwrite(self._head_fd, data, 0)
        except OSError as error:
            self._write_errors += 1
            logger.error("decision log %s: cannot record the chain head: %s", self.head_path, error)
            return
        self._head_size = len(data)

    def _fsync(self) -> bool:
        """True if everything written so far is on disk."""
        # The lines are written (in the page cache); a failed fsync is counted and
        # logged, not retried: rewriting them would duplicate them. The events
        # written so far are never reported durable (their requests fail closed),
        # even if a later fsync succeeds.
        try:
            os.fsync(self._fd)
        except OSError as error:
            if error.errno == errno.EINVAL:  # not a file (a pipe, /dev/...): nothing to sync
                return True
            self._poisoned = max(self._poisoned, self._events_written)
            self._write_errors += 1
            logger.error("decision log %s: fsync failed: %s", self.path, error.strerror)
            return False
        self._fsyncs += 1
        return True

    def _sync_waiters(self) -> None:
        """One fsync for every event written so far: the group commit."""
        written = self._events_written
        if written > self._durable and self._fsync():
            self._published(written)
        elif written <= self._durable:
            self._published(self._durable)
        else:  # the fsync failed (see _fsync): these events' requests fail closed now
            self._published(written)

    def _published(self, durable: int) -> None:
        self._durable = max(self._durable, durable)
        loop = self._loop
        if loop is not None and self._sync_wanted:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(self._release, self._durable)

    def _failed(self, error: OSError, start: int) -> None:
        self._write_errors += 1
        self._failures += 1
        # Cut off a partial chunk so the retry starts on a line boundary.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, start)
        if self._failures == 1 or self._failures % 100 == 0:
            logger.error(
                "decision log %s: write failed (%s); %d events kept in memory, retrying",
                self.path,
                error.strerror or error,
                self.stats["queue_depth"],
            )

    def _check_path(self) -> None:
        """Once a second: a log file deleted, or moved without SIGUSR1, is said
        (an error) and the path reopened, so what follows lands in a file someone
        can read (the chain goes on there: rotate, then start). A new file already
        at the path is logrotate's ``create``, its SIGUSR1 maybe still to come
        (a delayed or shared postrotate): that is given ``_PATH_GRACE`` s first. A
        path that can't be opened is tried again each second, without writing
        anything, until it can."""
        now = time.monotonic()
        if now - self._path_checked < _PATH_CHECK_EVERY or self._fd < 0 or self._stopping:
            return
        self._path_checked = now
        if self._still_at_path():
            self._path_lost = 0.0
            return
        if self._reopen_wanted:
            return
        if not self._path_lost:
            self._path_lost = now
        replaced = self.path.is_file()
        if replaced and now - self._path_lost < _PATH_GRACE:
            return
        try:  # only a path that can be opened is worth a rotate seal and a reopen
            os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))
        except OSError as error:
            if not self._path_unusable:
                self._path_unusable = True
                logger.error("decision log %s: the path no longer names the file being "
                             "written, and can't be opened again (%s): still writing the "
                             "old file; trying again every second", self.path,
                             error.strerror)  # fmt: skip
            return
        self._path_unusable = False
        logger.error(
            "decision log %s: the path no longer names the file being written (%s): "
            "reopening it; events written since then are in the old file only",
            self.path,
            "moved, and no SIGUSR1 came" if replaced else "deleted, or moved without SIGUSR1",
        )
        self._reopen_wanted = True
        self._queue.append(("reopen",))

    def _still_at_path(self) -> bool:
        """Whether ``path`` is still the file this writer appends to."""
        try:
            at_path, writing = os.stat(self.path), os.fstat(self._fd)
        except OSError:
            return False
        return (at_path.st_dev, at_path.st_ino) == (writing.st_dev, writing.st_ino)

    def _reopen_failing(self) -> None:
        """Reopen asked for while the file can't be written (e.g. logrotate moved it
        off a full disk): switch now, start the new file with a start record, and
        write the stuck events there. The failing file gets no rotate record."""
        try:
            fd, _ = self._open(self._chain)
        except DecisionLogError as error:
            logger.error("decision log: reopen failed: %s", error)
            return
        os.close(self._fd)
        self._fd = fd
        self._reopen_wanted = False
        with contextlib.suppress(ValueError):
            self._queue.remove(("reopen",))
        stuck = [item for item in self._chunk or [] if item[0] != "reopen"]
        self._chunk = [("sign", "start"), *stuck]
        logger.warning("decision log %s: reopened after write errors", self.path)

    def _reopen(self) -> None:
        try:
            fd, _ = self._open(self._chain)
        except DecisionLogError as error:
            self._write_errors += 1
            logger.error("decision log: reopen failed, still writing the old file: %s", error)
            self._queue.appendleft(("sign", "start"))
            return
        os.close(self._fd)
        self._fd = fd
        self._queue.appendleft(("sign", "start"))

    def _open(self, chain: _Chain | None) -> tuple[int, _Chain]:
        """Open ``path`` for appending and lock it; work out where the chain stands.

        ``chain`` is the writer's state on reopen; None at start, when the chain
        continues from the file's last line (or starts at GENESIS if empty).
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as error:
            raise DecisionLogError(
                f"cannot open decision log {self.path}: {error.strerror}"
            ) from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DecisionLogError(
                    f"decision log {self.path} is in use by another process "
                    "(one writer per file: give each worker its own path)"
                ) from error
            raise DecisionLogError(f"cannot lock {self.path}: {error.strerror}") from error
        if chain is not None and os.fstat(fd).st_size == 0:
            return fd, chain
        try:
            found = _tail_state(self.path)
            saved = self._open_head() if chain is None else None
        except (OSError, DecisionLogError) as error:
            os.close(fd)
            self._close_head()
            if isinstance(error, DecisionLogError):
                raise
            raise DecisionLogError(f"cannot read {self.path}: {error.strerror}") from error
        if found is None:
            return fd, chain or saved or _Chain()
        head, seq, torn, recent = found
        if torn:  # a crash cut the last line: end it so our records start on a line
            _write_all(fd, b"\n")
        if chain is None and saved is None:
            # Records but no head file: it was deleted (with the log cut back to an
            # earlier run's end, that would hide the runs in between) or the log
            # predates head files. The file's last line can't be trusted as where
            # the chain stands, so a new chain begins and verify reports the gap.
            logger.error(
                "decision log %s has records but no head file %s: starting a new chain "
                "(audit verify will report the gap; if the head file was removed on "
                "purpose, verify the earlier part on its own)",
                self.path,
                self.head_path,
            )
            return fd, _Chain()
        if saved is not None and saved.head not in recent and saved.seq >= seq:
            # The file ends before where the chain stood: it was cut or replaced
            # while the gateway was down. Continue from the recorded head, so the
            # break stays visible to `portcullis audit verify`.
            logger.error(
                "decision log %s ends at seq %d, but %s records seq %d: the log was cut "
                "or replaced while the gateway was stopped; continuing the chain from "
                "the recorded head (verify will report the gap)",
                self.path,
                seq,
                self.head_path,
                saved.seq,
            )
            return fd, saved
        return fd, _Chain(head, seq, seq)

    def _open_head(self) -> _Chain | None:
        """Open ``head_path`` (kept open for the writer) and read the chain state
        a previous run left there; None if there is none."""
        try:
            self._head_fd = os.open(self.head_path, os.O_RDWR | os.O_CREAT, 0o640)
            data = os.pread(self._head_fd, 1 << 16, 0)
        except OSError as error:
            raise DecisionLogError(
                f"cannot open the decision log's head file {self.head_path}: {error.strerror}"
            ) from error
        self._head_size = len(data)
        if not data.strip():
            return None
        try:
            state = json.loads(data)
            signed = state["signed"]
            signature = None if signed is None else _signature_bytes(signed)
            name = signed.get("log") if isinstance(signed, dict) else None
            self._saved_name = name if isinstance(name, str) else None
            if self._saved_name is not None and check_signature(
                signed, {self._kid: self._key.public_key()}
            ):
                # The head file isn't signed itself: a name in it is taken only under
                # this key's signature, or an edited one would sign a run as another
                # log's, which the verifier leaves out as another replica's.
                logger.error(
                    "%s: the log name %r it records is not under this key's signature: "
                    "using the configured or default name",
                    self.head_path,
                    self._saved_name,
                )
                self._saved_name = None
            return _Chain(str(state["hash"]), int(state["seq"]), int(state["seq"]), signature)
        except (ValueError, KeyError, TypeError, RecursionError):  # nested past any parser
            raise DecisionLogError(
                f"{self.head_path} is damaged: it records where the decision log's chain "
                "stands. Restore it, or remove it to start a new chain (verify will then "
                "report the gap)"
            ) from None


def _ends_signed(chunk: list[_Item]) -> bool:
    return bool(chunk) and chunk[-1][0] in ("sign", "reopen")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _signature_bytes(signed: dict[str, Any]) -> bytes:
    """The signature line as written, from signed_head()'s answer."""
    record = {k: v for k, v in signed.items() if k not in ("file", "line_hash")}
    line = json.dumps(record, separators=(",", ":")).encode()
    if line_hash(line) != signed["line_hash"]:
        raise ValueError("signature record does not match its line hash")
    return line


def _tail_state(path: Path) -> tuple[str, int, bool, set[str]] | None:
    """(hash of the last line, last seq seen, line torn, hashes of the last lines
    read) of a non-empty file: its last line and the block of lines before it. A
    last line longer than MAX_LINE_BYTES (not one the writer wrote) is hashed a
    piece at a time, never held whole, and its seq not looked for."""
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return None
        block, start, end = _last_line_at(file, size)
        file.seek(block)
        lines = file.read(start - block).split(b"\n")[:-1]
        if end - start <= MAX_LINE_BYTES:
            last = file.read(end - start)
            head = line_hash(last)
            lines.append(last)
        else:
            digest = hashlib.sha256()
            read_line_on(file, digest)
            head = digest.hexdigest()
    seq = 0
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            continue
        if isinstance(record, dict) and isinstance(record.get("seq"), int):
            seq = record["seq"]
            break
    recent = {line_hash(line) for line in lines} | {head}
    return head, seq, end == size, recent


def _last_line_at(file: BinaryIO, size: int) -> tuple[int, int, int]:
    """Where the file's last line is, the newlines after it aside: (where the block
    read back to find its start begins, its start, its end). Read back from the
    end a block at a time, holding one block: the line may be of any length."""
    step = 1 << 16
    end: int | None = None
    pos = size
    while pos > 0:
        block = min(step, pos)
        pos -= block
        file.seek(pos)
        data = file.read(block)
        if end is None:
            data = data.rstrip(b"\n")
            if not data:
                continue  # all newlines so far
            end = pos + len(data)
        cut = data.rfind(b"\n")
        if cut >= 0:
            return pos, pos + cut + 1, end
    return 0, 0, end or 0


def _forgiving_line(record: dict[str, Any]) -> bytes:
    """The record as one JSON line when orjson refuses it: stdlib json escapes lone
    surrogates as \\udcXX (the reader reads them back); a cycle or an odd key
    type is written as text by a copy made of plain values."""
    try:
        text = json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=_json_fallback)
    except Exception:  # TypeError, ValueError, RecursionError, or what a str() raised
        return orjson.dumps(_plain(record, set(), 0))
    return text.encode("ascii")


# Lone surrogates surrogateescape has no byte for (it escapes 0x80-0xff as U+DC80-U+DCFF).
_UNESCAPABLE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def _plain(value: Any, seen: set[int], depth: int) -> Any:
    """JSON-ready copy: str keys, readable strings, cycles and depth cut; never raises
    (it runs in record(), on the request's path) and orjson always takes it."""
    if isinstance(value, str):
        # A surrogate no byte escapes to is one U+FFFD; the others, their bytes, read.
        value = _UNESCAPABLE.sub("\ufffd", value)
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):  # orjson's range; past it, the digits as text
        if -(1 << 63) <= value < (1 << 64):
            return value
        try:
            return str(value)
        except ValueError:  # past sys.get_int_max_str_digits()
            return f"<integer of {value.bit_length()} bits>"
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        if id(value) in seen or depth > 64:
            return "[cycle or too deep]"
        seen = seen | {id(value)}
        if isinstance(value, dict):
            return {
                str(_plain(k, seen, depth + 1)): _plain(v, seen, depth + 1)
                for k, v in value.items()
            }
        return [_plain(item, seen, depth + 1) for item in value]
    try:
        fallback = _json_fallback(value)
    except Exception:  # its __str__ raised
        return f"<unprintable {type(value).__name__}>"
    return _plain(fallback, seen, depth + 1)


def _json_fallback(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
