"""Gateway throughput and added latency, against direct and nginx, in one run.

    .venv/bin/python bench/gateway.py [--duration 10] [--connections 50]

(a) wrk straight to the backend (nginx answering 200 from memory),
(b) through the gateway: bearer token verification + policy + decision log,
(c) through the gateway with auth and policy off (the bare proxy),
(d) through nginx proxy_pass,
(e) through the reference: a bare 20-line aiohttp + uvloop proxy (REFERENCE_PROXY
    below), the ceiling of any aiohttp-based gateway on this machine.
Each at saturation with wrk -t1 -c50 (one gateway process), then the added
latency at a fixed 1,000 req/s from an open-loop client. ``--durability``
sets (b)'s ``decision_log.durability`` (default async).

``--log-costs`` measures the decision log instead: (b) with ``durability:
async`` against ``sync`` (group commit), and against async plus one sink of
each kind (file; http to a local OPA decision-log receiver; syslog over TCP to
syslog-ng, `make syslog-ng`). Targets: sync/async >= 0.85, each sink >= 0.95. Needs wrk and nginx
(`make bench-tools`). Targets: (b)/(c) >= 0.8, (b)/(a) >= 0.35, and under
2 ms added at p99 at 1,000 req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
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


def wrk(url: str, duration: int, connections: int, token: str | None) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if token:
        command[1:1] = ["-H", f"Authorization: Bearer {token}"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: .*", output)

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
        "socket_errors": 1.0 if errors else 0.0,
    }


async def fixed_rate(url: str, rate: int, seconds: float, token: str | None) -> list[float]:
    """Open loop: a request every 1/rate s whatever the answers do; latency per request."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            started = time.perf_counter()
            async with session.get(url, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url}: {response.status}")
            latencies.append((time.perf_counter() - started) * 1000)

        tasks = []
        start = time.perf_counter()
        for index in range(int(rate * seconds)):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
    return sorted(latencies)


def p(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def start_gateway(config: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "portcullis", "gateway", "--config", str(config),
         "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
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


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def log_costs(
    args: argparse.Namespace, scratch: Path, backend: int, issuer: DevIssuer, token: str,
    common: str,
) -> None:  # fmt: skip
    """Throughput of the full gateway: async vs sync durability, and with each sink.

    Every variant runs once per round, rounds interleaved, so a burst of load from
    elsewhere hits all of them alike; each ratio is taken within a round and the
    median over rounds is printed. CPU per request (the gateway's process, and the
    shipping process's apart) is printed too: it moves less with the machine's load."""
    from tests.syslog_ng import installed, start_syslog_ng

    receiver_port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(receiver_port)])
    syslog = start_syslog_ng(scratch / "syslog-ng") if installed() else None
    (scratch / "token").write_text("t")
    sinks = {
        "file": f"{{kind: file, path: {scratch / 'copy.jsonl'}, format: ocsf}}",
        "http": f"{{kind: http, url: 'http://127.0.0.1:{receiver_port}/logs', "
        f"token_file: {scratch / 'token'}, format: opa}}",
    }
    if syslog is not None:
        sinks["syslog"] = f"{{kind: syslog, address: '127.0.0.1:{syslog.tcp_port}', format: ocsf}}"
    variants: dict[str, tuple[str, str | None]] = {"async": ("async", None), "sync": ("sync", None)}
    variants.update({f"async + {kind} sink": ("async", sink) for kind, sink in sinks.items()})
    rounds: list[dict[str, dict[str, float]]] = []
    try:
        wait_http(f"http://127.0.0.1:{receiver_port}")
        for _ in range(args.rounds):
            results: dict[str, dict[str, float]] = {}
            for name, (durability, sink) in variants.items():
                results[name] = one_log_variant(args, scratch, issuer, token, common,
                                                durability, sink)  # fmt: skip
            rounds.append(results)
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=10)
        if syslog is not None:
            syslog.stop()
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s, one gateway process, "
          f"{args.rounds} interleaved rounds (medians)")  # fmt: skip
    print(f"{'gateway, full auth + policy + log':<30}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'gw CPU us/req':>15}{'shipper us/req':>16}")  # fmt: skip
    for name in variants:
        runs = [r[name] for r in rounds]
        print(f"{name:<30}{median(x['rps'] for x in runs):>8.0f}"
              f"{median(x['p50'] for x in runs):>8.2f}{median(x['p99'] for x in runs):>8.2f}"
              f"{median(x['cpu_us'] for x in runs):>15.0f}"
              f"{median(x['shipper_us'] for x in runs):>16.0f}")  # fmt: skip

    def ratio(name: str) -> tuple[float, float, list[float]]:
        per_round = [r[name]["rps"] / r["async"]["rps"] for r in rounds]
        cpu = median(r["async"]["cpu_us"] / r[name]["cpu_us"] for r in rounds)
        return median(per_round), cpu, per_round

    for name, target in [("sync", 0.85)] + [(n, 0.95) for n in variants if "sink" in n]:
        value, cpu, per_round = ratio(name)
        verdict = "PASS" if value >= target else "MISS"
        print(f"({name})/async = {value:.2f}  (target >= {target:.2f}: {verdict}; rounds "
              f"{', '.join(f'{x:.2f}' for x in per_round)}; by gateway CPU per request "
              f"{cpu:.2f})")  # fmt: skip


def median(values: Any) -> float:
    return float(statistics.median(list(values)))


def one_log_variant(
    args: argparse.Namespace, scratch: Path, issuer: DevIssuer, token: str, common: str,
    durability: str, sink: str | None,
) -> dict[str, float]:  # fmt: skip
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
    process = start_gateway(config)
    try:
        url = f"http://127.0.0.1:{port}/wms/stock"
        wait_http(url)
        time.sleep(1.0)
        wrk(url, 2, args.connections, token)
        helpers = children(process.pid)
        before = cpu_seconds(process.pid), sum(cpu_seconds(pid) for pid in helpers)
        result = wrk(url, args.duration, args.connections, token)
        after = cpu_seconds(process.pid), sum(cpu_seconds(pid) for pid in helpers)
        requests = result["rps"] * args.duration
        result["cpu_us"] = (after[0] - before[0]) / requests * 1e6
        result["shipper_us"] = (after[1] - before[1]) / requests * 1e6
        return result
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        with contextlib.suppress(FileNotFoundError):
            log_path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--durability", choices=("async", "sync"), default="async")
    parser.add_argument("--log-costs", action="store_true", help="durability and sink costs")
    parser.add_argument("--rounds", type=int, default=3, help="--log-costs: interleaved rounds")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: run `make bench-tools`")
    scratch = Path(tempfile.mkdtemp(prefix="portcullis-bench-"))
    backend, proxy = free_port(), free_port()
    (scratch / "nginx.conf").write_text(
        NGINX_CONF.format(dir=scratch, backend=backend, proxy=proxy)
    )
    nginx = subprocess.Popen(["nginx", "-c", str(scratch / "nginx.conf"), "-p", str(scratch)])
    issuer = DevIssuer(scratch / "issuer", "")
    # The gateway fetches the issuer's JWKS from a small server of our own.
    jwks_port = free_port()
    jwks = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys; sys.path.insert(0, sys.argv[1]);"
            "from aiohttp import web; from gateway.demo import DevIssuer; from pathlib import Path;"
            "i = DevIssuer(Path(sys.argv[2]), sys.argv[3]); web.run_app(i.app(), host='127.0.0.1',"
            " port=int(sys.argv[4]), print=None)"
        ), str(ROOT), str(scratch / "issuer"), f"http://127.0.0.1:{jwks_port}", str(jwks_port)],
    )  # fmt: skip
    issuer.issuer = f"http://127.0.0.1:{jwks_port}"
    token = issuer.token("alice", groups=["warehouse"], amr=["pwd", "otp"], ttl=3600)
    full_port, bare_port = free_port(), free_port()
    common = f"policy: {{source: {ROOT / 'policies'}, watch: false}}\n"
    route = f"routes: [{{app: wms, upstream: 'http://127.0.0.1:{backend}', path_prefix: /wms/}}]\n"
    (scratch / "full.yaml").write_text(
        f"listeners: [{{address: 127.0.0.1, port: {full_port}}}]\n{common}{route}"
        f"issuers: [{{issuer: '{issuer.issuer}', audiences: [portcullis], "
        f"jwks_url: '{issuer.issuer}/jwks.json'}}]\n"
        f"decision_log: {{path: {scratch / 'decisions.log'}, durability: {args.durability}}}\n"
    )
    if args.log_costs:
        try:
            log_costs(args, scratch, backend, issuer, token, common + route)
        finally:
            for process in (jwks,):
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(timeout=30)
            shutil.rmtree(scratch, ignore_errors=True)
        return
    (scratch / "bare.yaml").write_text(
        f"listeners: [{{address: 127.0.0.1, port: {bare_port}}}]\n{common}{route}auth: false\n"
    )
    full = start_gateway(scratch / "full.yaml")
    bare = start_gateway(scratch / "bare.yaml")
    reference_port = free_port()
    reference = subprocess.Popen(
        [sys.executable, "-c", REFERENCE_PROXY, f"http://127.0.0.1:{backend}", str(reference_port)]
    )
    targets = {
        "(a) direct to backend": (f"http://127.0.0.1:{backend}/wms/stock", None),
        "(b) gateway, full": (f"http://127.0.0.1:{full_port}/wms/stock", token),
        "(c) gateway, auth+policy off": (f"http://127.0.0.1:{bare_port}/wms/stock", None),
        "(d) nginx proxy_pass": (f"http://127.0.0.1:{proxy}/wms/stock", None),
        "(e) 20-line aiohttp proxy": (f"http://127.0.0.1:{reference_port}/wms/stock", None),
    }
    try:
        for url, _ in targets.values():
            wait_http(url)
        time.sleep(1.5)  # JWKS fetched, engines warm
        results = {}
        for name, (url, bearer) in targets.items():
            wrk(url, 2, args.connections, bearer)  # warm-up
            results[name] = wrk(url, args.duration, args.connections, bearer)
        print(f"wrk -t1 -c{args.connections} -d{args.duration}s, one gateway process, same run")
        print(f"{'target':<32}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
        for name, r in results.items():
            print(f"{name:<32}{r['rps']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['bad']:>9.0f}")
        a, b, c, d, e = (results[n]["rps"] for n in targets)
        print(f"(b)/(c) = {b / c:.2f}  (target >= 0.80)")
        print(f"(b)/(a) = {b / a:.2f}  (target >= 0.35; the reference proxy (e)/(a) = {e / a:.2f})")
        print(f"(c)/(e) = {c / e:.2f}  (the bare gateway against the 20-line proxy)")
        print(f"(b)/(e) = {b / e:.2f}, (d)/(a) = {d / a:.2f}")

        direct = asyncio.run(fixed_rate(targets["(a) direct to backend"][0], args.rate, 5, None))
        through = asyncio.run(fixed_rate(targets["(b) gateway, full"][0], args.rate, 5, token))
        print(f"\nfixed {args.rate} req/s for 5 s, open loop (aiohttp client):")
        print(f"  direct   p50 {p(direct, 0.5):.2f} ms  p99 {p(direct, 0.99):.2f} ms")
        print(f"  gateway  p50 {p(through, 0.5):.2f} ms  p99 {p(through, 0.99):.2f} ms")
        added = p(through, 0.99) - p(direct, 0.99)
        print(f"  added at p99: {added:.2f} ms  (target < 2 ms)")
    finally:
        for process in (full, bare, jwks, reference):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
