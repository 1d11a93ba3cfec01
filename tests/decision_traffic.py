"""Mixed traffic for a running gateway stack: store staff, warehouse and analysts
with different MFA and sign-in ages, plus requests the gateway refuses itself.

The replay and shadow tests drive a real gateway with it, so the decision log
they read was written by the gateway, not by hand."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.gateway_stack import Stack


@dataclass(frozen=True)
class Caller:
    """One kind of employee: who they are and how they signed in."""

    name: str
    groups: tuple[str, ...]
    amr: tuple[str, ...]
    auth_age: int  # seconds since sign-in when the request is made


# The refund callers are what the worked example is about: phishing-resistant
# MFA signed in 2, 10 and 20 minutes ago, against max_age 900 and then 300.
CALLERS = (
    Caller("store-017-fresh", ("store", "store-017"), ("hwk",), 120),
    Caller("store-017-ten-min", ("store", "store-017"), ("hwk",), 600),
    Caller("store-042-ten-min", ("store", "store-042"), ("fido",), 610),
    Caller("store-042-stale", ("store", "store-042"), ("fido",), 1200),
    Caller("store-099-otp", ("store", "store-099"), ("otp",), 60),
    Caller("picker", ("warehouse",), ("otp",), 300),
    Caller("wms-admin", ("warehouse", "wms-admin"), ("otp",), 300),
    Caller("analyst-no-mfa", ("analyst",), ("pwd",), 30),
)

PATHS = (
    ("GET", "/pos/refunds/{n}"),
    ("POST", "/pos/refunds/"),
    ("GET", "/pos/sales/{n}"),
    ("GET", "/wms/orders/{n}"),
    ("GET", "/wms/admin/users"),
    ("GET", "/analytics/dashboards/{n}"),
    ("POST", "/analytics/dashboards/{n}"),
)


@dataclass
class Sent:
    request_id: str
    caller: str | None  # None: no token, or a refused one
    method: str
    path: str
    status: int
    body: bytes


async def drive(stack: Stack, requests: int = 300, *, concurrency: int = 16) -> list[Sent]:
    """Send ``requests`` requests (each caller on each path in turn, an anonymous
    one and gateway refusals mixed in); returns what each got back."""
    tokens = {
        caller.name: stack.token(
            caller.name, groups=list(caller.groups), amr=list(caller.amr), auth_age=caller.auth_age
        )
        for caller in CALLERS
    }
    plan: list[tuple[str | None, str, str, str | None]] = []
    combos = itertools.cycle(itertools.product(CALLERS, PATHS))
    for n in range(requests):
        if n % 25 == 0:  # no route: refused by the gateway, not the policy
            plan.append((None, "GET", f"/nowhere/{n}", None))
        elif n % 25 == 1:  # a forged token: refused before any policy
            plan.append((None, "GET", "/pos/sales/1", "not.a.jwt"))
        elif n % 25 == 2:  # no token at all: the policy says 401
            plan.append((None, "GET", "/pos/sales/2", None))
        else:
            caller, (method, path) = next(combos)
            plan.append((caller.name, method, path.format(n=n), tokens[caller.name]))
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int, item: tuple[str | None, str, str, str | None]) -> Sent:
        caller, method, path, token = item
        request_id = f"traffic-{n}"
        async with gate:
            response = await stack.get(
                path, token, method=method, headers={"X-Request-Id": request_id}
            )
            body = await response.read()
        return Sent(request_id, caller, method, path, response.status, body)

    return list(await asyncio.gather(*(one(n, item) for n, item in enumerate(plan))))


def by_request_id(sent: list[Sent]) -> dict[str, Sent]:
    return {item.request_id: item for item in sent}


def summary(sent: list[Sent]) -> dict[Any, int]:
    counts: dict[Any, int] = {}
    for item in sent:
        counts[item.status] = counts.get(item.status, 0) + 1
    return counts


@dataclass
class Recorded:
    """A finished gateway run: its decision log, the key that signed it, what was sent."""

    directory: Path
    log: Path
    key: Path
    sent: list[Sent]
    metrics: str


async def record_traffic(
    directory: Path, requests: int = 300, *, before: Any = None, **overrides: Any
) -> Recorded:
    """Run a whole stack (outside pytest's fixtures, e.g. for a module-scoped log),
    drive ``requests`` requests through it, stop it (the log is sealed; the
    metrics are read after).
    ``before(stack)`` is awaited before the traffic (e.g. to wait for shadow mode)."""
    from aiohttp.test_utils import TestServer

    from tests.gateway_stack import start_stack

    servers: list[TestServer] = []

    async def factory(app: Any, **options: Any) -> TestServer:
        server = TestServer(app, **options)
        await server.start_server()
        servers.append(server)
        return server

    try:
        async with start_stack(factory, directory, **overrides) as stack:
            if before is not None:
                await before(stack)
            sent = await drive(stack, requests)
    finally:
        for server in reversed(servers):
            await server.close()
    # Read once the gateway has stopped: its shadow process answers everything it
    # was sent before it exits, so the counters are final (under load it lags).
    metrics = stack.gateway.metrics.render().decode()
    return Recorded(directory, directory / "decisions.log", directory / "assertion.pem", sent,
                    metrics)  # fmt: skip


def refunds_candidate(directory: Path, max_age: int = 300) -> Path:
    """A copy of the shipped policy set whose /pos/refunds/ override asks for a
    sign-in within ``max_age`` s (the README's worked example)."""
    import shutil

    import yaml

    from tests.conftest import POLICIES

    candidate = directory / "candidate"
    shutil.copytree(POLICIES, candidate)
    catalogue = candidate / "data/apps.yaml"
    data = yaml.safe_load(catalogue.read_text())
    paths = data["portcullis"]["catalogue"]["apps"]["pos"]["paths"]
    refunds = next(p for p in paths if p["prefix"] == "/pos/refunds/")
    assert refunds["mfa"]["max_age"] == 900, "the shipped refunds rule changed"
    refunds["mfa"]["max_age"] = max_age
    catalogue.write_text(yaml.safe_dump(data, sort_keys=False))
    return candidate
