"""The gateway's operations endpoints: health and readiness, the JWKS of its
assertions and, on the admin listener only, metrics and the decision log's head."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.admin_listener import refuse_pages

if TYPE_CHECKING:
    from gateway.server import Gateway


class Operations:
    """The endpoints of one gateway, answered from its live state."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    # The public listener answers only /healthz and /readyz, and says nothing an
    # attacker could use (no instance, revision, apps or issuer); the details are
    # on the admin listener (build_admin_app).

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self.gateway.policy.engine is not None
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def admin_healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "instance": self.gateway.instance_id})

    async def admin_readyz(self, request: web.Request) -> web.Response:
        engine, instance = self.gateway.policy.engine, self.gateway.instance_id
        if engine is None:
            body = {"ready": False, "reason": "no policy loaded", "instance": instance}
            return web.json_response(body, status=503)
        body = {"ready": True, "policy_revision": engine.revision, "instance": instance}
        return web.json_response(body)

    async def audit_head(self, request: web.Request) -> web.Response:
        """The decision log's latest signature, so a copy kept elsewhere can later
        prove that the file's tail (or its newest rotated file) was not cut off."""
        decision_log = self.gateway.decision_log
        head = decision_log.signed_head() if decision_log is not None else None
        # One answer a line: `curl .../audit/head >> heads.jsonl` keeps every head apart.
        if head is None:
            reason = "no decision log" if decision_log is None else "nothing signed yet"
            body = {"error": "no_head", "reason": reason}
            return web.json_response(body, status=404, dumps=_json_line)
        return web.json_response(head, dumps=_json_line)

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        decision_log, metrics = self.gateway.decision_log, self.gateway.metrics
        if decision_log is not None:
            for name, value in decision_log.stats.items():
                metrics.decision_log.labels(name).set(value)
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response(self.gateway.signer.jwks())


def _json_line(value: Any) -> str:
    return json.dumps(value) + "\n"


def build_admin_app(gateway: Gateway) -> web.Application:
    """The admin listener's app: operations endpoints of the gateway ``build_app``
    made (which owns its start and stop)."""
    operations = Operations(gateway)
    app = web.Application(middlewares=[refuse_pages])
    app.router.add_get("/healthz", operations.admin_healthz)
    app.router.add_get("/readyz", operations.admin_readyz)
    app.router.add_get("/metrics", operations.metrics_endpoint)
    app.router.add_get("/audit/head", operations.audit_head)
    if gateway.shared is not None:
        from gateway.shared.admin import add_admin_routes

        add_admin_routes(app, gateway.shared)
    return app
