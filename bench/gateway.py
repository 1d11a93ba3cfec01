"""Gateway throughput and added latency: every issue-15 target with PASS/MISS, one run.

    .venv/bin/python bench/gateway.py [--duration 10] [--connections 50] [--rounds 3]

Targets measured, each at saturation with wrk -t1 -c50 (one gateway process
unless said otherwise):
(a) wrk straight to the backend (nginx answering 200 from memory),
(b) through the gateway: bearer token verification + policy + decision log
    (default config: durability unset, which is async for a non-pci route like
    this one; no shared state); also (b) with `durability: sync`, (b) with
    Redis shared state on, and (b) with `--workers 2`,
(c) through the gateway with auth and policy off (the bare proxy),
(d) through nginx proxy_pass,
(e) through the reference: a bare 20-line aiohttp + uvloop proxy (REFERENCE_PROXY
    below), the ceiling of any aiohttp-based gateway on this machine.
Every target runs once per round, rounds interleaved, so a burst of load from
elsewhere on the (2-core, shared) machine hits all alike; each ratio is taken
within a round, and the median and the per-round values are printed. Then the
added p99 latency at a fixed rate of 40% of (b)'s own saturation, from an
open-loop paced client (latency counted from each request's scheduled send
time, like wrk2), and decision latency against `allow := true`
(bench/decision.py). Targets (issue 15): (b)/(e) >= 0.80 and (b)/(c) >= 0.85
for each (b) config, --workers 2 >= 1.7x one worker, added p99 < 2 ms, decision
p99 within 3x the trivial policy's. Needs wrk, nginx (`make bench-tools`) and
redis-server (`make redis`).

``--log-costs`` measures the decision log instead: (b) with ``durability:
async`` against ``sync`` (group commit), and against async plus one sink of
each kind (file; http to a local OPA decision-log receiver; syslog over TCP to
syslog-ng, `make syslog-ng`; both receivers at nice 19, standing in for a SIEM on
another machine), each in every format of ``--formats`` (default opa and
ocsf). Targets: sync/async >= 0.85, each sink >= 0.95. With
``--workers 2`` (on 2 cores) every gateway variant runs two workers, so the
shipping processes find no idle core: their cost shows in throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.demo import DevIssuer  # noqa: E402

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{backend};
        location / {{ return 200 "ok\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{proxy};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


REFERENCE_PROXY = """
import sys, aiohttp, uvloop
from aiohttp import web
UPSTREAM = sys.argv[1]
async def init():
    app = web.Application()
    async def start(app):
        app["session"] = aiohttp.ClientSession()
    app.on_startup.append(start)
    async def stop(app):
        await app["session"].close()
    app.on_cleanup.append(stop)
    async def handle(request):
        async with app["session"].request(
            request.method, UPSTREAM + request.raw_path, headers=request.headers
        ) as upstream:
            return web.Response(body=await upstream.read(), status=upstream.status)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
uvloop.install()
web.run_app(init(), host="127.0.0.1", port=int(sys.argv[2]), access_log=None, print=None)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wrk(
    url: str, duration: int, connections: int, token: str | None, script: Path | None = None
) -> dict[str, float]:
    """wrk -t1 at saturation (or paced by a Lua `script`'s delay()): req/s, p50/p99 ms,
    non-2xx answers, and whether it saw socket errors."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if token:
        command[1:1] = ["-H", f"Authorization: Bearer {token}"]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )

    def percentile(p: str) -> float:
        match = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", output)
        assert match, output
        value, unit = float(match.group(1)), match.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {
        "rps": rps,
        "p50": percentile("50"),
        "p99": percentile("99"),
        "bad": float(non_2xx.group(1)) if non_2xx else 0.0,
        "socket_errors": float(sum(int(n) for n in errors.groups())) if errors else 0.0,
        # Requests with no answer within wrk's 2 s (e.g. a sync response held for a slow fsync).
        "timeouts": float(errors.group(4)) if errors else 0.0,
    }


@dataclass
class Paced:
    """What an open-loop run measured (milliseconds) and whether the client kept pace."""

    latencies: list[float]  # sorted; from each request's scheduled send time (wrk2's way)
    service: list[float]  # sorted; from the moment it was actually sent
    rate: float  # requests per second the client actually started
    lag_p99: float  # how late the client started its requests, p99
    refused: dict[int, int]  # answers other than 200, by status (not in the latencies)


async def open_loop(url: str, rate: float, seconds: float, token: str | None) -> Paced:
    """Open loop: request i is due at start + i/rate whatever the answers do. Latency
    counts from the due time, so a client or gateway stall is charged to every
    request it delayed (no coordinated omission); `rate` and `lag_p99` say whether
    the client itself kept the pace. An answer but 200 (a 429 when a burst after a
    stall holds more than the identity's requests_per_identity at once) is counted in
    `refused`, not in the latencies, and reported."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    service: list[float] = []
    lags: list[float] = []
    refused: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(due: float) -> None:
            sent = time.perf_counter()
            lags.append((sent - due) * 1000)
            async with session.get(url, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    refused[response.status] = refused.get(response.status, 0) + 1
                    return
            done = time.perf_counter()
            latencies.append((done - due) * 1000)
            service.append((done - sent) * 1000)

        tasks = []
        # The client's own collector pausing would delay every answer in flight and
        # be charged to the target: no collection while the clock runs.
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            start = time.perf_counter()
            for index in range(int(rate * seconds)):
                due = start + index / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(one(due)))
            sent_all = time.perf_counter()
            await asyncio.gather(*tasks)
        finally:
            gc.enable()
            gc.unfreeze()
    started = len(tasks) / max(sent_all - start, 1e-9) if len(tasks) > 1 else 0.0
    return Paced(sorted(latencies), sorted(service), started, p(sorted(lags), 0.99), refused)


async def fixed_rate(url: str, rate: int, seconds: float, token: str | None) -> list[float]:
    """Open loop at `rate`: latency per request from its actual send, sorted (ms); any
    answer but 200 fails the run."""
    paced = await open_loop(url, rate, seconds, token)
    if paced.refused:
        raise RuntimeError(f"{url}: answers other than 200, by status: {paced.refused}")
    return paced.service


def p(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def start_gateway(config: Path, *options: str) -> subprocess.Popen[bytes]:
    """`portcullis gateway --config config *options`; its log goes to config.err (a
    pipe nobody reads would block a gateway that logs much)."""
    with config.with_suffix(".err").open("wb") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "portcullis", "gateway", "--config", str(config),
             "--log-level", "warning", *options],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors,
        )  # fmt: skip
    return process


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(
                ("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])), 1
            ):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


RECEIVER = """
import gzip, sys
from aiohttp import web
async def logs(request):
    gzip.decompress(await request.read())
    return web.Response(status=204)
app = web.Application(handler_args={"auto_decompress": False})
app.router.add_post("/logs", logs)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_costs(
    args: argparse.Namespace, scratch: Path, backend: int, issuer: DevIssuer, token: str,
    common: str,
) -> None:  # fmt: skip
    """Throughput of the full gateway: async vs sync durability, and with each sink.

    A round is ``async, sync, async, +file, async, +http, async, +syslog, async``
    (each sink kind once per format in ``--formats``):
    each variant runs between two runs of plain async, its ratio is taken against
    their mean (drift and bursts of load from elsewhere on the machine hit both
    sides of a pair alike), and the median of the per-round ratios is printed.
    CPU per request of the gateway's process and CPU per event of the shipping
    process are printed too (they move less with the machine's load), and each
    ratio again by CPU: the gateway's alone, and the gateway's plus the shipping
    process's, per request (what the sink costs where every core is busy, as
    with one worker per core; with one worker on two cores the shipping runs
    mostly on the idle one, which throughput alone doesn't show). The
    shipping process's CPU is counted until it has caught up after the run, so
    work it put off (it runs at a lower priority, `decision_log.shipping_nice`)
    is charged to it; how far behind it was when wrk stopped, and how long it
    took to catch up, is printed per sink. Last, each sink at about half of
    async's saturation: the most it fell behind, and how soon after the load
    stopped it had shipped everything."""
    from tests.syslog_ng import installed, start_syslog_ng

    receiver_port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(receiver_port)])
    syslog = start_syslog_ng(scratch / "syslog-ng") if installed() else None
    for pid in (receiver.pid, syslog.process.pid if syslog and syslog.process else None):
        if pid is not None:
            remote_stand_in(pid)
    (scratch / "token").write_text("t")
    kinds = {
        "file": f"kind: file, path: {scratch / 'copy.jsonl'}",
        "http": f"kind: http, url: 'http://127.0.0.1:{receiver_port}/logs', "
        f"token_file: {scratch / 'token'}",
    }
    if syslog is not None:
        kinds["syslog"] = f"kind: syslog, address: '127.0.0.1:{syslog.tcp_port}'"
    # Each kind in each format asked for: a format is the sink's own work (opa, the
    # default, ships the log's lines; ocsf and ecs map each record anew).
    sinks = {
        f"{kind} ({form})": f"{{{settings}, format: {form}}}"
        for kind, settings in kinds.items()
        for form in args.formats.split(",")
    }
    variants: dict[str, tuple[str, str | None]] = {"sync": ("sync", None)}
    variants.update({f"async + {kind} sink": ("async", sink) for kind, sink in sinks.items()})
    rounds: list[dict[str, LogRun]] = []
    try:
        wait_http(f"http://127.0.0.1:{receiver_port}")
        for _ in range(args.rounds):
            results: dict[str, LogRun] = {"async": []}
            results["async"].append(one_log_variant(args, scratch, issuer, token, common))
            for name, (durability, sink) in variants.items():
                results[name] = [one_log_variant(args, scratch, issuer, token, common,
                                                 durability, sink)]  # fmt: skip
                results["async"].append(one_log_variant(args, scratch, issuer, token, common))
            rounds.append(results)
        report_log_costs(args, rounds, list(variants))
        rate = 0.5 * median(run["rps"] for r in rounds for run in r["async"])
        print(f"each sink at about half of async's saturation (wrk -c{PACED_CONNECTIONS} "
              f"paced to {rate:.0f} req/s, {PACED_SECONDS} s):")  # fmt: skip
        for kind, sink in sinks.items():
            lag = paced_log_lag(args, scratch, issuer, token, common, sink, rate)
            print(f"  {kind:<14} {lag.rate:.0f} req/s; behind at most {lag.most:.0f} events, "
                  f"{lag.end:.0f} when the load stopped, all shipped {lag.catch_up:.2f} s "
                  "later", flush=True)  # fmt: skip
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=10)
        if syslog is not None:
            syslog.stop()


LogRun = list[dict[str, float]]


def report_log_costs(
    args: argparse.Namespace, rounds: list[dict[str, LogRun]], variants: list[str]
) -> None:
    processes = "one gateway process" if args.workers == 1 else f"--workers {args.workers}"
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s, {processes}, "
          f"{args.rounds} rounds, each variant between two runs of async (medians)")  # fmt: skip
    print(f"{'gateway, full auth + policy + log':<30}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'gw CPU us/req':>15}{'shipping CPU us/event':>23}{'behind at end':>15}"
          f"{'caught up in':>14}")  # fmt: skip
    for name in ["async", *variants]:
        runs = [run for r in rounds for run in r[name]]
        sink = "sink" in name
        shipping = f"{median(x['shipper_us'] for x in runs):.1f}" if sink else "-"
        behind = f"{median(x['behind'] for x in runs):.0f} ev" if sink else "-"
        caught = f"{median(x['catch_up'] for x in runs):.2f} s" if sink else "-"
        print(f"{name:<30}{median(x['rps'] for x in runs):>8.0f}"
              f"{median(x['p50'] for x in runs):>8.2f}{median(x['p99'] for x in runs):>8.2f}"
              f"{median(x['cpu_us'] for x in runs):>15.0f}"
              f"{shipping:>23}{behind:>15}{caught:>14}")  # fmt: skip

    def ratio(name: str) -> tuple[float, float, float, list[float]]:
        per_round, cpu, total = [], [], []
        position = variants.index(name)  # it ran between async runs position and position + 1
        for r in rounds:
            pair, run = r["async"][position : position + 2], r[name][0]
            per_round.append(run["rps"] / statistics.mean(x["rps"] for x in pair))
            cpu.append(statistics.mean(x["cpu_us"] for x in pair) / run["cpu_us"])
            both = statistics.mean(x["cpu_us"] + x["shipper_us"] for x in pair)
            total.append(both / (run["cpu_us"] + run["shipper_us"]))
        return median(per_round), median(cpu), median(total), per_round

    for name, target in [("sync", 0.85)] + [(n, 0.95) for n in variants if "sink" in n]:
        value, cpu, total, per_round = ratio(name)
        verdict = "PASS" if value >= target else "MISS"
        print(f"({name})/async = {value:.2f}  (target >= {target:.2f}: {verdict}; rounds "
              f"{', '.join(f'{x:.2f}' for x in per_round)}; by gateway CPU per request "
              f"{cpu:.2f}, by gateway + shipping CPU per request {total:.2f})",
              flush=True)  # fmt: skip
    # The noise floor: each async run between the two around it, as a variant is.
    noise = [
        r["async"][i]["rps"] / statistics.mean((r["async"][i - 1]["rps"], r["async"][i + 1]["rps"]))
        for r in rounds
        for i in range(1, len(r["async"]) - 1)
    ]
    spread = median(abs(x - 1) for x in noise)
    print(f"noise: async against the async runs around it, measured like a variant: "
          f"{min(noise):.2f} to {max(noise):.2f}, median deviation {spread:.1%} (a ratio "
          f"closer to 1 than that is not a measured difference)", flush=True)  # fmt: skip


def remote_stand_in(pid: int) -> None:
    """Every thread of `pid` at nice 19: the receivers stand in for a SIEM on another
    machine, so their own CPU should not come out of the gateway's share of these
    cores (they still get whatever is idle, and keep up at the bench's rates)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), 19)


def median(values: Any) -> float:
    return float(statistics.median(list(values)))


def log_gateway_config(
    scratch: Path, issuer: DevIssuer, common: str, durability: str, sink: str | None
) -> tuple[int, Path, Path]:
    """A gateway config with one decision-log variant: its port, the config, the log."""
    port = free_port()
    config = scratch / f"log-{port}.yaml"
    log_path = scratch / f"decisions-{port}.log"
    sink_list = f", sinks: [{sink}]" if sink else ""
    config.write_text(
        f"listeners: [{{address: 127.0.0.1, port: {port}}}]\n{common}"
        f"issuers: [{{issuer: '{issuer.issuer}', audiences: [portcullis], "
        f"jwks_url: '{issuer.issuer}/jwks.json'}}]\n"
        f"decision_log: {{path: {log_path}, durability: {durability}{sink_list}}}\n"
    )
    return port, config, log_path


def worker_logs(log_path: Path) -> list[Path]:
    """The decision logs a gateway with this log path writes: the path itself, or
    with `--workers N` one per worker (`decisions.worker-0.log`, ...)."""
    pattern = f"{log_path.stem}.worker-*{log_path.suffix}"
    return [log_path] if log_path.exists() else sorted(log_path.parent.glob(pattern))


def unshipped(log_path: Path) -> int | None:
    """Events in the log (each worker's) past its (one) sink's cursor; None without a sink."""
    total, cursors_found = 0, False
    for each in worker_logs(log_path):
        cursors = list(each.parent.glob(f"{each.name}.sink-*.cursor"))
        if not cursors:
            continue
        cursors_found = True
        try:
            offset = int(json.loads(cursors[0].read_bytes())["offset"])
        except (ValueError, KeyError):
            offset = 0
        with each.open("rb") as log:
            log.seek(offset)
            total += log.read().count(b"\n")
    return total if cursors_found else None


def caught_up(log_path: Path, timeout: float = 60.0) -> float:
    """Wait until the sink shipped the whole log; the seconds it took."""
    start = time.monotonic()
    while (unshipped(log_path) or 0) > 0:
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{log_path}: the sink did not catch up in {timeout:.0f} s")
        time.sleep(0.02)
    return time.monotonic() - start


def one_log_variant(
    args: argparse.Namespace, scratch: Path, issuer: DevIssuer, token: str, common: str,
    durability: str = "async", sink: str | None = None,
) -> dict[str, float]:  # fmt: skip
    port, config, log_path = log_gateway_config(scratch, issuer, common, durability, sink)
    process = start_gateway(config, *workers_option(args))
    try:
        url = f"http://127.0.0.1:{port}/wms/stock"
        wait_http(url)
        time.sleep(1.0)
        wrk(url, 2, args.connections, token)
        caught_up(log_path)
        # The gateway's processes (with --workers, the workers too) and the shipping ones.
        gateway_pids: list[int] = [process.pid]
        shipping_pids: list[int] = []
        for pid in descendants(process.pid):
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            shipping = b"gateway.audit.shipping.process" in command
            (shipping_pids if shipping else gateway_pids).append(pid)
        before = sum(map(cpu_seconds, gateway_pids)), sum(map(cpu_seconds, shipping_pids))
        result = wrk(url, args.duration, args.connections, token)
        gateway_cpu = sum(map(cpu_seconds, gateway_pids))
        result["behind"] = float(unshipped(log_path) or 0)
        result["catch_up"] = caught_up(log_path)
        shipping_cpu = sum(map(cpu_seconds, shipping_pids))
        requests = result["rps"] * args.duration
        result["cpu_us"] = (gateway_cpu - before[0]) / requests * 1e6
        result["shipper_us"] = (shipping_cpu - before[1]) / requests * 1e6
        return result
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        for each in worker_logs(log_path):
            with contextlib.suppress(FileNotFoundError):
                each.unlink()


def workers_option(args: argparse.Namespace) -> tuple[str, ...]:
    """`--workers N` for the gateway, when --log-costs runs with more than one."""
    return ("--workers", str(args.workers)) if args.workers > 1 else ()


PACED_SECONDS = 5
PACED_CONNECTIONS = 10


@dataclass
class LogLag:
    rate: float  # req/s wrk achieved
    most: float  # the most events the sink was behind, sampled every 50 ms
    end: float  # events behind when the load stopped
    catch_up: float  # seconds from then until everything was shipped


def paced_log_lag(
    args: argparse.Namespace, scratch: Path, issuer: DevIssuer, token: str, common: str,
    sink: str, rate: float,
) -> LogLag:  # fmt: skip
    """One sink at a fixed rate below saturation (wrk, each connection pausing
    between requests): does shipping keep up?"""
    port, config, log_path = log_gateway_config(scratch, issuer, common, "async", sink)
    script = scratch / "paced.lua"
    script.write_text(f"function delay()\n  return {PACED_CONNECTIONS / rate * 1000:.0f}\nend\n")
    process = start_gateway(config, *workers_option(args))
    try:
        url = f"http://127.0.0.1:{port}/wms/stock"
        wait_http(url)
        time.sleep(1.0)
        wrk(url, 1, PACED_CONNECTIONS, token, script)  # warm-up
        caught_up(log_path)
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                samples.append(unshipped(log_path) or 0)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            paced = wrk(url, PACED_SECONDS, PACED_CONNECTIONS, token, script)
        finally:
            done.set()
            sampler.join()
        end = unshipped(log_path) or 0
        return LogLag(paced["rps"], max([*samples, end]), end, caught_up(log_path))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        for each in worker_logs(log_path):
            with contextlib.suppress(FileNotFoundError):
                each.unlink()


def stop_processes(
    processes: list[subprocess.Popen[Any]], graceful: tuple[subprocess.Popen[Any], ...] = ()
) -> None:
    """SIGTERM each (SIGQUIT for those in `graceful`: nginx's graceful stop), then wait;
    one that doesn't exit within 30 s is killed."""
    for process in processes:
        process.send_signal(signal.SIGQUIT if process in graceful else signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (workers, the shipping process), from any of its threads."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and every process below it."""
    total = 0.0
    for each in (pid, *descendants(pid)):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(each)
    return total


def saturate(args: argparse.Namespace, url: str, token: str | None, pid: int | None) -> Run:
    """wrk at saturation after a 2 s warm-up; with `pid`, CPU per request of that
    process and its children."""
    wrk(url, 2, args.connections, token)
    # wrk's exit drops its connections, not the requests on them: those still held
    # (a sync fsync under load) would hold an identity's slots (requests_per_identity
    # 64) while the measured run's 50 connections arrive, and get it 429s.
    time.sleep(0.5)
    before = tree_cpu(pid) if pid is not None else 0.0
    result = wrk(url, args.duration, args.connections, token)
    if pid is not None:
        requests = result["rps"] * args.duration
        result["cpu_us"] = (tree_cpu(pid) - before) / requests * 1e6
    return result


Run = dict[str, float]


def refusals(log_path: Path) -> dict[str, int]:
    """How many denied events of each reason (its rule, before the first `:`) a log holds."""
    counts: dict[str, int] = {}
    with contextlib.suppress(OSError), log_path.open("rb") as lines:
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            result = event.get("result")
            if isinstance(result, dict) and result.get("allow") is False:
                reasons = result.get("reasons") or ["?"]
                rule = str(reasons[0]).split(":")[0]
                counts[rule] = counts.get(rule, 0) + 1
    return counts


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def listed(values: list[float], digits: int = 2) -> str:
    return ", ".join(f"{value:.{digits}f}" for value in values)


def speed(
    args: argparse.Namespace, scratch: Path, backend: int, proxy: int, issuer: DevIssuer,
    token: str, common: str,
) -> None:  # fmt: skip
    """Every issue-15 target, interleaved rounds, medians and per-round values."""
    redis_port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(scratch)], stdout=subprocess.DEVNULL,
    )  # fmt: skip
    issuers = (
        f"issuers: [{{issuer: '{issuer.issuer}', audiences: [portcullis], "
        f"jwks_url: '{issuer.issuer}/jwks.json'}}]\n"
    )
    # Redis with the README's settings, but an identity rate limit the bench never
    # reaches (the default 1,200/min would refuse it), so that work is measured too.
    shared = (
        f"shared_state: {{redis: {{url: 'redis://127.0.0.1:{redis_port}/0'}}, "
        "rate_limits: {identity: {requests: 100000000, window: 60}}}\n"
    )
    # name: (extra config, gateway options); every one with a token, policy and log.
    full = {
        "(b) gateway, full": ("", ()),
        "(b) durability: sync": ("", ()),
        "(b) + Redis shared state": (shared, ()),
        "(b) --workers 2": ("", ("--workers", "2")),
    }
    processes: list[subprocess.Popen[bytes]] = [redis]
    targets: dict[str, tuple[str, str | None, int | None]] = {
        "(a) direct to backend": (f"http://127.0.0.1:{backend}/wms/stock", None, None),
    }
    logs: dict[str, Path] = {}
    try:
        for name, (extra, options) in full.items():
            port = free_port()
            # Unset is the default: async for the wms route (not pci), like a user's.
            durability = ", durability: sync" if "sync" in name else ""
            config = scratch / f"gateway-{port}.yaml"
            logs[name] = scratch / f"decisions-{port}.log"
            config.write_text(
                f"listeners: [{{address: 127.0.0.1, port: {port}}}]\n{common}{issuers}{extra}"
                f"decision_log: {{path: {logs[name]}{durability}}}\n"
            )
            processes.append(start_gateway(config, *options))
            targets[name] = (f"http://127.0.0.1:{port}/wms/stock", token, processes[-1].pid)
        bare_port = free_port()
        (scratch / "bare.yaml").write_text(
            f"listeners: [{{address: 127.0.0.1, port: {bare_port}}}]\n{common}auth: false\n"
        )
        processes.append(start_gateway(scratch / "bare.yaml"))
        targets["(c) gateway, auth+policy off"] = (
            f"http://127.0.0.1:{bare_port}/wms/stock", None, processes[-1].pid,
        )  # fmt: skip
        targets["(d) nginx proxy_pass"] = (f"http://127.0.0.1:{proxy}/wms/stock", None, None)
        reference_port = free_port()
        processes.append(subprocess.Popen(
            [sys.executable, "-c", REFERENCE_PROXY, f"http://127.0.0.1:{backend}",
             str(reference_port)],
        ))  # fmt: skip
        targets["(e) 20-line aiohttp proxy"] = (
            f"http://127.0.0.1:{reference_port}/wms/stock", None, processes[-1].pid,
        )  # fmt: skip
        for url, _, _ in targets.values():
            wait_http(url)
        wait_http(f"http://127.0.0.1:{redis_port}")
        time.sleep(2.0)  # JWKS fetched, engines warm, workers up
        rounds: list[dict[str, Run]] = []
        for _ in range(args.rounds):
            rounds.append({
                name: saturate(args, url, bearer, pid)
                for name, (url, bearer, pid) in targets.items()
            })  # fmt: skip
        report_saturation(args, rounds, list(targets), logs)
        b_rps = median(r["(b) gateway, full"]["rps"] for r in rounds)
        rate = args.rate or max(1, round(0.4 * b_rps))
        latency(args, rate, targets["(a) direct to backend"][0],
                targets["(b) gateway, full"][0], targets["(e) 20-line aiohttp proxy"][0],
                token)  # fmt: skip
    finally:
        stop_processes(processes)
    if not args.skip_decision:
        from bench.decision import compare, report

        print()
        report(compare(decisions=20_000, routes=500))


def report_saturation(args: argparse.Namespace, rounds: list[dict[str, Run]],
                      names: list[str], logs: dict[str, Path]) -> None:  # fmt: skip
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s at saturation, "
          f"{args.rounds} interleaved rounds (medians; CPU per request of the process "
          "and its children)")  # fmt: skip
    print(f"{'target':<30}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'CPU us/req':>12}"
          f"{'errors':>9}  req/s per round")  # fmt: skip
    for name in names:
        runs = [r[name] for r in rounds]
        cpu = f"{median(x['cpu_us'] for x in runs):.0f}" if "cpu_us" in runs[0] else "-"
        print(f"{name:<30}{median(x['rps'] for x in runs):>8.0f}"
              f"{median(x['p50'] for x in runs):>8.2f}{median(x['p99'] for x in runs):>8.2f}"
              f"{cpu:>12}{sum(x['bad'] + x['socket_errors'] for x in runs):>9.0f}  "
              f"{listed([x['rps'] for x in runs], 0)}")  # fmt: skip
    # errors: non-2xx answers plus socket errors, summed over the rounds.
    for name in names:
        non_2xx = sum(r[name]["bad"] for r in rounds)
        sockets = sum(r[name]["socket_errors"] for r in rounds)
        if non_2xx or sockets:
            timeouts = sum(r[name]["timeouts"] for r in rounds)
            print(f"WARNING: {name}: {non_2xx:.0f} non-2xx answers, {sockets:.0f} socket "
                  f"errors ({timeouts:.0f} timeouts, no answer within 2 s): its req/s are "
                  "not comparable")  # fmt: skip
            if name in logs:
                print(f"  refusals in its decision log: {refusals(logs[name]) or 'none'} "
                      "(an allow answered 502/504 by the upstream isn't one)")  # fmt: skip

    def ratio(top: str, bottom: str, target: float) -> None:
        per_round = [r[top]["rps"] / r[bottom]["rps"] for r in rounds]
        value = median(per_round)
        by_cpu = ""
        if "cpu_us" in rounds[0][top] and "cpu_us" in rounds[0][bottom] and "workers" not in top:
            cpu = median(r[bottom]["cpu_us"] / r[top]["cpu_us"] for r in rounds)
            by_cpu = f"; by CPU per request {cpu:.2f}"
        print(
            f"  {top} / {bottom[:3]} = {value:.2f}  (target >= "
            f"{target:.2f}: {verdict(value >= target)}; rounds {listed(per_round)}{by_cpu})"
        )

    print("\nthroughput ratios (issue 15):")
    for top in ("(b) gateway, full", "(b) durability: sync", "(b) + Redis shared state"):
        ratio(top, "(e) 20-line aiohttp proxy", 0.80)
        ratio(top, "(c) gateway, auth+policy off", 0.85)
    ratio("(b) --workers 2", "(b) gateway, full", 1.70)
    print("\nfor reference (no target):")
    for top, bottom in [("(c) gateway, auth+policy off", "(e) 20-line aiohttp proxy"),
                        ("(e) 20-line aiohttp proxy", "(a) direct to backend"),
                        ("(b) gateway, full", "(a) direct to backend"),
                        ("(d) nginx proxy_pass", "(a) direct to backend")]:  # fmt: skip
        per_round = [r[top]["rps"] / r[bottom]["rps"] for r in rounds]
        print(f"  {top} / {bottom[:3]} = {median(per_round):.2f}  (rounds {listed(per_round)})")


def latency(args: argparse.Namespace, rate: int, direct: str, gateway: str, reference: str,
            token: str) -> None:  # fmt: skip
    """Added p99 at a fixed rate through (b), against direct, interleaved rounds; the
    20-line proxy (e) at the same rate shows the floor any aiohttp proxy adds here."""
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    seconds = 5.0
    targets = {"direct": (direct, None), "gateway (b)": (gateway, token),
               "20-line (e)": (reference, None)}  # fmt: skip
    rows: list[dict[str, Paced]] = []
    for _ in range(args.rounds):
        row = {}
        for label, (url, bearer) in targets.items():
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(open_loop(url, 0.2 * rate, 1.0, bearer))  # warm-up
                row[label] = runner.run(open_loop(url, rate, seconds, bearer))
        rows.append(row)
    print(f"\nfixed {rate} req/s (40% of (b)'s median saturation) for {seconds:.0f} s, "
          f"open loop (aiohttp + uvloop client, latency from each request's scheduled "
          f"send, as wrk2), {args.rounds} interleaved rounds")  # fmt: skip
    for label in targets:
        runs = [row[label] for row in rows]
        print(f"  {label:<12} p50 {median(p(r.latencies, 0.5) for r in runs):.2f} ms  "
              f"p99 {median(p(r.latencies, 0.99) for r in runs):.2f} ms  "
              f"(from actual send: p99 {median(p(r.service, 0.99) for r in runs):.2f} ms); "
              f"client started {listed([r.rate for r in runs], 0)} req/s, "
              f"start lag p99 {listed([r.lag_p99 for r in runs])} ms")  # fmt: skip

    def added(label: str, samples: str) -> list[float]:
        return [
            p(getattr(row[label], samples), 0.99) - p(getattr(row["direct"], samples), 0.99)
            for row in rows
        ]

    value = median(added("gateway (b)", "latencies"))
    print(
        f"  added at p99 by (b): {value:.2f} ms  (target < 2 ms: {verdict(value < 2.0)}; rounds "
        f"{listed(added('gateway (b)', 'latencies'))}; from actual send "
        f"{median(added('gateway (b)', 'service')):.2f} ms)"
    )
    print(f"  added at p99 by (e), for reference: {median(added('20-line (e)', 'latencies')):.2f} "
          f"ms (rounds {listed(added('20-line (e)', 'latencies'))})")  # fmt: skip
    for label in targets:
        refused: dict[int, int] = {}
        for row in rows:
            for status, count in row[label].refused.items():
                refused[status] = refused.get(status, 0) + count
        if refused:
            print(f"  WARNING: {label}: answers other than 200, by status: {refused} (not "
                  "in its latencies; 429: over requests_per_identity at once)")  # fmt: skip
    slow = [r.rate for row in rows for r in row.values() if r.rate < 0.98 * rate]
    if slow:
        print(
            f"  WARNING: the client fell behind the pace ({listed(slow, 0)} req/s started "
            f"against {rate}): latencies include its own delay"
        )


def start_issuer(scratch: Path) -> tuple[DevIssuer, subprocess.Popen[bytes]]:
    """A dev token issuer whose JWKS the gateway fetches from a small server of our own."""
    issuer = DevIssuer(scratch / "issuer", "")
    port = free_port()
    issuer.issuer = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys; sys.path.insert(0, sys.argv[1]);"
            "from aiohttp import web; from gateway.demo import DevIssuer; from pathlib import Path;"
            "i = DevIssuer(Path(sys.argv[2]), sys.argv[3]); web.run_app(i.app(), host='127.0.0.1',"
            " port=int(sys.argv[4]), print=None)"
        ), str(ROOT), str(scratch / "issuer"), issuer.issuer, str(port)],
    )  # fmt: skip
    return issuer, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--rate", type=int, default=0,
        help="fixed rate for the added latency (default: 40%% of (b)'s saturation)",
    )  # fmt: skip
    parser.add_argument("--log-costs", action="store_true", help="durability and sink costs")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--formats", default="opa,ocsf",
        help="with --log-costs: the formats each sink kind is measured in (opa, ocsf, ecs)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=1,
        help="with --log-costs: gateway workers (2 on 2 cores: no core left idle for shipping)",
    )  # fmt: skip
    parser.add_argument("--skip-decision", action="store_true", help="no bench/decision.py part")
    args = parser.parse_args()
    for tool in ("wrk", "nginx") if args.log_costs else ("wrk", "nginx", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: run `make bench-tools redis`")
    scratch = Path(tempfile.mkdtemp(prefix="portcullis-bench-"))
    backend, proxy = free_port(), free_port()
    (scratch / "nginx.conf").write_text(
        NGINX_CONF.format(dir=scratch, backend=backend, proxy=proxy)
    )
    nginx = subprocess.Popen(["nginx", "-c", str(scratch / "nginx.conf"), "-p", str(scratch)])
    issuer, jwks = start_issuer(scratch)
    token = issuer.token("alice", groups=["warehouse"], amr=["pwd", "otp"], ttl=3600)
    common = f"policy: {{source: {ROOT / 'policies'}, watch: false}}\n"
    route = f"routes: [{{app: wms, upstream: 'http://127.0.0.1:{backend}', path_prefix: /wms/}}]\n"
    try:
        if args.log_costs:
            log_costs(args, scratch, backend, issuer, token, common + route)
        else:
            speed(args, scratch, backend, proxy, issuer, token, common + route)
    finally:
        jwks.send_signal(signal.SIGTERM)
        jwks.wait(timeout=30)
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
