"""An OPA server's REST Data API over OPA's own Go evaluator, for the OPA backend's tests.

A real OPA server can't be installed here (no registry this project reaches
ships it), but OPA's own evaluator can (opa-golib-python-bindings, the test
oracle). So this serves OPA's documented `POST /v1/data/{path}` contract with
it: request `{"input": ...}`, answer `{"result": value}`, `{}` when the
document is undefined, 400 `{"code", "message"}` for a bad request and 500 for
an evaluation error. The wire format is a stand-in; the semantics are OPA's.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp import web

from policy_engine import EvaluationError, load_policy_set
from policy_engine.opa_golib import UNDEFINED, GoOpaEngine


def opa_standin(
    policy_dir: Path, *, delay: float = 0.0, fail_status: int | None = None
) -> web.Application:
    engine = GoOpaEngine(load_policy_set(policy_dir))

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
            value = engine.value(ref, body.get("input"))
        except EvaluationError as error:
            return web.json_response({"code": "internal_error", "message": str(error)}, status=500)
        return web.json_response({} if value is UNDEFINED else {"result": value})

    app = web.Application()
    app.router.add_post("/v1/data/{path:.*}", data)
    return app
