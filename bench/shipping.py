"""Shipping CPU per record: the real shipping process on a real-shaped decision log,
for each sink kind and format, against the floor of any shipper measured in the
same run (reading each line, hashing it for the chain, parsing it).

The log is bench/replay.py's: a real gateway's decisions written again through the
gateway's own DecisionLog (new ids, a signed chain). ``--log`` takes one already
written (``bench/replay.py --events 50000 --keep /tmp/rb`` keeps it); without it,
one of ``--events`` records is written first. For each sink the shipping process
starts on an empty log at nice 0; the log is then appended whole, and the
process's CPU (user + system, /proc) is counted from then until the sink has
acknowledged every record. The receivers run in processes of their own and are
not counted: an aiohttp stand-in for OPA's decision-log API that gunzips each
batch, and syslog-ng. Variants are interleaved, ``--rounds`` times; medians.

The gateway's own CPU per request (bench/gateway.py --log-costs prints it, ~200 us
here in December 2026, ~300-400 us a month before) is what a sink's CPU per record
is set against: under 5% of it is under 10 us.

    .venv/bin/python bench/shipping.py [--log /tmp/rb/decisions-50000.log] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway import RECEIVER, cpu_seconds, free_port, wait_http  # noqa: E402
from bench.replay import _write_log_process, template_events  # noqa: E402
from gateway.audit.chain import line_hash  # noqa: E402
from gateway.audit.shipping.settings import SinkConfig  # noqa: E402
from gateway.audit.shipping.supervisor import ShippingProcess  # noqa: E402
from gateway.audit.tail import parse_record  # noqa: E402


def floor_us(log: Path) -> float:
    """CPU per line of what every shipper does with it: read, hash, parse (best of 3)."""
    best = float("inf")
    for _ in range(3):
        lines = 0
        started = time.process_time()
        with log.open("rb") as file:
            for line in file:
                raw = line[:-1]
                line_hash(raw)
                parse_record(raw)
                lines += 1
        best = min(best, (time.process_time() - started) / lines * 1e6)
    return best


async def ship_once(source: Path, records: int, sink: SinkConfig, scratch: Path) -> float:
    """CPU per record of the shipping process shipping all of ``source`` to ``sink``."""
    log = scratch / "decisions.log"
    log.write_bytes(b"")
    shipping = ShippingProcess((sink,), log, lambda: records, nice=0)
    await shipping.start()
    try:
        pid = shipping.pid
        assert pid is not None
        await asyncio.sleep(1.0)  # the sink's first import (aiohttp for http) is start-up
        before = cpu_seconds(pid)
        with source.open("rb") as src, log.open("ab") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        handle = shipping.handles[0]
        deadline = time.monotonic() + 600
        while handle.report.get("acknowledged", 0) < records:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sink.name}: not everything shipped in 10 minutes")
            await asyncio.sleep(0.05)
        return (cpu_seconds(pid) - before) / records * 1e6
    finally:
        await shipping.stop(5.0)
        for leftover in scratch.iterdir():
            leftover.unlink()


async def run(
    source: Path, records: int, variants: dict[str, SinkConfig], rounds: int, scratch: Path
) -> dict[str, list[float]]:
    """Every variant's CPU per record, interleaved, ``rounds`` times."""
    costs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, sink in variants.items():
            costs[name].append(await ship_once(source, records, sink, scratch))
            for written in scratch.parent.glob("syslog-ng/*.out"):
                written.write_bytes(b"")  # what syslog-ng wrote: not needed, and big
    return costs


def measure(source: Path, rounds: int, scratch: Path) -> None:
    from tests.syslog_ng import installed, start_syslog_ng

    with source.open("rb") as file:
        records = sum(1 for _ in file)
    # The receivers start and stop outside asyncio, whose child watcher would
    # otherwise claim their exit.
    receiver_port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(receiver_port)])
    syslog = start_syslog_ng(scratch / "syslog-ng") if installed() else None
    work = scratch / "work"
    work.mkdir()
    variants: dict[str, SinkConfig] = {}
    for fmt in ("opa", "ocsf", "ecs"):
        variants[f"file, {fmt}"] = SinkConfig("copy", "file", fmt, path=work / f"copy-{fmt}.jsonl")
    variants["http, opa + gzip"] = SinkConfig(
        "siem", "http", "opa", url=f"http://127.0.0.1:{receiver_port}/logs"
    )
    if syslog is not None:
        for fmt in ("opa", "ocsf"):
            variants[f"syslog, {fmt} over TCP"] = SinkConfig(
                "siem", "syslog", fmt, address=f"127.0.0.1:{syslog.tcp_port}"
            )
    try:
        wait_http(f"http://127.0.0.1:{receiver_port}")
        floor = floor_us(source)
        print(f"{records} records ({source.stat().st_size / 1e6:.0f} MB, {source}); floor of "
              f"any shipper (read, hash, parse a line): {floor:.1f} us")  # fmt: skip
        costs = asyncio.run(run(source, records, variants, rounds, work))
        print(f"{'sink, format':<24}{'CPU us/record':>15}{'x floor':>9}   rounds")
        for name, values in costs.items():
            middle = statistics.median(values)
            rounds_text = ", ".join(f"{v:.1f}" for v in values)
            print(f"{name:<24}{middle:>15.1f}{middle / floor:>9.2f}   {rounds_text}")
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
        if syslog is not None:
            syslog.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, help="a decision log bench/replay.py wrote")
    parser.add_argument("--events", type=int, default=50_000, help="records to write without --log")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="portcullis-shipping-") as name:
        scratch = Path(name)
        source: Path = args.log
        if source is None:
            events, key_file = asyncio.run(template_events(scratch / "template"))
            source = scratch / "decisions.log"
            writer = multiprocessing.get_context("spawn").Process(
                target=_write_log_process, args=(source, key_file, events, args.events)
            )
            writer.start()
            writer.join()
        measure(source, args.rounds, scratch)
    print(f"(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
