"""The OPA-server backend, over HTTP on loopback, against an OPA stand-in.

The stand-in (tests/opa_standin.py) speaks OPA's documented Data API and
evaluates with OPA's own Go evaluator (the test oracle); a real OPA server
can't be installed on these machines.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from policy_engine import (
    EmbeddedEngine,
    EvaluationError,
    EvaluationTimeout,
    OpaServerEngine,
    UndefinedResult,
    load_policy_set,
)
from tests.conftest import FIXTURES, POLICIES
from tests.opa_standin import opa_standin

DECISION = "data.portcullis.gateway.decision"
# For a test that expects the stand-in's answer. Its first query of a path compiles
# the policy (0.16 s here), on the event loop the client waits on: with the default
# 0.5 s a loaded machine turned that into "gave no answer in 500 ms".
ANSWER_TIMEOUT = 5.0
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def url(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def refund_input() -> Any:
    return json.loads((FIXTURES / "inputs/pos_refund_otp.json").read_text())


async def test_opa_backend_gives_the_same_decision_as_the_embedded_engine(
    aiohttp_server: ServerFactory, refund_input: Any
) -> None:
    server = await aiohttp_server(opa_standin(POLICIES))
    opa = OpaServerEngine(url(server), timeout=ANSWER_TIMEOUT)
    embedded = EmbeddedEngine(load_policy_set(POLICIES))
    try:
        for document in (refund_input, {**refund_input, "route": {"app": "wms"}}, {}):
            assert await opa.evaluate(DECISION, document) == embedded.evaluate_sync(
                DECISION, document
            )
    finally:
        await opa.close()


async def test_policy_error_on_opa_is_an_evaluation_error(
    aiohttp_server: ServerFactory, tmp_path: Any
) -> None:
    (tmp_path / "p.rego").write_text(
        "package portcullis.gateway\nimport rego.v1\n"
        'decision := {"allow": true, "n": 10 - input.n}\n'
    )
    server = await aiohttp_server(opa_standin(tmp_path))
    opa = OpaServerEngine(url(server), timeout=ANSWER_TIMEOUT)
    try:
        with pytest.raises(EvaluationError, match="500"):
            await opa.evaluate(DECISION, {"n": "ten"})
        assert (await opa.evaluate(DECISION, {"n": 3}))["n"] == 7
    finally:
        await opa.close()


async def test_undefined_document_is_undefined_result(aiohttp_server: ServerFactory) -> None:
    server = await aiohttp_server(opa_standin(POLICIES))
    opa = OpaServerEngine(url(server), timeout=ANSWER_TIMEOUT)
    try:
        with pytest.raises(UndefinedResult):
            await opa.evaluate("data.portcullis.gateway.app", {"route": {"app": "payroll"}})
    finally:
        await opa.close()


async def test_server_error_is_an_evaluation_error(aiohttp_server: ServerFactory) -> None:
    server = await aiohttp_server(opa_standin(POLICIES, fail_status=500))
    opa = OpaServerEngine(url(server), timeout=ANSWER_TIMEOUT)
    try:
        with pytest.raises(EvaluationError, match="answered 500"):
            await opa.evaluate(DECISION, {})
    finally:
        await opa.close()


async def test_slow_server_times_out(aiohttp_server: ServerFactory) -> None:
    server = await aiohttp_server(opa_standin(POLICIES, delay=1.0))
    opa = OpaServerEngine(url(server), timeout=0.1)
    try:
        with pytest.raises(EvaluationTimeout, match="no answer in 100 ms"):
            await opa.evaluate(DECISION, {})
    finally:
        await opa.close()


async def test_unreachable_server_is_an_evaluation_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    opa = OpaServerEngine(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(EvaluationError, match="unreachable"):
            await opa.evaluate(DECISION, {})
    finally:
        await opa.close()


def test_opa_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="must be http"):
        OpaServerEngine("ftp://opa:8181")


async def test_a_reload_does_not_fail_a_decision_in_flight_on_the_opa_server(
    aiohttp_server: ServerFactory, tmp_path: Any
) -> None:
    """A SIGHUP reload of an OPA-server policy builds a new client and closes the
    old one: a request whose decision was still on the wire lost its connection
    and was denied ("policy evaluation failed"), where the README promises that
    requests in flight keep the engine they started with."""
    import asyncio

    from tests.gateway_stack import start_stack

    opa = await aiohttp_server(opa_standin(POLICIES, delay=0.3))
    async with start_stack(
        aiohttp_server, tmp_path, policy_options={"watch": False, "timeout_ms": 2000}
    ) as running:
        running.gateway.policy.source = url(opa)
        assert await running.gateway.policy.reload("start on OPA")
        token = running.token("alice", groups=["warehouse"], amr=["pwd", "otp"])
        request = asyncio.ensure_future(running.get("/wms/stock", token))
        await asyncio.sleep(0.1)  # the decision is on its way to OPA
        assert await running.gateway.policy.reload("SIGHUP")
        response = await request
        assert response.status == 200, await response.text()
