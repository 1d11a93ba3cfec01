"""Prometheus metrics of one gateway process."""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
DECISION_BUCKETS = (0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25)


class LoopCounter:
    """A counter updated on every request, kept as plain numbers and turned into
    samples (``<name>_total``, ``<name>_created``, as prometheus_client's Counter
    writes them) when /metrics is rendered. Updated on the event loop only: no
    lock, where prometheus_client's Counter takes one per increment (the five
    per-request metrics cost ~3 us of a proxied request that way, ~0.8 us so)."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
        registry: CollectorRegistry,
    ) -> None:  # fmt: skip
        self.name, self._documentation, self._labelnames = name, documentation, tuple(labelnames)
        # label values as the caller passed them -> [count, created]
        self._cells: dict[tuple[object, ...], list[float]] = {}
        if not labelnames:  # an unlabelled counter is there from the start, at 0
            self._cells[()] = [0.0, time.time()]
        registry.register(self)

    def inc(self, *labels: object) -> None:
        cell = self._cells.get(labels)
        if cell is None:
            cell = self._cells[labels] = [0.0, time.time()]
        cell[0] += 1.0

    def value(self, *labels: object) -> float:
        return sum(cell[0] for cell in _grouped(self._cells).get(_named(labels), []))

    def collect(self) -> Iterable[Metric]:
        metric = Metric(self.name, self._documentation, "counter")
        for labels, cells in _grouped(self._cells).items():
            named = dict(zip(self._labelnames, labels, strict=True))
            metric.add_sample(f"{self.name}_total", named, sum(cell[0] for cell in cells))
            metric.add_sample(f"{self.name}_created", named, min(cell[1] for cell in cells))
        return [metric]


class LoopHistogram:
    """A histogram updated on every request, kept as plain numbers (see
    LoopCounter); its samples are prometheus_client's Histogram's: each bucket
    counts the values <= its ``le``, then ``_count``, ``_sum`` and ``_created``."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
        buckets: Sequence[float], registry: CollectorRegistry,
    ) -> None:  # fmt: skip
        self.name, self._documentation, self._labelnames = name, documentation, tuple(labelnames)
        self._bounds = (*sorted(buckets), math.inf)
        self._les: tuple[str, ...] = tuple(floatToGoString(b) for b in self._bounds)  # type: ignore[no-untyped-call]
        # label values -> [count per bucket (not cumulative)..., sum, created]
        self._cells: dict[tuple[object, ...], list[float]] = {}
        if not labelnames:
            self._cells[()] = self._new_cell()
        registry.register(self)

    def _new_cell(self) -> list[float]:
        return [0.0] * len(self._bounds) + [0.0, time.time()]

    def observe(self, value: float, *labels: object) -> None:
        cell = self._cells.get(labels)
        if cell is None:
            cell = self._cells[labels] = self._new_cell()
        if value == value:  # a NaN counts in no bucket, as in prometheus_client's
            cell[bisect_left(self._bounds, value)] += 1.0
        cell[-2] += value

    def collect(self) -> Iterable[Metric]:
        metric = Metric(self.name, self._documentation, "histogram")
        for labels, cells in _grouped(self._cells).items():
            named = dict(zip(self._labelnames, labels, strict=True))
            cumulative = 0.0
            for index, le in enumerate(self._les):
                cumulative += sum(cell[index] for cell in cells)
                metric.add_sample(f"{self.name}_bucket", {**named, "le": le}, cumulative)
            metric.add_sample(f"{self.name}_count", named, cumulative)
            metric.add_sample(f"{self.name}_sum", named, sum(cell[-2] for cell in cells))
            metric.add_sample(f"{self.name}_created", named, min(cell[-1] for cell in cells))
        return [metric]


def _named(labels: tuple[object, ...]) -> tuple[str, ...]:
    return tuple(str(label) for label in labels)


def _grouped(
    cells: dict[tuple[object, ...], list[float]],
) -> dict[tuple[str, ...], list[list[float]]]:
    """The cells by their labels as text (a status passed as 200 and as "200" is one series)."""
    grouped: dict[tuple[str, ...], list[list[float]]] = {}
    for labels, cell in cells.items():
        grouped.setdefault(_named(labels), []).append(cell)
    return grouped


class Metrics:
    """One registry per gateway, so tests and workers don't share global state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Updated on every request: LoopCounter and LoopHistogram (event loop only).
        self.requests = LoopCounter(
            "portcullis_requests", "Requests by app and status", ["app", "status"], registry=r
        )
        self.decisions = LoopCounter(
            "portcullis_decisions", "Decisions by app and result", ["app", "result"], registry=r
        )
        self.request_seconds = LoopHistogram(
            "portcullis_request_duration_seconds", "Whole request, gateway in to response out",
            ["app"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.decision_seconds = LoopHistogram(
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
        self.memo_hits = LoopCounter(
            "portcullis_decision_memo_hits", "Allows reused from the decision memo, not "
            "evaluated again (gateway/policy/memo.py)", registry=r,
        )  # fmt: skip

    def request_done(self, app: str, status: int, seconds: float) -> None:
        self.requests.inc(app, status)
        self.request_seconds.observe(seconds, app)

    def decided(self, app: str, result: str) -> None:
        self.decisions.inc(app, result)

    def connection_cut(self, reason: str) -> None:
        self.connections_cut.labels(reason).inc()

    def jwks_refreshed(self, issuer: str, ok: bool) -> None:
        self.jwks_refreshes.labels(issuer, "ok" if ok else "error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
