"""Prometheus metrics of one gateway process."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
DECISION_BUCKETS = (0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25)


class Metrics:
    """One registry per gateway, so tests and workers don't share global state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "portcullis_requests", "Requests by app and status", ["app", "status"], registry=r
        )
        self.decisions = Counter(
            "portcullis_decisions", "Decisions by app and result", ["app", "result"], registry=r
        )
        self.request_seconds = Histogram(
            "portcullis_request_duration_seconds", "Whole request, gateway in to response out",
            ["app"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.decision_seconds = Histogram(
            "portcullis_decision_duration_seconds", "Policy evaluation alone",
            buckets=DECISION_BUCKETS, registry=r,
        )  # fmt: skip
        self.jwks_refreshes = Counter(
            "portcullis_jwks_refreshes", "JWKS fetches by issuer and result", ["issuer", "result"],
            registry=r,
        )  # fmt: skip
        self.policy_reloads = Counter(
            "portcullis_policy_reloads", "Policy reloads by result", ["result"], registry=r
        )
        self.policy_revision = Gauge(
            "portcullis_policy_info", "The loaded policy revision", ["revision"], registry=r
        )
        self.decision_log = Gauge(
            "portcullis_decision_log", "Decision log counters", ["counter"], registry=r
        )
        # Refusals and cuts of the `limits` (README "Limits"): who is starving whom.
        self.rate_limited = Counter(
            "portcullis_rate_limited", "429s past a per-identity concurrency limit, by app and "
            "kind (request or websocket)", ["app", "kind"], registry=r,
        )  # fmt: skip
        self.body_timeouts = Counter(
            "portcullis_request_body_timeouts", "Request bodies the client stopped sending",
            ["app"], registry=r,
        )  # fmt: skip
        self.websocket_closes = Counter(
            "portcullis_websocket_closes", "WebSockets the gateway closed, by app and reason "
            "(idle, expired, revoked)", ["app", "reason"], registry=r,
        )  # fmt: skip
        self.connections_cut = Counter(
            "portcullis_connections_cut", "Client connections closed by a limit, by reason",
            ["reason"], registry=r,
        )  # fmt: skip
        # Shadow mode (gateway/policy/shadow.py): a candidate policy decided beside the live one.
        self.shadow_divergences = Counter(
            "portcullis_shadow_divergences", "Decisions where the shadow policy differs from the "
            "live one, by app and kind (allow-to-deny, deny-to-allow, step-up, reasons, error)",
            ["app", "kind"], registry=r,
        )  # fmt: skip
        self.shadow_decisions = Counter(
            "portcullis_shadow_decisions", "Live decisions handed to the shadow policy: sent, "
            "dropped (its backlog was full) or unavailable (not loaded, restarting)",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.shadow_reloads = Counter(
            "portcullis_shadow_reloads", "Shadow policy loads by result", ["result"], registry=r
        )
        self.shadow_revision = Gauge(
            "portcullis_shadow_policy_info", "The shadow policy revision", ["revision"], registry=r
        )
        self.shadow_restarts = Counter(
            "portcullis_shadow_restarts", "Times the shadow process exited and was restarted",
            registry=r,
        )  # fmt: skip
        self.memo_hits = Counter(
            "portcullis_decision_memo_hits", "Allows reused from the decision memo, not "
            "evaluated again (gateway/policy/memo.py)", registry=r,
        )  # fmt: skip
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._decision_children: dict[tuple[str, str], Any] = {}

    # labels() costs a lock and a tuple hash per call: keep the children.
    def request_done(self, app: str, status: int, seconds: float) -> None:
        key = (app, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(app, str(status)),
                self.request_seconds.labels(app),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def decided(self, app: str, result: str) -> None:
        key = (app, result)
        child = self._decision_children.get(key)
        if child is None:
            child = self._decision_children[key] = self.decisions.labels(app, result)
        child.inc()

    def connection_cut(self, reason: str) -> None:
        self.connections_cut.labels(reason).inc()

    def jwks_refreshed(self, issuer: str, ok: bool) -> None:
        self.jwks_refreshes.labels(issuer, "ok" if ok else "error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
