"""The shipping process: every sink's shipper, outside the gateway's process.

Run by :mod:`gateway.audit.shipping.supervisor` as ``python -m
gateway.audit.shipping.process``. Its first stdin line is the work::

    {"log": "<decision log path>", "sinks": [<sink settings>, ...], "nice": 10}

After that, a ``{"op": "stop", "timeout": s}`` line, or the end of stdin (the
gateway stopped, or was killed), stops it: it ships what the log holds for up
to ``timeout`` s (default 5), then exits. On stdout it writes JSON lines::

    {"op": "ready"}                       every cursor read and locked
    {"op": "error", "error": str}         it can't start (then exits with 2)
    {"op": "stats", "sinks": {name: {..}}}  every REPORT_INTERVAL s while
                                          something changed, and once at the end

A process because shipping is CPU work on every record (read it back, parse
it, reformat it, send it): in a thread of the gateway's process it held the GIL
the event loop needs, and one file sink cost the gateway up to half its
throughput in `bench/gateway.py --log-costs`.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from gateway import heap, server_log
from gateway.audit.shipping.cursor import CursorBusy, CursorError
from gateway.audit.shipping.settings import sink_from_json
from gateway.audit.shipping.shipper import Shipper, load_shippers

log = logging.getLogger("portcullis.decision_log.shipping")

REPORT_INTERVAL = 0.25
# A gateway restarted at once finds its previous shipping process still
# draining (up to its stop timeout): wait this long for the cursors' locks.
CURSOR_WAIT = 30.0
DEFAULT_STOP_TIMEOUT = 5.0
# A batch is up to batch_max_events parsed records, some 60 dicts and lists each,
# alive until the sink acknowledges it and freed by reference counting then.
# With the default threshold (700) the collector walked every batch dozens of
# times while it was alive, for nothing (JSON makes no cycles); with this one a
# young collection runs about once per batch.
GC_THRESHOLD = 50_000
# glibc's mallopt() parameters, and what the shipping process sets them to.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREE = 16 << 20
MMAP_ABOVE = 4 << 20


def send(out: BinaryIO, message: dict[str, Any]) -> None:
    out.write(orjson.dumps(message) + b"\n")
    out.flush()


def lower_priority(nice: int) -> None:
    """Run at nice ``nice`` and under SCHED_BATCH (0: as the gateway does).

    Shipping is background work whose backlog is the durable log file, and it
    shares the machine's cores with the gateway: at a lower priority it takes
    the CPU the requests leave idle, and a shipper waking up for its next batch
    doesn't preempt a request being answered (SCHED_BATCH). Under sustained
    saturation it falls behind instead (``portcullis_sink_lag_*``, and
    ``backlog_alert_bytes``) and catches up when the load drops. Linux applies
    both per thread and new threads inherit them: this runs before any thread
    of the process is started."""
    if nice <= 0:
        return
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) < nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as error:  # a seccomp profile that forbids it: ship at full priority
        log.warning("shipping: cannot lower the shipping process's priority: %s", error)


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep up to KEEP_FREE bytes of freed heap (per arena:
    each shipper's thread has its own), and map only blocks over MMAP_ABOVE on
    their own; False where the C library isn't glibc.

    Every batch allocates and frees blocks of a megabyte or so (the block read
    from the log, the batch's bytes, a gzip'd body). With glibc's defaults the
    heap's top went back to the kernel after each batch and came back a page
    fault at a time: in the standalone shipper (50,000 records of the bench's
    log, opa to a file) ~50,000 faults and ~20% of the CPU per record, against
    ~6,600 faults with these settings. Called before the shippers' threads start."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREE)) and bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE)
    )


async def load(work: dict[str, Any]) -> list[Shipper]:
    sinks = tuple(sink_from_json(item) for item in work["sinks"])
    deadline = time.monotonic() + CURSOR_WAIT
    while True:
        try:
            return load_shippers(sinks, Path(work["log"]))
        except CursorBusy as busy:
            if time.monotonic() > deadline:
                raise
            log.warning("%s; waiting for it to finish", busy)
            await asyncio.sleep(0.2)


async def report(out: BinaryIO, shippers: list[Shipper]) -> None:
    last: dict[str, Any] = {}
    while True:
        current = {shipper.name: shipper.report() for shipper in shippers}
        if current != last:
            send(out, {"op": "stats", "sinks": current})
            last = current
        await asyncio.sleep(REPORT_INTERVAL)


async def stop_requested(reader: asyncio.StreamReader) -> float:
    """Wait for a stop line or the end of stdin; the drain timeout it asks for."""
    while line := await reader.readline():
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.error("shipping: unreadable message from the gateway (%d bytes)", len(line))
            continue
        if isinstance(message, dict) and message.get("op") == "stop":
            timeout = message.get("timeout", DEFAULT_STOP_TIMEOUT)
            if isinstance(timeout, int | float) and timeout >= 0:
                return float(timeout)
            return DEFAULT_STOP_TIMEOUT
    return DEFAULT_STOP_TIMEOUT


async def main() -> int:
    out = sys.stdout.buffer
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        work = orjson.loads(await reader.readline())
        lower_priority(int(work.get("nice", 0)))
        shippers = await load(work)
    except CursorError as error:
        send(out, {"op": "error", "error": str(error)})
        return 2
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        send(out, {"op": "error", "error": f"unreadable work from the gateway: {error!r}"})
        return 2
    heap.freeze()  # the modules, sessions and TLS contexts: never walked again
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    keep_freed_memory()
    for shipper in shippers:
        shipper.start()
    send(out, {"op": "ready"})
    reporter = asyncio.ensure_future(report(out, shippers))
    try:
        timeout = await stop_requested(reader)
        await asyncio.gather(*(shipper.stop(timeout) for shipper in shippers))
    finally:
        reporter.cancel()
        send(out, {"op": "stats", "sinks": {s.name: s.report() for s in shippers}})
    return 0


if __name__ == "__main__":
    # Ctrl-C in a terminal reaches the whole process group: the gateway stops this
    # process itself (a stop line, or the end of stdin), after it drained the log.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server_log.configure(logging.INFO, "%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(asyncio.run(main()))
