"""Soak: the gateway at 80% of its saturation for minutes, a policy reload every 10 s.

    .venv/bin/python bench/soak.py [--minutes 10] [--interval 15]

The gateway runs its default config (bearer token verification, the shipped
policy with `watch: true` on a copy of policies/, the decision log in async
durability) in front of nginx. The bench measures its saturation with wrk
(-t1 -c50), then loads it at 80% of that with wrk paced by a Lua delay()
(calibrated until the achieved rate is within a few % of the target), in
back-to-back segments of `--interval` seconds. Every 10 s it changes a file of
the policy copy (a comment appended to data/apps.yaml), which the gateway's
watcher reloads; the admin listener's /metrics says how many reloads took.
In the middle of each segment it samples the RSS, open file descriptors and
threads of the gateway process and everything below it, and prints one row per
segment.

Exit status 1 when anything grew or failed: after a warm-up (the first
minute), the last third of the samples is compared with the second third (~200 s
and ~20 reloads apart in a 10-minute run): RSS by its lowest and its highest
sample (it alternates between two levels, by where a sample falls between two
reloads; a leak lifts both), the counts by their medians.
Allowed: RSS +8 MB (at 80% of ~2,000 req/s a leak of 24 bytes per request adds
8 MB; a policy engine, ~6 MB with its VM, leaked per reload adds ~120 MB);
sockets +25 (wrk's 50 connections and the upstream pool's, which follows the
momentary concurrency: seen moving by ~15 between samples; a leak of one socket
per 10,000 requests adds ~30); other fds +3 (files, pipes: one leaked per reload adds ~20);
threads +2. Also 1: any non-2xx answer (a reload must fail no request), or a
reload that was rejected or didn't happen. Needs wrk and nginx (`make
bench-tools`). Not part of `make test`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway import (  # noqa: E402
    NGINX_CONF,
    descendants,
    free_port,
    start_gateway,
    start_issuer,
    stop_processes,
    wait_http,
    wrk,
)

CONNECTIONS = 50
RELOAD_EVERY = 10.0
WARM_UP = 60.0
RSS_TOLERANCE_MB = 8.0
FILE_TOLERANCE = 3
SOCKET_TOLERANCE = 25
THREAD_TOLERANCE = 2


@dataclass
class Sample:
    seconds: float
    rps: float
    p99: float
    non_2xx: int
    socket_errors: int
    reloads: int
    rss_mb: float  # the gateway process and every process below it
    sockets: int  # open file descriptors that are sockets
    files: int  # every other open file descriptor (files, pipes, eventfds)
    threads: int
    processes: int


def footprint(pid: int) -> tuple[float, int, int, int, int]:
    """RSS (MB), open sockets, other open fds, threads and processes of `pid` and
    its descendants."""
    rss_kb = sockets = files = threads = processes = 0
    for each in (pid, *descendants(pid)):
        try:
            status = Path(f"/proc/{each}/status").read_text()
            targets = []
            for fd in os.listdir(f"/proc/{each}/fd"):
                with contextlib.suppress(FileNotFoundError):
                    targets.append(os.readlink(f"/proc/{each}/fd/{fd}"))
        except (FileNotFoundError, ProcessLookupError):
            continue
        open_sockets = sum(target.startswith("socket:") for target in targets)
        sockets += open_sockets
        files += len(targets) - open_sockets
        rss_kb += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        threads += int(re.search(r"Threads:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        processes += 1
    return rss_kb / 1024, sockets, files, threads, processes


def reloads_ok(admin: str) -> tuple[int, int]:
    """(ok, rejected) policy reloads so far, from the admin listener's /metrics."""
    with urllib.request.urlopen(f"{admin}/metrics", timeout=5) as response:
        text = response.read().decode()

    def count(result: str) -> int:
        match = re.search(rf'portcullis_policy_reloads_total{{result="{result}"}} ([\d.e+]+)', text)
        return int(float(match.group(1))) if match else 0

    return count("ok"), count("rejected")


def pacing_script(directory: Path, delay_ms: int) -> Path:
    script = directory / f"pace-{delay_ms}.lua"
    script.write_text(f"function delay()\n  return {delay_ms}\nend\n")
    return script


def calibrate(url: str, token: str, target: float, directory: Path) -> int:
    """The per-connection delay (ms) that brings wrk -c50 closest to `target` req/s:
    each of 50 connections sends, waits for the answer, then waits `delay`."""
    period = CONNECTIONS * 1000 / target  # ms between one connection's requests
    delay = max(0, round(period - 1))
    best = (float("inf"), delay)
    for _ in range(4):
        achieved = wrk(url, 8, CONNECTIONS, token, pacing_script(directory, delay))["rps"]
        miss = abs(achieved - target) / target
        print(f"  calibrating: delay {delay} ms -> {achieved:.0f} req/s (target {target:.0f})")
        best = min(best, (miss, delay))
        if miss <= 0.03:
            break
        latency = CONNECTIONS * 1000 / achieved - delay  # ms each request spent answered
        delay = max(0, round(period - latency))
    return best[1]


def keep_reloading(policy: Path, stop: threading.Event) -> None:
    """Change the watched policy copy every RELOAD_EVERY seconds (a YAML comment)."""
    apps = policy / "data/apps.yaml"
    original = apps.read_text()
    count = 0
    while not stop.wait(RELOAD_EVERY):
        count += 1
        apps.write_text(f"{original}# soak reload {count}\n")


def grew(samples: list[Sample]) -> list[str]:
    """What grew between the second and the last third of the samples after warm-up.

    RSS is judged by its floor and its ceiling (the lowest and the highest sample
    of each third): it alternates between two levels ~11 MB apart, by where a
    sample falls between two reloads (just after one, the replaced engine's memory
    is not yet given back), so a median flips with how many samples fell on each
    level; a leak lifts both. The counts are judged by their medians."""
    judged = [s for s in samples if s.seconds >= WARM_UP]
    if len(judged) < 6:
        return [f"too few samples after the {WARM_UP:.0f} s warm-up to judge ({len(judged)})"]
    third = len(judged) // 3
    middle, last = judged[third : 2 * third], judged[-third:]
    checks: list[tuple[str, str, Any, float, str]] = [
        ("rss_mb", "floor", min, RSS_TOLERANCE_MB, "MB"),
        ("rss_mb", "ceiling", max, RSS_TOLERANCE_MB, "MB"),
        ("sockets", "median", statistics.median, SOCKET_TOLERANCE, ""),
        ("files", "median", statistics.median, FILE_TOLERANCE, ""),
        ("threads", "median", statistics.median, THREAD_TOLERANCE, ""),
    ]
    problems = []
    for what, measure, of, tolerance, unit in checks:
        before = of(getattr(s, what) for s in middle)
        after = of(getattr(s, what) for s in last)
        verdict = "GREW" if after - before > tolerance else "flat"
        line = (
            f"{what}: {measure} {before:.1f} -> {after:.1f}{unit} "
            f"(tolerance +{tolerance}{unit}): {verdict}"
        )
        print(f"  {line}")
        if verdict == "GREW":
            problems.append(line)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=int, default=15, help="seconds per sample row")
    parser.add_argument("--load", type=float, default=0.8, help="fraction of saturation")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: run `make bench-tools`")
    scratch = Path(tempfile.mkdtemp(prefix="portcullis-soak-"))
    backend, proxy, port, admin_port = free_port(), free_port(), free_port(), free_port()
    (scratch / "nginx.conf").write_text(
        NGINX_CONF.format(dir=scratch, backend=backend, proxy=proxy)
    )
    policy = scratch / "policies"
    shutil.copytree(ROOT / "policies", policy)
    processes = [subprocess.Popen(["nginx", "-c", str(scratch / "nginx.conf"), "-p", str(scratch)])]
    issuer, jwks = start_issuer(scratch)
    processes.append(jwks)
    token = issuer.token("alice", groups=["warehouse"], amr=["pwd", "otp"], ttl=24 * 3600)
    config = scratch / "gateway.yaml"
    config.write_text(
        f"listeners: [{{address: 127.0.0.1, port: {port}}}]\n"
        f"admin_listener: {{address: 127.0.0.1, port: {admin_port}}}\n"
        f"policy: {{source: {policy}, watch: true}}\n"
        f"routes: [{{app: wms, upstream: 'http://127.0.0.1:{backend}', path_prefix: /wms/}}]\n"
        f"issuers: [{{issuer: '{issuer.issuer}', audiences: [portcullis], "
        f"jwks_url: '{issuer.issuer}/jwks.json'}}]\n"
        f"decision_log: {{path: {scratch / 'decisions.log'}}}\n"
    )
    gateway = start_gateway(config)
    processes.append(gateway)
    url, admin = f"http://127.0.0.1:{port}/wms/stock", f"http://127.0.0.1:{admin_port}"
    stop = threading.Event()
    reloader = threading.Thread(target=keep_reloading, args=(policy, stop), daemon=True)
    samples: list[Sample] = []
    failures: list[str] = []
    try:
        wait_http(url)
        wait_http(admin)
        time.sleep(2.0)
        wrk(url, 3, CONNECTIONS, token)  # warm-up
        saturation = wrk(url, 10, CONNECTIONS, token)["rps"]
        target = args.load * saturation
        print(f"saturation {saturation:.0f} req/s (wrk -t1 -c{CONNECTIONS}); soak at "
              f"{args.load:.0%}: {target:.0f} req/s")  # fmt: skip
        script = pacing_script(scratch, calibrate(url, token, target, scratch))
        reloads_before, rejected_before = reloads_ok(admin)
        reloader.start()
        print(
            f"\n{args.minutes:g} minutes, a policy reload every {RELOAD_EVERY:.0f} s, one row "
            f"per {args.interval} s (RSS, open sockets, other fds, threads of the gateway and its "
            "children, sampled mid-segment under load)"
        )
        print(f"{'t s':>6}{'req/s':>8}{'p99 ms':>8}{'non-2xx':>8}{'sock err':>9}{'reloads':>8}"
              f"{'RSS MB':>8}{'sockets':>8}{'files':>6}{'threads':>8}{'procs':>6}")  # fmt: skip
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            while time.monotonic() - started < args.minutes * 60:
                load = pool.submit(wrk, url, args.interval, CONNECTIONS, token, script)
                time.sleep(args.interval / 2)
                rss, sockets, files, threads, count = footprint(gateway.pid)
                result = load.result()
                if gateway.poll() is not None:
                    failures.append(f"the gateway exited ({gateway.returncode})")
                    break
                ok, _ = reloads_ok(admin)
                sample = Sample(
                    time.monotonic() - started, result["rps"], result["p99"],
                    int(result["bad"]), int(result["socket_errors"]), ok - reloads_before,
                    rss, sockets, files, threads, count,
                )  # fmt: skip
                samples.append(sample)
                print(f"{sample.seconds:>6.0f}{sample.rps:>8.0f}{sample.p99:>8.1f}"
                      f"{sample.non_2xx:>8}{sample.socket_errors:>9}{sample.reloads:>8}"
                      f"{sample.rss_mb:>8.1f}{sample.sockets:>8}{sample.files:>6}{sample.threads:>8}"
                      f"{sample.processes:>6}", flush=True)  # fmt: skip
        stop.set()
        reloader.join()
        elapsed = time.monotonic() - started
        print(f"\ngrowth (the second against the last third after {WARM_UP:.0f} s warm-up):")
        failures += grew(samples)
        ok, rejected = reloads_ok(admin)
        wanted = int(elapsed // RELOAD_EVERY)
        ok -= reloads_before
        print(f"  policy reloads: {ok} ok, {rejected - rejected_before} rejected, "
              f"{wanted} file changes")  # fmt: skip
        # A change may land in the watcher's last poll interval or coalesce with the next.
        if rejected > rejected_before or ok < wanted - 2:
            failures.append(f"reloads: {ok} ok and {rejected - rejected_before} rejected "
                            f"for {wanted} changes")  # fmt: skip
        bad = sum(s.non_2xx for s in samples)
        if bad:
            failures.append(f"{bad} non-2xx answers during the soak")
        errors = sum(s.socket_errors for s in samples)
        if errors:
            print(f"  note: {errors} socket errors (wrk timeouts or resets) over the run")
    finally:
        stop.set()
        stop_processes(processes, graceful=(processes[0],))
        shutil.rmtree(scratch, ignore_errors=True)
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print("PASS: flat RSS, fds and threads; every reload took; no failed request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
