"""``decision_log.durability``: which responses wait until their event is on disk.

In ``sync`` a request's response (and, for an allow, the forwarding itself)
waits until its decision event is written and fsync'd by the log's writer,
which fsyncs once for every event recorded meanwhile (group commit). An event
not durable within ``durability_timeout`` fails the request closed: 503, and an
allowed request is not forwarded; a refusal event
(``gateway.decision_log_unavailable``, labelled with the decision it overrides)
is then recorded too, so the log, once it can be written, says what the client
got and not only what the policy decided. The default (no ``durability`` key)
is sync for routes of apps the catalogue classifies ``pci`` and async for the
rest (with the OPA-server backend the gateway can't read the catalogue: sync for
all).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from aiohttp import web

if TYPE_CHECKING:
    from gateway.audit.writer import DecisionLog
    from gateway.policy.reload import PolicyHolder

log = logging.getLogger("portcullis.gateway")
SYNC_CLASSIFICATIONS = frozenset({"pci"})


class Pending(NamedTuple):
    """The current request's latest event that must be durable before it is answered."""

    ticket: int
    decision_id: str
    document: dict[str, Any]  # the input logged with it
    route: Any  # gateway.server.Route | None


# Each request runs in its own task or after the previous one on its connection,
# and the value is reset once waited for.
_PENDING: contextvars.ContextVar[Pending | None] = contextvars.ContextVar(
    "decision_log_pending", default=None
)

# What records the refusal of a request whose event wasn't durable in time:
# (the pending event, the reason), called on the event loop.
Refuse = Callable[[Pending, str], None]


class Durability:
    def __init__(
        self,
        log: DecisionLog,
        mode: str | None,
        timeout: float,
        policy: PolicyHolder,
        refuse: Refuse,
    ) -> None:
        self.log = log
        self.everything = mode == "sync"
        self.timeout = timeout
        self.policy = policy
        self.refuse = refuse
        self._engine: object = None
        self._sync_apps: frozenset[str] = frozenset()

    @classmethod
    def configured(
        cls,
        log: DecisionLog | None,
        mode: str | None,
        timeout: float,
        policy: PolicyHolder,
        refuse: Refuse,
    ) -> Durability | None:
        """None when no response ever waits (async, or no log): the request path skips it."""
        if log is None or mode == "async":
            return None
        return cls(log, mode, timeout, policy, refuse)

    def note(self, pending: Pending, app: str) -> None:
        """An event was recorded for this request; remember it if the request must wait."""
        if self.everything or self._is_sync_app(app):
            _PENDING.set(pending)

    async def wait(self) -> bool:
        """Wait for this request's event, if any; False if it isn't durable in time
        (the request is then failed closed, and its refusal recorded)."""
        pending = _PENDING.get()
        if pending is None:
            return True
        _PENDING.set(None)
        if await self.log.durable(pending.ticket, self.timeout):
            return True
        log.error(
            "decision log %s: event not on disk after %.1f s; request failed closed (503)",
            self.log.path,
            self.timeout,
        )
        self.refuse(
            pending,
            f"decision {pending.decision_id} was not on disk within {self.timeout:g} s: "
            "answered 503, not carried out",
        )
        return False

    async def hold(self, response: web.StreamResponse) -> web.StreamResponse:
        """The response, once its event is durable; else a 503 in its place. A
        response already sent (a WebSocket, after its rechecks) waited for its
        decision before it was; its later events have nothing left to hold."""
        if response.prepared:
            _PENDING.set(None)
            return response
        if await self.wait():
            return response
        return web.json_response(
            {"error": "decision_log_unavailable", "reason": "the decision could not be logged"},
            status=503,
        )

    def _is_sync_app(self, app: str) -> bool:
        engine = self.policy.engine
        if engine is not self._engine:  # the catalogue changes with a policy reload
            self._engine = engine
            if self.policy.is_remote:
                self.everything = True
            catalogue = self.policy.catalogue()
            self._sync_apps = frozenset(
                name
                for name, spec in catalogue.items()
                if isinstance(spec, dict) and spec.get("classification") in SYNC_CLASSIFICATIONS
            )
        return self.everything or app in self._sync_apps
