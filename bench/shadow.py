"""Shadow mode's cost: the same requests through a gateway without and with a shadow policy.

Each round starts a whole stack (tests/gateway_stack.py: dev issuer, demo
backends, gateway, all real servers on loopback), sends --requests requests
(--concurrency at a time, mixed identities) and reports throughput and
latency; rounds alternate plain / shadow so machine noise hits both alike.
The shadow is the shipped policy with refunds at max_age 300, so it really
diverges (and logs) on some requests. The client shares the machine: compare
the two columns, not the absolute numbers.

    .venv/bin/python bench/shadow.py [--requests 2000] [--concurrency 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def one_round(
    directory: Path, shadow: Path | None, requests: int, concurrency: int
) -> dict[str, float]:
    from aiohttp.test_utils import TestServer

    from tests.decision_traffic import CALLERS, PATHS
    from tests.gateway_stack import start_stack

    servers: list[TestServer] = []

    async def factory(app: Any, **options: Any) -> TestServer:
        server = TestServer(app, **options)
        await server.start_server()
        servers.append(server)
        return server

    options = {"shadow": str(shadow)} if shadow else None
    try:
        async with start_stack(factory, directory, policy_options=options) as stack:
            if shadow is not None:
                while not (stack.gateway.shadow and stack.gateway.shadow.ready):
                    await asyncio.sleep(0.05)
            tokens = [stack.token(c.name, groups=list(c.groups), amr=list(c.amr),
                                  auth_age=c.auth_age) for c in CALLERS]  # fmt: skip
            times: list[float] = []
            gate = asyncio.Semaphore(concurrency)

            async def send(n: int) -> None:
                method, path = PATHS[n % len(PATHS)]
                async with gate:
                    started = time.perf_counter()
                    response = await stack.get(path.format(n=n), tokens[n % len(tokens)],
                                               method=method)  # fmt: skip
                    await response.read()
                    times.append(time.perf_counter() - started)

            await asyncio.gather(*(send(n) for n in range(200)))  # warm up
            times.clear()
            started = time.perf_counter()
            await asyncio.gather(*(send(n) for n in range(requests)))
            elapsed = time.perf_counter() - started
            text = stack.gateway.metrics.render().decode()
    finally:
        for server in reversed(servers):
            await server.close()
    diverged = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("portcullis_shadow_divergences_total{"))  # fmt: skip
    times.sort()
    return {
        "rps": requests / elapsed,
        "p50_ms": statistics.median(times) * 1000,
        "p99_ms": times[int(len(times) * 0.99) - 1] * 1000,
        "divergences": diverged,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        from tests.decision_traffic import refunds_candidate

        candidate = refunds_candidate(base)
        results: dict[str, list[dict[str, float]]] = {"plain": [], "shadow": []}
        for n in range(args.rounds):
            for name, shadow in (("plain", None), ("shadow", candidate)):
                result = asyncio.run(one_round(base / f"{name}-{n}", shadow, args.requests,
                                               args.concurrency))  # fmt: skip
                results[name].append(result)
                print(f"round {n} {name:>6}: {result['rps']:7.0f} req/s, p50 "
                      f"{result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                      f"divergences {result['divergences']:.0f}")  # fmt: skip
        best = {name: max(runs, key=lambda r: r["rps"]) for name, runs in results.items()}
        p50 = {name: statistics.median(r["p50_ms"] for r in runs) for name, runs in results.items()}
        ratio = best["shadow"]["rps"] / best["plain"]["rps"]
        print(f"best throughput: shadow/plain = {ratio:.2f}; median p50: plain "
              f"{p50['plain']:.2f} ms, shadow {p50['shadow']:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
