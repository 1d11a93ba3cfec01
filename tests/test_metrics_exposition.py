"""The per-request metrics (gateway/metrics.py's LoopCounter and LoopHistogram) read
on /metrics exactly as prometheus_client's own Counter and Histogram would: the
same series, values, buckets and order, for any sequence of updates. Those are
the oracle here: each update goes to both, in registries of their own."""

from __future__ import annotations

import math
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram, Metrics

APPS = st.sampled_from(["wms", "pos", "-", 'a"b\\c\n'])  # label values are escaped too
STATUSES = st.sampled_from([200, 403, 404, 502])
# Durations: around and exactly on the bucket bounds, and what no clock gives.
DURATIONS = st.one_of(
    st.sampled_from([*LATENCY_BUCKETS, 0.0, -1.0, math.inf, -math.inf, math.nan]),
    st.floats(min_value=0, max_value=20, allow_nan=False),
)


def _text(registry: CollectorRegistry) -> str:
    """The exposition, with the _created timestamps (when a series began) left out."""
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", generate_latest(registry).decode())


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.lists(st.tuples(APPS, STATUSES, DURATIONS), max_size=40))
def test_requests_and_their_durations_read_as_prometheus_clients_would(
    updates: list[tuple[str, int, float]],
) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter = LoopCounter("t_requests", "Requests", ["app", "status"], registry=ours)
    histogram = LoopHistogram(
        "t_seconds", "Seconds", ["app"], buckets=LATENCY_BUCKETS, registry=ours
    )
    reference = Counter("t_requests", "Requests", ["app", "status"], registry=theirs)
    reference_histogram = Histogram(
        "t_seconds", "Seconds", ["app"], buckets=LATENCY_BUCKETS, registry=theirs
    )
    for app, status, seconds in updates:
        counter.inc(app, status)
        histogram.observe(seconds, app)
        reference.labels(app, str(status)).inc()
        reference_histogram.labels(app).observe(seconds)
    assert _text(ours) == _text(theirs)


@settings(max_examples=50, derandomize=True, deadline=None)
@given(st.lists(DURATIONS, max_size=30), st.integers(min_value=0, max_value=5))
def test_unlabelled_metrics_are_there_from_the_start(values: list[float], hits: int) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    histogram = LoopHistogram("t_decision", "Decision", buckets=(0.00002, 0.25), registry=ours)
    counter = LoopCounter("t_hits", "Hits", registry=ours)
    reference_histogram = Histogram(
        "t_decision", "Decision", buckets=(0.00002, 0.25), registry=theirs
    )
    reference = Counter("t_hits", "Hits", registry=theirs)
    assert _text(ours) == _text(theirs)  # zeros before any update
    for value in values:
        histogram.observe(value)
        reference_histogram.observe(value)
    for _ in range(hits):
        counter.inc()
        reference.inc()
    assert _text(ours) == _text(theirs)
    assert counter.value() == hits


def test_a_status_counted_as_a_number_and_as_text_is_one_series() -> None:
    metrics = Metrics()
    metrics.request_done("wms", 200, 0.001)
    metrics.requests.inc("wms", "200")
    text = metrics.render().decode()
    assert text.count('portcullis_requests_total{app="wms",status="200"}') == 1
    assert 'portcullis_requests_total{app="wms",status="200"} 2.0' in text
    assert metrics.requests.value("wms", 200) == 2
