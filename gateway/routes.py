"""The route table: which app a request is for (host and path prefix), and its
agreement with the policy's catalogue, checked at start and on every hot reload.
(gateway/router.py is aiohttp's routing of the gateway's own pages.)"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.config import Route
from gateway.policy.reload import PolicyHolder, catalogue_apps
from gateway.screening.headers import host_name

if TYPE_CHECKING:
    from policy_engine import PolicyEngine

log = logging.getLogger("portcullis.gateway")


class RouteTable:
    """The routes in use: the config's, or the catalogue's apps when it has none."""

    def __init__(self, configured: Sequence[Route], policy: PolicyHolder) -> None:
        self.configured = tuple(configured)
        self.policy = policy
        self.routes: list[Route] = list(configured)

    def settle(self, *, auth: bool) -> None:
        """At start, once the policy has loaded: the catalogue's routes if the config
        names none, checked against the catalogue (and every reload vetted by it)."""
        if not self.routes:
            self.routes = self._from_catalogue()
        if auth:
            self._check()
            self.policy.vet = self.disagrees
        # Longest prefix first, host-specific before host-agnostic.
        self.routes.sort(key=lambda r: (r.host is None, -len(r.path_prefix)))

    def _check(self) -> None:
        """Refuse routes the live policy's catalogue disagrees with; warn of routes
        to apps it doesn't have (every request to them is denied)."""
        problem = self.disagrees(self.policy.engine)
        if problem is not None:
            raise RuntimeError(problem)
        apps = catalogue_apps(self.policy.engine)
        for where, route in self._named():
            if apps is not None and route.app not in apps:
                log.warning(
                    "%s: app %s is not in the policy's catalogue: every request to %s "
                    "is denied (no app in the catalogue)", where, route.app, route.path_prefix,
                )  # fmt: skip

    def disagrees(self, engine: PolicyEngine | None) -> str | None:
        """Why ``engine``'s catalogue can't hold these routes, or None.

        The catalogue's path rules (pos: `/pos/refunds/` needs a hardware key) match
        the request's absolute path, so a route that mounts an app outside the
        catalogue's path_prefix for it would serve it with none of them; and a
        reload that drops an app a route uses would make that route a 404.
        Runs on a hot reload's thread too: it reads only what start settled and
        the live catalogue's data (plain Python, loaded from the policy's files)."""
        apps = catalogue_apps(engine)
        if apps is None:
            return None
        # On a reload, the catalogue being replaced (reload holds its lock while this
        # runs): an app it has and a route uses must stay. One already missing at
        # start was warned of then (_check).
        live = self.policy.engine
        before = catalogue_apps(live) if live is not engine else None
        for where, route in self._named():
            app = apps.get(route.app)
            if app is None and before is not None and route.app in before:
                return (
                    f"{where}: app {route.app} is not in the policy's catalogue any more: "
                    f"every request to {route.path_prefix} would be denied (404); keep "
                    f"{route.app} in the catalogue, or remove the route and restart"
                )
            prefix = app.get("path_prefix") if isinstance(app, dict) else None
            if not isinstance(prefix, str):
                continue
            # Rules compare lower-cased paths (policies/gateway/decision.rego).
            inside = "/".join(["", *(part for part in prefix.lower().split("/") if part), ""])
            if not route.path_prefix.lower().startswith(inside):
                return (
                    f"{where}: app {route.app} is mounted at path_prefix {route.path_prefix}, "
                    f"but the policy's catalogue has it at {prefix}: its path rules match "
                    f"paths under {prefix} and would never apply to this route; use "
                    f"path_prefix {prefix} (or one under it)"
                )
        return None

    def _named(self) -> list[tuple[str, Route]]:
        """The routes in use, each with the name a message gives it."""
        names = {route: f"routes[{index}]" for index, route in enumerate(self.configured)}
        return [
            (names.get(route, f"the catalogue's route for {route.app} (taken at start)"), route)
            for route in self.routes
        ]

    def _from_catalogue(self) -> list[Route]:
        routes = []
        for app_id, app in sorted(self.policy.catalogue().items()):
            if isinstance(app, dict) and app.get("upstream") and app.get("path_prefix"):
                routes.append(
                    Route(app_id, str(app["upstream"]).rstrip("/"), str(app["path_prefix"]))
                )
        return routes

    def match(self, host: str, path: str) -> Route | None:
        host = host_name(host)
        for route in self.routes:
            if route.host is not None and route.host != host:
                continue
            if path.startswith(route.path_prefix):
                return route
        return None
