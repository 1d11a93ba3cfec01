"""The gateway's side of shipping: it starts the shipping process, keeps it running
and reads where each sink stands for /metrics.

The shipping process (:mod:`gateway.audit.shipping.process`) follows the
decision log from each sink's durable cursor, so nothing depends on it staying
up: if it dies it is restarted (with backoff) and resumes at the cursors; the
records of a batch sent but not yet acknowledged when it died are sent again
(at least once). While it is down, ``portcullis_sink_failing`` is 1. It runs
at a lower CPU priority (``decision_log.shipping_nice``): see
:func:`gateway.audit.shipping.process.lower_priority`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from gateway.audit.shipping.cursor import CursorError
from gateway.audit.shipping.settings import SinkConfig, sink_to_json

log = logging.getLogger("portcullis.decision_log.shipping")

_MAX_BACKOFF = 30.0
# A first start reads and locks every cursor; it may wait for a previous
# process's locks (process.CURSOR_WAIT) before giving up.
_START_TIMEOUT = 60.0


class SinkHandle:
    """One sink as /metrics sees it: the shipping process's latest report."""

    def __init__(self, config: SinkConfig, written_seq: Callable[[], int]) -> None:
        self.config = config
        self.name = config.name
        self._written_seq = written_seq
        self.report: dict[str, float] = {}
        self.running = False

    @property
    def stats(self) -> dict[str, float]:
        report = self.report
        acked = int(report.get("acked_seq", 0))
        lag = max(0, self._written_seq() - acked)
        if lag == 0:
            seconds = 0.0
        else:
            since = report.get("pending_since") or report.get("caught_up_at") or time.time()
            seconds = max(0.0, time.time() - since)
        return {
            "shipped": report.get("shipped", 0),
            "acknowledged": report.get("acknowledged", 0),
            "retried": report.get("retried", 0),
            "lag_events": lag,
            "lag_seconds": seconds,
            "backlog_bytes": report.get("backlog_bytes", 0),
            "behind": report.get("behind", 0.0),
            "failing": report.get("failing", 0.0) if self.running else 1.0,
            "discontinuities": report.get("discontinuities", 0),
        }


class ShippingProcess:
    """The shipping process for one decision log's sinks."""

    def __init__(
        self,
        sinks: tuple[SinkConfig, ...],
        log_path: Path,
        written_seq: Callable[[], int],
        nice: int = 10,
    ) -> None:
        self.handles = [SinkHandle(sink, written_seq) for sink in sinks]
        self.restarts = 0
        self._work = orjson.dumps(
            {"log": str(log_path), "sinks": [sink_to_json(sink) for sink in sinks], "nice": nice}
        )
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start the process and wait until every cursor is read (CursorError if not)."""
        ready: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.ensure_future(self._supervise(ready))
        try:
            error = await asyncio.wait_for(asyncio.shield(ready), _START_TIMEOUT)
        except TimeoutError:
            error = f"the shipping process did not start within {_START_TIMEOUT:.0f} s"
        if error is not None:
            await self.stop(0.0)
            raise CursorError(error)

    async def stop(self, timeout: float) -> None:
        """Let the process ship what the log holds (up to ``timeout`` s), then end it."""
        self._closing = True
        process = self._process
        if process is not None and process.stdin is not None:
            with contextlib.suppress(RuntimeError, ConnectionError):
                process.stdin.write(orjson.dumps({"op": "stop", "timeout": timeout}) + b"\n")
                process.stdin.close()
        task = self._task
        if task is None:
            return
        if process is None:  # between restarts: nothing to drain, nothing to wait for
            task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout + 5.0)
        except TimeoutError:
            log.error("shipping: the shipping process did not stop; killed")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise

    async def _supervise(self, ready: asyncio.Future[str | None]) -> None:
        backoff = 1.0
        while not self._closing:
            try:
                error = await self._run_once(ready)
            except OSError as failure:
                error = f"cannot start the shipping process: {failure}"
            if not ready.done():  # the first start failed: start() reports it
                ready.set_result(error or "the shipping process exited at start")
                return
            if self._closing:
                return
            self.restarts += 1
            log.error(
                "shipping: the shipping process exited%s; restarting in %.0f s",
                f" ({error})" if error else "", backoff,
            )  # fmt: skip
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _run_once(self, ready: asyncio.Future[str | None]) -> str | None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.audit.shipping.process",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        error: str | None = None
        try:
            process.stdin.write(self._work + b"\n")
            while line := await process.stdout.readline():
                error = self._received(line, ready) or error
        except (ValueError, ConnectionError) as failure:
            error = f"unreadable answer from the shipping process: {failure}"
        finally:
            self._process = None
            for handle in self.handles:
                handle.running = False
            if process.returncode is None:  # cancelled, or its stdout broke: never left behind
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await process.wait()
        return error

    def _received(self, line: bytes, ready: asyncio.Future[str | None]) -> str | None:
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.error("shipping: unreadable line from the shipping process (%d bytes)", len(line))
            return None
        if not isinstance(message, dict):
            return None
        op = message.get("op")
        if op == "ready":
            for handle in self.handles:
                handle.running = True
            if not ready.done():
                ready.set_result(None)
        elif op == "error":
            return str(message.get("error"))
        elif op == "stats" and isinstance(message.get("sinks"), dict):
            for handle in self.handles:
                report = message["sinks"].get(handle.name)
                if isinstance(report, dict):
                    handle.report = report
        return None
