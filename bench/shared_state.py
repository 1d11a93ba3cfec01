"""What shared state costs: the gateway with and without a Redis round trip per request.

    .venv/bin/python bench/shared_state.py [--duration 5] [--connections 50]

Both gateways do bearer verification + policy + decision log against the same
nginx backend; (s) adds `shared_state` on a local redis-server (one Lua script
per request: revocation, lockout, rate limit, signals). wrk -t1 at saturation,
then a fixed 500 req/s open loop for the added p50. Targets (issue 14): (s)/(b)
>= 0.75 throughput, under 1 ms added at p50. Needs wrk, nginx (`make
bench-tools`) and redis-server (`make redis`).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway import (  # noqa: E402
    NGINX_CONF,
    fixed_rate,
    free_port,
    p,
    start_gateway,
    stop_processes,
    wait_http,
    wrk,
)
from gateway.demo import DevIssuer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rate", type=int, default=500)
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: run `make bench-tools redis`")
    scratch = Path(tempfile.mkdtemp(prefix="portcullis-bench-shared-"))
    backend, proxy, redis_port, jwks_port = free_port(), free_port(), free_port(), free_port()
    (scratch / "nginx.conf").write_text(
        NGINX_CONF.format(dir=scratch, backend=backend, proxy=proxy)
    )
    processes = [
        subprocess.Popen(["nginx", "-c", str(scratch / "nginx.conf"), "-p", str(scratch)]),
        subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(scratch)], stdout=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    issuer = DevIssuer(scratch / "issuer", f"http://127.0.0.1:{jwks_port}")
    # The gateway fetches the issuer's JWKS from a small server of its own.
    serve_jwks = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path;"
        "from aiohttp import web; from gateway.demo import DevIssuer;"
        "i = DevIssuer(Path(sys.argv[2]), sys.argv[3]);"
        "web.run_app(i.app(), host='127.0.0.1', port=int(sys.argv[4]), print=None)"
    )
    command = [sys.executable, "-c", serve_jwks, str(ROOT), str(scratch / "issuer")]
    processes.append(subprocess.Popen([*command, issuer.issuer, str(jwks_port)]))
    token = issuer.token("alice", groups=["warehouse"], amr=["pwd", "otp"], ttl=3600)
    ports = {"(b) full, no shared state": free_port(), "(s) full + shared state": free_port()}
    for port, shared in zip(ports.values(), (False, True), strict=True):
        config = scratch / f"{port}.yaml"
        config.write_text(
            f"listeners: [{{address: 127.0.0.1, port: {port}}}]\n"
            f"policy: {{source: {ROOT / 'policies'}, watch: false}}\n"
            f"routes: [{{app: wms, upstream: 'http://127.0.0.1:{backend}', path_prefix: /wms/}}]\n"
            f"issuers: [{{issuer: '{issuer.issuer}', audiences: [portcullis], "
            f"jwks_url: '{issuer.issuer}/jwks.json'}}]\n"
            f"decision_log: {{path: {scratch / f'{port}.log'}}}\n"
            + (
                f"shared_state: {{redis: {{url: 'redis://127.0.0.1:{redis_port}/0'}}, "
                # A limit the bench never reaches, so the rate-limit work is measured too.
                "rate_limits: {identity: {requests: 100000000, window: 60}}}\n"
                if shared
                else ""
            )
        )
        processes.append(start_gateway(config))
    try:
        urls = {name: f"http://127.0.0.1:{port}/wms/stock" for name, port in ports.items()}
        for url in urls.values():
            wait_http(url)
        time.sleep(1.5)
        results = {}
        for name, url in urls.items():
            wrk(url, 2, args.connections, token)  # warm-up
            results[name] = wrk(url, args.duration, args.connections, token)
        print(f"wrk -t1 -c{args.connections} -d{args.duration}s, one gateway process each")
        print(f"{'target':<30}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
        for name, r in results.items():
            print(f"{name:<30}{r['rps']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['bad']:>9.0f}")
        b, s = (results[name]["rps"] for name in urls)
        print(f"(s)/(b) = {s / b:.2f}  (target >= 0.75: under 25% throughput cost)")
        latencies = {
            name: asyncio.run(fixed_rate(url, args.rate, 5, token)) for name, url in urls.items()
        }
        print(f"\nfixed {args.rate} req/s for 5 s, open loop:")
        for name, values in latencies.items():
            print(f"  {name:<28} p50 {p(values, 0.5):.2f} ms  p99 {p(values, 0.99):.2f} ms")
        without, with_shared = latencies.values()
        added = p(with_shared, 0.5) - p(without, 0.5)
        print(f"  added at p50: {added:.2f} ms  (target < 1 ms)")
    finally:
        stop_processes(processes)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
