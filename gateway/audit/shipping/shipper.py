"""One sink's shipper: follows the decision log from its durable cursor and delivers
every record (events and chain signatures) at least once, in order.

Each shipper runs in a thread of its own with its own event loop, inside the
shipping process (:mod:`gateway.audit.shipping.process`), so neither a slow or
failing receiver nor the work of reformatting every record touches the
gateway's request path: the log file is the buffer. A batch is sent until
the receiver acknowledges it (exponential backoff from ``retry_initial`` to
``retry_max`` between attempts), and only then is the
cursor moved past it and saved (fdatasync), so a restart resumes right after
the last acknowledged record. Records are never skipped or dropped; when the
unshipped part of the log grows past ``backlog_alert_bytes`` an error is logged
(once a minute) and ``portcullis_sink_behind`` turns 1. A receiver that refuses a
batch as too large (HTTP 413) gets the same records again in batches half the
size, down to one record a batch, and that size from then on (until the
shipping process restarts); one record it still refuses is retried, with an
error, until its limit is raised: nothing after it ships before it does.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from gateway.audit.chain import MAX_LINE_BYTES, SIGNATURE_TYPE, rfc3339_ns
from gateway.audit.shipping.cursor import Cursor, CursorState
from gateway.audit.shipping.formats import formatter
from gateway.audit.shipping.formats.fields import (
    damaged_record,
    epoch_ms,
    is_damaged,
    without_surrogates,
)
from gateway.audit.shipping.formats.opa import encode_line
from gateway.audit.shipping.settings import SinkConfig, without_userinfo
from gateway.audit.shipping.sinks.base import Sink, SinkError
from gateway.audit.tail import LogTail, TailLine, parse_record

logger = logging.getLogger("portcullis.decision_log.shipping")

_POLL = 0.05  # seconds between looks at the log when caught up
# After a batch that was not full, wait this long before the next: fewer, larger
# batches cost less (and the log's writer shares the disk).
_BATCH_INTERVAL = 0.2
_ALERT_EVERY = 60.0
_BACKLOG_EVERY = 1.0  # seconds between looks at the backlog while a batch waits to be retried
# The longest a receiver's Retry-After is waited for before trying again (a
# receiver asking for hours is more likely wrong than right; the lag metrics show it).
RETRY_AFTER_MAX = 600.0


class Batch(NamedTuple):
    """Records ready to send: each one's bytes, and what the shipper keeps of them."""

    encoded: list[bytes]
    first_stamp: str  # the first record's time (how long the batch has waited)
    last_seq: int | None  # the batch's last seq (None: no record in it had one)
    # Where the log's seq stood before the batch's first record that has one (an
    # event's seq less one; a chain signature's own seq: it follows the event it
    # counts): where the chain goes on from, as far as this batch says.
    seq_before: int | None


def make_sink(config: SinkConfig) -> Sink:
    if config.kind == "syslog":
        from gateway.audit.shipping.sinks.syslog import SyslogSink

        return SyslogSink(config)
    if config.kind == "http":
        from gateway.audit.shipping.sinks.http import HttpSink

        return HttpSink(config)
    from gateway.audit.shipping.sinks.file import FileSink

    return FileSink(config)


class Shipper:
    def __init__(self, config: SinkConfig, log_path: Path) -> None:
        self.config = config
        self.name = config.name
        self.log_path = Path(log_path)
        self._cursor = Cursor(self.log_path, config.name)
        self._format = formatter(config.format)
        # The opa format ships most lines as they are, unparsed (opa.encode_line).
        self._fast = encode_line if config.format == "opa" else None
        self._tail: LogTail | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._acked_seq = 0
        self._acked_hash = ""
        self._pending_since: float | None = None  # epoch s of the oldest unacknowledged record
        self._caught_up_at = time.time()
        self._last_alert = 0.0
        # At most this many records a batch: batch_max_events, less after an HTTP 413.
        self._batch_limit = config.batch_max_events
        # for /metrics (read by the gateway's thread; ints and floats only)
        self.shipped = 0
        self.acknowledged = 0
        self.retried = 0
        self.failures = 0
        self.bytes_sent = 0
        self.backlog = 0
        self.failing = False

    def load(self) -> None:
        """Read the cursor: where the previous run stopped (raises CursorError)."""
        state = self._cursor.load()
        if state is not None:
            self._acked_seq, self._acked_hash = state.seq, state.hash
        self._tail = LogTail(
            self.log_path, state.position if state else None, state.hash if state else None
        )

    def close(self) -> None:
        """Release the cursor and the log (a shipper that was loaded but never started)."""
        if self._tail is not None:
            self._tail.close()
        self._cursor.close()

    def start(self) -> None:
        if self._tail is None:
            self.load()
        self._thread = threading.Thread(target=self._run, name=f"ship-{self.name}", daemon=True)
        self._thread.start()

    async def stop(self, timeout: float) -> None:
        """Ship what the log holds (its ``close`` signature included) for up to
        ``timeout`` s, then stop; what is left ships after the next start."""
        thread = self._thread
        if thread is None:
            return
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        await asyncio.to_thread(thread.join, timeout + 2.0)
        if thread.is_alive():
            logger.error("sink %s: shipper did not stop", self.name)

    def report(self) -> dict[str, float]:
        """Where this shipper stands, for the gateway's /metrics (ints and floats;
        the lag is worked out there: only the writer knows the log's last seq)."""
        return {
            "shipped": self.shipped,
            "acknowledged": self.acknowledged,
            "retried": self.retried,
            "backlog_bytes": self.backlog,
            "behind": 1.0 if self.backlog > self.config.backlog_alert_bytes else 0.0,
            "failing": 1.0 if self.failing else 0.0,
            "discontinuities": self._tail.discontinuities if self._tail is not None else 0,
            "acked_seq": self._acked_seq,
            "pending_since": self._pending_since or 0.0,
            "caught_up_at": self._caught_up_at,
        }

    # -- the shipper's thread ------------------------------------------------

    def _run(self) -> None:
        """Ship until stopped. An error outside sending (reading the log, saving
        the cursor) doesn't end the thread: a shipper that stopped would be a
        silent gap in the SIEM. It is logged, ``failing`` is 1, and the shipper
        starts again after a backoff from the last acknowledged record."""
        attempt = 0
        try:
            while True:
                try:
                    asyncio.run(self._main())
                    return
                except Exception:
                    attempt += 1
                    self.failing = True
                    delay = min(
                        self.config.retry_max, self.config.retry_initial * 2 ** (attempt - 1)
                    )
                    if attempt == 1 or attempt % 20 == 0:
                        logger.exception(
                            "sink %s: shipper failed (%d times); it starts again in %.1f s",
                            self.name, attempt, delay,
                        )  # fmt: skip
                if self._stopping.is_set():
                    return  # what is left ships after the next start
                end = time.monotonic() + delay
                while time.monotonic() < end and not self._stopping.is_set():
                    time.sleep(0.05)
        finally:
            self.close()

    async def _main(self) -> None:
        sink = make_sink(self.config)
        tail = self._tail
        assert tail is not None
        try:
            while not self._out_of_time():
                lines = tail.read(self._batch_limit)
                self.backlog = tail.backlog_bytes()
                self._check_backlog()
                if not lines:
                    self._caught_up_at = time.time()
                    if self._stopping.is_set():
                        return
                    await asyncio.sleep(_POLL)
                    continue
                batch = self._encode(sink, lines)
                if batch.seq_before is not None and batch.seq_before != self._acked_seq:
                    # The log's seq doesn't go on from the last acknowledged record:
                    # a new chain began (the log and its .head moved away), a file
                    # was lost, or one is read again from its start. The lag counts
                    # from here, not from the old chain's seq (far past the new one's).
                    self._acked_seq = batch.seq_before
                delivered = await self._deliver(sink, batch)
                if delivered is None:
                    continue  # too large for the receiver: the same records, fewer a batch
                if not delivered:
                    return
                last = lines[-1]
                if batch.last_seq is not None:
                    self._acked_seq = batch.last_seq
                self._acked_hash = last.digest
                self._cursor.save(CursorState(last.end, self._acked_seq, last.digest))
                tail.advance(last.end)
                self._pending_since = None
                if len(lines) < self._batch_limit and not self._stopping.is_set():
                    await asyncio.sleep(_BATCH_INTERVAL)
        finally:
            await sink.close()

    def _encode(self, sink: Sink, lines: list[TailLine]) -> Batch:
        """Each line parsed, formatted and encoded in turn, and only its bytes kept.
        (Parsing the whole batch first and encoding it after cost up to twice the
        CPU per record: 500 records' objects don't stay in the CPU's caches.)

        A line that isn't a JSON record, or a record this format or sink can't
        express (nested deeper than the JSON encoder goes, say), is shipped as a
        damaged record with its text (and the record's seq, if it has one: it
        counts here as any record's does): one record never stops the log behind it."""
        encode, format_, fast = sink.encode, self._format, self._fast
        encoded: list[bytes] = []
        first_stamp = ""
        last_seq: int | None = None
        seq_before: int | None = None
        for line in lines:
            parsed: dict[str, Any] | None = None
            try:
                # An overlong line's raw is only its first bytes: never the record.
                quick = (
                    fast(line.raw, line.digest) if fast is not None and not line.overlong else None
                )
                if quick is not None:
                    record, text = quick
                    data = sink.encode_json(record, text)
                else:
                    record = parsed = self._parsed(line)
                    data = encode(record, format_(record, line.digest))
            except Exception:  # whatever it is, the record still ships
                record, data = self._encode_anyway(sink, line, parsed)
            if not encoded:
                first_stamp = str(record.get("timestamp") or record.get("signed_at") or "")
            encoded.append(data)
            seq = record.get("seq")
            if type(seq) is int:
                if last_seq is None:
                    seq_before = seq if record.get("type") == SIGNATURE_TYPE else seq - 1
                last_seq = seq
        return Batch(encoded, first_stamp, last_seq, seq_before)

    def _parsed(self, line: TailLine) -> dict[str, Any]:
        """The line's record, or the damaged record for a line that is not one (logged)."""
        if line.overlong:
            why = f"is {line.overlong} bytes, over the {MAX_LINE_BYTES} a line may hold"
            return self._damaged(line, why)
        record = parse_record(line.raw)
        if record is None:
            return self._damaged(line, "is not a JSON record (damaged?)")
        return record

    def _encode_anyway(
        self, sink: Sink, line: TailLine, record: dict[str, Any] | None
    ) -> tuple[dict[str, Any], bytes]:
        """A record the format or sink refused (``record``: the line's, None if it
        was refused before it was parsed): again with its lone surrogates
        replaced (bytes of a request that were not UTF-8), else as a damaged
        record with its text and its decision_id, seq and prev_hash (taken from
        the cleaned record: a surrogate in them would be refused again). Returns
        the record shipped and its bytes."""
        if record is None:
            record = self._parsed(line)
            if is_damaged(record):
                return record, sink.encode(record, self._format(record, line.digest))
        clean = without_surrogates(record)
        try:
            return clean, sink.encode(clean, self._format(clean, line.digest))
        except Exception as error:
            why = f"can't be shipped in {self.config.format} ({type(error).__name__}: {error})"
        damaged = self._damaged(line, why, clean)
        return damaged, sink.encode(damaged, self._format(damaged, line.digest))

    def _damaged(
        self, line: TailLine, why: str, record: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The damaged record shipped for a line that can't ship as itself (logged);
        ``record``: what the line parsed to, if it did."""
        size = line.overlong or len(line.raw)
        logger.error(
            "sink %s: a line of %s %s: shipped as a damaged record, its text kept (%d bytes)",
            self.name, self.log_path, why, size,
        )  # fmt: skip
        return damaged_record(line.raw, rfc3339_ns(time.time_ns()), record, size)

    async def _deliver(self, sink: Sink, batch: Batch) -> bool | None:
        """Send until acknowledged; False if the shipper must stop first, None if
        the receiver refused the batch as too large (the limit is halved)."""
        if self._pending_since is None:
            self._pending_since = epoch_ms(batch.first_stamp) / 1000 or time.time()
        count = len(batch.encoded)
        attempt = 0
        while True:
            self.shipped += count
            try:
                self.bytes_sent += await sink.send(batch.encoded)
            except Exception as error:  # whatever it is, the batch waits and is retried
                # Not only SinkError: a token file that can't be a header, a CA file
                # replaced by garbage... A shipper that stopped would be a silent gap
                # in the SIEM; this one says so, retries, and picks up a fixed file.
                if not isinstance(error, (SinkError, OSError, TimeoutError)):
                    error = SinkError(f"{type(error).__name__}: {error}")
                if getattr(error, "too_large", False) and count > 1:
                    self._batch_limit = max(1, count // 2)
                    self.failures += 1
                    self.retried += count
                    logger.warning(
                        "sink %s: the receiver refused %d records as too large (%s); "
                        "sending at most %d a batch from now on",
                        self.name, count, without_userinfo(str(error)), self._batch_limit,
                    )  # fmt: skip
                    return None
                if getattr(error, "too_large", False):
                    error = SinkError(
                        f"{error} (one record of {len(batch.encoded[0])} bytes: more than "
                        "the receiver takes; raise its limit, e.g. Splunk's "
                        "max_content_length: nothing after it ships until then)"
                    )
                attempt += 1
                self.failures += 1
                self.retried += count
                self.failing = True
                delay = min(self.config.retry_max, self.config.retry_initial * 2 ** (attempt - 1))
                delay *= random.uniform(0.8, 1.0)  # several gateways don't retry in step
                asked = getattr(error, "retry_after", None)
                if asked is not None:  # the receiver's Retry-After: not sooner, within reason
                    delay = max(delay, min(asked, RETRY_AFTER_MAX))
                if attempt == 1 or attempt % 20 == 0:
                    logger.warning(
                        "sink %s: %d records not acknowledged (%s); retry %d in %.1f s",
                        self.name, count, without_userinfo(str(error)), attempt, delay,
                    )  # fmt: skip
                if not await self._backoff(delay):
                    return False
                continue
            if self.failing:
                logger.warning("sink %s: shipping again after %d failures", self.name, attempt)
            self.failing = False
            self.acknowledged += count
            return True

    async def _backoff(self, delay: float) -> bool:
        """Wait ``delay`` s before a retry; False if the shipper must stop first.
        The backlog is looked at meanwhile: an outage is when it grows, and when
        ``portcullis_sink_behind`` and the "is behind" line must say so."""
        end = time.monotonic() + delay
        looked = 0.0
        while time.monotonic() < end:
            if self._out_of_time():
                return False
            if time.monotonic() - looked >= _BACKLOG_EVERY and self._tail is not None:
                looked = time.monotonic()
                self.backlog = self._tail.backlog_bytes()
                self._check_backlog()
            await asyncio.sleep(min(0.05, end - time.monotonic()))
        return True

    def _out_of_time(self) -> bool:
        return self._stopping.is_set() and time.monotonic() > self._deadline

    def _check_backlog(self) -> None:
        limit = self.config.backlog_alert_bytes
        now = time.monotonic()
        if self.backlog > limit and now - self._last_alert > _ALERT_EVERY:
            self._last_alert = now
            logger.error(
                "sink %s is behind: %d bytes of %s not shipped yet (backlog_alert_bytes %d); "
                "nothing is dropped, but the disk fills",
                self.name, self.backlog, self.log_path, limit,
            )  # fmt: skip


def load_shippers(configs: tuple[SinkConfig, ...], log_path: Path) -> list[Shipper]:
    """A shipper per sink, each with its cursor read and locked (raises CursorError)."""
    shippers = [Shipper(config, log_path) for config in configs]
    try:
        for shipper in shippers:
            shipper.load()
    except Exception:
        for shipper in shippers:
            shipper.close()
        raise
    return shippers
