"""Prometheus metrics of the shared state, in the gateway's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class SharedStateMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge(
            "portcullis_shared_state_up", "1 while Redis answers in time, 0 while the "
            "breaker is open", registry=registry,
        )  # fmt: skip
        self.up.set(1)
        self.seconds = Histogram(
            "portcullis_shared_state_check_seconds", "The per-request Redis round trip",
            buckets=BUCKETS, registry=registry,
        )  # fmt: skip
        self.refusals = Counter(
            "portcullis_shared_state_refusals", "Requests refused on the shared state, by "
            "rule (revoked, session_revoked, locked_out, rate_limited, "
            "shared_state_unavailable)", ["app", "rule"], registry=registry,
        )  # fmt: skip
        self.unavailable = Counter(
            "portcullis_shared_state_unavailable", "Requests that met an unavailable Redis, "
            "by outcome (refused: on_unavailable deny; unchecked: allowed on the "
            "cryptographic checks alone; no_check_needed: anonymous or mTLS)",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.writes = Counter(
            "portcullis_shared_state_writes", "Background writes (sign-out revocations, "
            "denies, addresses), by kind and result", ["kind", "result"], registry=registry,
        )  # fmt: skip
        self.lockouts = Counter(
            "portcullis_shared_state_lockouts", "Identities locked out after too many denies",
            registry=registry,
        )  # fmt: skip
        self.backchannel = Counter(
            "portcullis_backchannel_logouts", "Back-channel logout requests, by result",
            ["result"], registry=registry,
        )  # fmt: skip
