"""The shadow policy's own process: decide each request the live gateway sends, report divergences.

Run by :mod:`gateway.policy.shadow` as ``python -m gateway.policy.shadow_worker SOURCE
TIMEOUT_MS POLL_INTERVAL|0``. It reads JSON lines on stdin::

    {"op": "decide", "id": <live decision id>, "app": .., "input": {..}, "live": {..}}
    {"op": "reload"}

and writes JSON lines on stdout::

    {"op": "loaded", "ok": true, "revision": .., "why": ..}            (or ok false, error)
    {"op": "diverged", "id": .., "app": .., "kind": .., "input": {..}, "live": {..},
     "shadow": {..}, "error": str | null, "error_code": str | null, "eval_ns": ..,
     "revision": ..}

A separate process because the embedded engine holds the GIL while it
evaluates: in the gateway's process even a fast candidate would take CPU from
the event loop, and a slow or crashing one would stall or kill live traffic.
Decisions go through :func:`gateway.policy.decision.decide` on an engine from
:func:`gateway.policy.reload.build_engine`, exactly as the live gateway's do.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from gateway import server_log
from gateway.policy import failure
from gateway.policy.decision import MAX_ANSWER_CHARS, decide
from gateway.policy.divergence import MemoReplay, divergence
from gateway.policy.reload import (
    QUIET,
    Fingerprint,
    build_or_reason,
    changed,
    source_fingerprint,
)
from policy_engine import PolicyEngine

log = logging.getLogger("portcullis.shadow")
# One request's input can hold 32 KB of headers; leave plenty of room.
LINE_LIMIT = 16 * 1024 * 1024
# The most of a shadow policy's answer a divergence event holds (serialized). A
# candidate under test answering megabytes (a runaway comprehension) would
# otherwise be parsed on the gateway's event loop and written, hashed and fsync'd
# into the live log for every request it diverged on. The same bound as a live
# decision's (decide() refuses more characters than that as malformed); counted in
# bytes here, which multi-byte text can still pass.
ANSWER_MAX = MAX_ANSWER_CHARS


def read_message(line: bytes, what: str) -> dict[str, Any] | None:
    """One line of the pipe between the gateway and this process as its message
    (a JSON object); None for anything else, logged when it isn't JSON."""
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        log.error("shadow: unreadable %s (%d bytes)", what, len(line))
        return None
    return message if isinstance(message, dict) else None


class ShadowWorker:
    def __init__(self, source: str, timeout_ms: float, out: BinaryIO) -> None:
        self.source = source
        self.timeout_ms = timeout_ms
        self.out = out
        self.engine: PolicyEngine | None = None
        # The shadow policy's memo over the live traffic (what it would reuse).
        self.memo: MemoReplay | None = None
        self.fingerprint: Fingerprint = ()
        self.load_started = float("-inf")  # when the last load began (time.monotonic)

    def send(self, message: dict[str, Any]) -> None:
        self.out.write(orjson.dumps(message, default=str) + b"\n")
        self.out.flush()

    async def load(self, why: str) -> None:
        """Build the candidate; a failure keeps the last good one (or none: the
        process runs on without a policy until a reload loads one)."""
        self.load_started = time.monotonic()
        remote = self.source.startswith(("http://", "https://"))
        if not remote:
            self.fingerprint = source_fingerprint(Path(self.source)) or ()
        # A reload (not the start) waits for the files to be written whole, as the live one.
        quiet = QUIET if why != "start" else 0.0
        engine, error = build_or_reason(self.source, timeout_ms=self.timeout_ms, quiet=quiet)
        if engine is None:
            kept = (
                "keeping the last good one" if self.engine is not None else "no shadow policy runs"
            )
            log.error("shadow policy %s rejected (%s); %s:\n%s",
                      self.source, why, kept, error)  # fmt: skip
            self.send({"op": "loaded", "ok": False, "why": why, "error": error})
            return
        previous, self.engine = self.engine, engine
        self.memo = MemoReplay(engine)
        if previous is not None:
            await previous.close()
        log.info("shadow policy %s loaded (%s), revision %s", self.source, why, engine.revision)
        self.send({"op": "loaded", "ok": True, "why": why, "revision": engine.revision})

    async def watch(self, interval: float) -> None:
        """Reload on a change; runs until cancelled, whatever one tick raises."""
        source = Path(self.source)
        while True:
            await asyncio.sleep(interval)
            try:
                if changed(source, self.fingerprint):
                    await self.load("files changed")
            except Exception:  # the watcher must outlive any one failure
                log.exception("shadow policy %s: checking for changes failed; trying again "
                              "in %s s", self.source, interval)  # fmt: skip

    async def handle(self, message: dict[str, Any]) -> None:
        if message.get("op") == "reload":
            # Sent before the last load began reading: that load read the files
            # after this signal, so a storm of signals costs one load, not one each.
            sent = message.get("sent")
            if not isinstance(sent, float) or sent >= self.load_started:
                await self.load("SIGHUP")
            return
        engine = self.engine
        if engine is None or message.get("op") != "decide":
            return
        live = message["live"]
        decision = await decide(engine, message["input"], str(message["id"]))
        shadow, error, code = decision.result(), decision.error, decision.error_code
        size = len(orjson.dumps(shadow, default=str))
        if size > ANSWER_MAX:
            code = failure.MALFORMED_DECISION
            error = (
                f"the shadow policy's answer is {size} bytes, over the {ANSWER_MAX} a "
                "divergence event holds: not logged"
            )
            # Only what is bounded: the verdict and its status.
            shadow = {**shadow, "reasons": [], "headers": {}, "step_up": None}
        stale = self.memo is not None and self.memo.stale(message["input"], decision)
        kind = divergence(live, shadow, after_failed=error is not None, after_stale=stale)
        if kind is None:
            return
        self.send(
            {
                "op": "diverged",
                "id": message["id"],
                "app": message.get("app", "-"),
                "kind": kind,
                "input": message["input"],
                "live": live,
                "shadow": shadow,
                "error": error,
                "error_code": code,
                "eval_ns": decision.eval_ns,
                "revision": engine.revision,
            }
        )


async def main(argv: list[str]) -> int:
    source, timeout_ms, poll = argv[0], float(argv[1]), float(argv[2])
    worker = ShadowWorker(source, timeout_ms, sys.stdout.buffer)
    await worker.load("start")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    watcher = asyncio.ensure_future(worker.watch(poll)) if poll > 0 else None
    try:
        while line := await reader.readline():  # EOF: the gateway is stopping
            message = read_message(line, "message from the gateway")
            if message is None:
                continue
            try:
                await worker.handle(message)
            except (KeyError, TypeError, ValueError) as error:  # a malformed message
                log.error("shadow: message skipped: %r", error)
    finally:
        if watcher is not None:
            watcher.cancel()
    return 0


if __name__ == "__main__":
    server_log.configure(logging.INFO, "%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(asyncio.run(main(sys.argv[1:])))
