"""Routing runs on the event loop before any of the gateway's checks: a path that
costs it much more than its length stalls every other request of the process.
aiohttp's own router looked up every prefix of the path, each cut and hashed
anew: an 8 KiB path of 4,000 segments took about 140 times the CPU of an 8 KiB
path of one segment (4.4 ms), and thirty such requests in flight held an
ordinary one up for 200-330 ms."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.config import GatewayConfig
from gateway.server import build_app

# What the parser lets through (8 KiB request targets), as many segments as fit.
SEGMENTS = "/wms/" + "a/" * 4090
ONE_SEGMENT = "/wms/" + "a" * len("a/" * 4090)


async def routing_cpu(router: web.UrlDispatcher, path: str, rounds: int = 20) -> float:
    request = make_mocked_request("GET", path)
    started = time.thread_time()
    for _ in range(rounds):
        await router.resolve(request)
    return time.thread_time() - started


async def test_attack_a_path_of_many_segments_costs_routing_what_its_length_does(
    tmp_path: Path,
) -> None:
    app = build_app(GatewayConfig(auth=False, base_dir=tmp_path))
    app.router.freeze()
    ratios = []
    for _ in range(5):  # interleaved, so a busy machine slows both alike
        many = await routing_cpu(app.router, SEGMENTS)
        ratios.append(many / await routing_cpu(app.router, ONE_SEGMENT))
    assert statistics.median(ratios) < 3, ratios
    # ...and it still routes as before: a gateway page by its path, the rest proxied.
    for path, canonical in [("/healthz", "/healthz"), (SEGMENTS, "/{tail}"), ("/wms/", "/{tail}")]:
        match_info = await app.router.resolve(make_mocked_request("GET", path))
        assert match_info.route.resource is not None
        assert match_info.route.resource.canonical == canonical, path
