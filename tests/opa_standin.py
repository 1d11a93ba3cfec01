"""A stand-in for an OPA server's REST Data API, for the OPA backend's tests.

A real OPA can't be installed here (no registry this project reaches ships
it), so this serves OPA's documented `POST /v1/data/{path}` contract:
request `{"input": ...}`, answer `{"result": value}`, or `{}` when the
document is undefined, 400 with `{"code", "message"}` for a bad request.
It evaluates with the regorus interpreter, so it is only a wire-format
stand-in, not evidence about OPA's own evaluation.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp import web

from policy_engine import EmbeddedEngine, UndefinedPath, UndefinedResult, load_policy_set


def opa_standin(
    policy_dir: Path, *, delay: float = 0.0, fail_status: int | None = None
) -> web.Application:
    engine = EmbeddedEngine(load_policy_set(policy_dir))

    async def data(request: web.Request) -> web.Response:
        if delay:
            await asyncio.sleep(delay)
        if fail_status is not None:
            return web.json_response(
                {"code": "internal_error", "message": "boom"}, status=fail_status
            )
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response(
                {"code": "invalid_parameter", "message": "bad JSON"}, status=400
            )
        ref = "data." + request.match_info["path"].strip("/").replace("/", ".")
        try:
            value = engine.evaluate_sync(ref, body.get("input"))
        except (UndefinedPath, UndefinedResult):
            return web.json_response({})
        return web.json_response({"result": value})

    app = web.Application()
    app.router.add_post("/v1/data/{path:.*}", data)
    return app
