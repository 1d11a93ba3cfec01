"""Run the gateway: listeners (HTTP, TLS, mTLS), worker processes, graceful shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import signal
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.config import GatewayConfig, Listener
from gateway.server import build_app

log = logging.getLogger("portcullis.gateway")
SHUTDOWN_GRACE_SECONDS = 15.0


def ssl_context(listener: Listener) -> ssl.SSLContext | None:
    tls = listener.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    if tls.client_ca is not None:
        context.load_verify_locations(tls.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return context


async def serve(
    config: GatewayConfig,
    *,
    reuse_port: bool = False,
    ready: Callable[[list[str]], Awaitable[None] | None] | None = None,
    instance_id: str | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, finish in-flight requests
    (up to a grace period) and flush the decision log."""
    app = build_app(config, instance_id=instance_id)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS
    )
    await runner.setup()
    urls = []
    for listener in config.listeners:
        site = web.TCPSite(
            runner,
            listener.address,
            listener.port,
            ssl_context=ssl_context(listener),
            reuse_port=reuse_port or None,
        )
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        for sock in sockets:
            host, port = sock.getsockname()[:2]
            scheme = "https" if listener.tls else "http"
            urls.append(f"{scheme}://{host}:{port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if ready is not None:
        outcome = ready(urls)
        if outcome is not None:
            await outcome
    log.info("gateway listening on %s", ", ".join(urls))
    try:
        await stop.wait()
    finally:
        log.info("shutting down: draining connections")
        await runner.cleanup()


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )


def _worker(config: GatewayConfig, index: int, log_level: str) -> None:
    configure_logging(log_level)
    install_uvloop()
    log_path = config.decision_log.path
    if log_path is not None:
        # One hash chain per process: each worker writes its own file.
        per_worker = log_path.with_name(f"{log_path.stem}.worker-{index}{log_path.suffix}")
        config = dataclasses.replace(
            config, decision_log=dataclasses.replace(config.decision_log, path=per_worker)
        )
    asyncio.run(serve(config, reuse_port=True, instance_id=f"worker-{index}"))


def run(config: GatewayConfig, workers: int = 1, log_level: str = "info") -> None:
    """One process per worker, all on the same ports with SO_REUSEPORT."""
    install_uvloop()
    if workers <= 1:
        asyncio.run(serve(config))
        return
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, args=(config, i, log_level)) for i in range(workers)
    ]
    for process in processes:
        process.start()

    def forward(signum: int, frame: object) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                process.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in processes:
        process.join()


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
