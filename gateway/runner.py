"""Run the gateway: listeners (HTTP, TLS, mTLS), worker processes, graceful shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import multiprocessing
import signal
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway import heap, server_log
from gateway.assertion import load_or_create_key
from gateway.config import GatewayConfig, Listener
from gateway.limits import LimitedServer
from gateway.operations import build_admin_app
from gateway.screening.headers import MAX_FIELD_SIZE
from gateway.server import GATEWAY_KEY, build_app

log = logging.getLogger("portcullis.gateway")
SHUTDOWN_GRACE_SECONDS = 15.0


class GatewayRunner(web.AppRunner):
    """aiohttp's runner for the gateway app, with the connection `limits`: the
    keep-alive idle timeout, a header-read timeout (slowloris), a cap on unfinished
    header bytes and on connections per source address, and parser refusals logged."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        limits = app[GATEWAY_KEY].config.limits
        super().__init__(app, keepalive_timeout=limits.keepalive_timeout, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        gateway = self.app[GATEWAY_KEY]
        limits = gateway.config.limits
        return LimitedServer(
            server,
            header_timeout=limits.header_timeout,
            on_cut=gateway.metrics.connection_cut,
            on_bad_request=gateway.refuse_unparsed,
            connections_per_ip=limits.connections_per_ip,
            # Above the gateway's own cap (a logged 431 with the request's details),
            # with room for the request line: what aiohttp buffers stays bounded.
            pending_header_bytes=limits.max_request_header_bytes + MAX_FIELD_SIZE,
            transport_security=gateway.transport_security,
        )


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
    runner = GatewayRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS
    )
    await runner.setup()
    admin_runner = None
    try:
        urls = []
        for index, listener in enumerate(config.listeners):
            urls += await _start_site(runner, listener, reuse_port, f"listeners[{index}]")
        if config.admin_listener is not None:
            # Started after the public app, whose startup started the gateway it reports on.
            admin_runner = web.AppRunner(
                build_admin_app(app[GATEWAY_KEY]), handle_signals=False, access_log=None
            )
            await admin_runner.setup()
            admin_urls = await _start_site(
                admin_runner, config.admin_listener, reuse_port, "admin_listener"
            )
            log.info(
                "admin endpoints (/metrics, /readyz, /audit/head) on %s", ", ".join(admin_urls)
            )
    except BaseException:
        # A port that can't be bound stops the start, but the gateway has started
        # behind it: sign the decision log's end and close its clients, or the log
        # reads as a crashed run (`audit verify`: INCOMPLETE).
        await runner.cleanup()
        if admin_runner is not None:
            await admin_runner.cleanup()
        raise
    # Started: what lives now (modules, policy, pools) lives as long as the process.
    heap.freeze()
    app[GATEWAY_KEY].policy.on_swap = heap.freeze
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
        # Last: /metrics and /audit/head stay up while requests drain.
        if admin_runner is not None:
            await admin_runner.cleanup()


async def _start_site(
    runner: web.AppRunner, listener: Listener, reuse_port: bool, where: str
) -> list[str]:
    """Start listening on ``listener`` (the config's ``where``); returns the URLs it
    is bound to."""
    site = web.TCPSite(
        runner,
        listener.address,
        listener.port,
        ssl_context=ssl_context(listener),
        reuse_port=reuse_port or None,
    )
    try:
        await site.start()
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        raise OSError(
            f"{where}: {listener.address}:{listener.port} is already in use (another "
            "gateway, or the demo?); stop it or give this listener another port"
        ) from None
    sockets = getattr(site._server, "sockets", None) or []
    scheme = "https" if listener.tls else "http"
    return [f"{scheme}://{sock.getsockname()[0]}:{sock.getsockname()[1]}" for sock in sockets]


def configure_logging(level: str = "info") -> None:
    server_log.configure(getattr(logging, level.upper(), logging.INFO))


def _worker(config: GatewayConfig, index: int, log_level: str) -> None:
    configure_logging(log_level)
    install_uvloop()
    log_path = config.decision_log.path
    if log_path is not None:
        # One hash chain per process: each worker writes its own file, and a
        # name of its own in its signed heads.
        per_worker = log_path.with_name(f"{log_path.stem}.worker-{index}{log_path.suffix}")
        name = config.decision_log.name
        config = dataclasses.replace(
            config,
            decision_log=dataclasses.replace(
                config.decision_log,
                path=per_worker,
                name=None if name is None else f"{name}/worker-{index}",
            ),
        )
    asyncio.run(serve(config, reuse_port=True, instance_id=f"worker-{index}"))


def run(config: GatewayConfig, workers: int = 1, log_level: str = "info") -> None:
    """One process per worker, all on the same ports with SO_REUSEPORT."""
    install_uvloop()
    if workers <= 1:
        asyncio.run(serve(config))
        return
    if config.assertion.key_file is not None:
        # Made here if missing: workers each making it would race, and sign with different keys.
        load_or_create_key(config.assertion.key_file)
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
