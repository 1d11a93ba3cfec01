"""Shadow mode: a candidate policy decides beside the live one, in its own process, never enforced.

The request path only hands each live decision (its input and result) to the
shadow process as one JSON line on a pipe, after the live decision is made and
logged: a write that never waits (a full pipe drops the line and counts it).
The shadow process (:mod:`gateway.policy.shadow_worker`) decides with the candidate
and reports divergences, which the gateway logs as decision events (path
``shadow/portcullis/gateway/decision``, ``labels.shadow: true``) and counts in
``portcullis_shadow_divergences_total{app,kind}``. A candidate that fails to
load, is slow, or crashes its process changes nothing for live traffic: the
process is restarted with backoff, and its decisions are counted as unavailable
meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway.metrics import Metrics
from gateway.policy.decision import Decision
from gateway.policy.shadow_worker import LINE_LIMIT, read_message

log = logging.getLogger("portcullis.shadow")
# Bytes of decisions waiting in the pipe before new ones are dropped (~5,000
# requests): shadow mode may fall behind, it never holds the gateway back.
MAX_BACKLOG = 8 * 1024 * 1024
_MAX_BACKOFF = 30.0
# A process that ran this long before it exited starts the backoff over at 1 s.
_STAYED_UP = 60.0


class ShadowPolicy:
    """The shadow process and its pipe, as the gateway sees them."""

    def __init__(
        self,
        source: str,
        *,
        timeout_ms: float,
        poll_interval: float | None,
        metrics: Metrics,
        on_divergence: Callable[[dict[str, Any]], None],
        max_backlog: int = MAX_BACKLOG,
    ) -> None:
        self.source = source
        self.timeout_ms = timeout_ms
        self.poll_interval = poll_interval  # None: no file watching
        self.metrics = metrics
        self.on_divergence = on_divergence
        self.max_backlog = max_backlog
        self.revision: str | None = None  # of the policy the process runs, once loaded
        self.last_error: str | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._outcomes = {
            name: metrics.shadow_decisions.labels(name)
            for name in ("sent", "dropped", "unavailable")
        }

    @property
    def ready(self) -> bool:
        return self._process is not None and self.revision is not None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._supervise())

    def submit(self, document: dict[str, Any], decision: Decision, app: str) -> None:
        """Hand one live decision to the shadow; never blocks, never raises."""
        process = self._process
        if process is None or process.stdin is None or self.revision is None:
            self._outcomes["unavailable"].inc()
            return
        transport = process.stdin.transport
        if transport.is_closing() or transport.get_write_buffer_size() > self.max_backlog:
            self._outcomes["dropped"].inc()
            return
        message = {
            "op": "decide",
            "id": decision.decision_id,
            "app": app,
            "input": document,
            "live": decision.result(),
        }
        try:
            line = orjson.dumps(message, default=str, option=orjson.OPT_NON_STR_KEYS)
            process.stdin.write(line + b"\n")
        except (TypeError, ValueError, RuntimeError, ConnectionError) as error:
            log.warning("shadow: decision %s not sent: %s", decision.decision_id, error)
            self._outcomes["unavailable"].inc()
            return
        self._outcomes["sent"].inc()

    def reload(self) -> None:
        """SIGHUP: the shadow process reloads its policy too (once for the signals
        that reach it while it waits to read its files: see ShadowWorker.handle)."""
        process = self._process
        if process is not None and process.stdin is not None:
            message = orjson.dumps({"op": "reload", "sent": time.monotonic()})
            with contextlib.suppress(RuntimeError, ConnectionError):
                process.stdin.write(message + b"\n")

    async def close(self, timeout: float = 5.0) -> None:
        """Let the shadow finish what it was sent (its divergences still reach the
        log), then stop it; past ``timeout`` it is killed."""
        self._closing = True
        process = self._process
        if process is not None and process.stdin is not None:
            process.stdin.close()  # EOF: the process answers what it has, then exits
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            if self._process is not None:
                self._process.kill()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- the process --------------------------------------------------------------

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._closing:
            started = time.monotonic()
            try:
                await self._run_once()
            except OSError as error:
                log.error("shadow: cannot start the shadow process: %s", error)
            except Exception:  # a bug here must not end shadow mode for good
                log.exception("shadow: the shadow process for %s failed", self.source)
            if self._closing:
                return
            if time.monotonic() - started >= _STAYED_UP:
                backoff = 1.0  # not a crash loop: one exit after a good while
            self.metrics.shadow_restarts.inc()
            log.error("shadow: the shadow process for %s exited; restarting in %.0f s",
                      self.source, backoff)  # fmt: skip
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _run_once(self) -> None:
        poll = str(self.poll_interval) if self.poll_interval else "0"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.policy.shadow_worker", self.source, str(self.timeout_ms),
            poll, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
        )  # fmt: skip
        self._process = process
        assert process.stdout is not None
        try:
            while line := await process.stdout.readline():
                self._received(line)
        except ValueError as error:  # a line over the limit: the stream is unusable
            log.error("shadow: unreadable answer from the shadow process: %s", error)
            process.kill()
        finally:
            self._process = None
            self.revision = None
            if process.returncode is None:  # cancelled, or the stream broke: never left behind
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await process.wait()

    def _received(self, line: bytes) -> None:
        message = read_message(line, "answer from the shadow process")
        if message is None:
            return
        if message.get("op") == "loaded":
            self._loaded(message)
        elif message.get("op") == "diverged":
            self.metrics.shadow_divergences.labels(
                str(message.get("app", "-")), str(message.get("kind"))
            ).inc()
            self.on_divergence(message)

    def _loaded(self, message: dict[str, Any]) -> None:
        if message.get("ok"):
            self.revision = str(message.get("revision"))
            self.last_error = None
            self.metrics.shadow_reloads.labels("ok").inc()
            self.metrics.shadow_revision.clear()
            self.metrics.shadow_revision.labels(self.revision).set(1)
        else:
            self.last_error = str(message.get("error"))
            self.metrics.shadow_reloads.labels("rejected").inc()
