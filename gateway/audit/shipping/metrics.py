"""Per-sink Prometheus metrics, from the shipping process's latest reports at scrape time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.audit.shipping.supervisor import SinkHandle

# stats key -> (metric name, help, counter?)
METRICS = {
    "shipped": (
        "portcullis_sink_events_shipped",
        "Records sent to the sink (retries included)",
        True,
    ),
    "acknowledged": ("portcullis_sink_events_acknowledged", "Records the sink acknowledged", True),
    "retried": (
        "portcullis_sink_events_retried",
        "Records sent again after a failed attempt",
        True,
    ),
    "lag_events": (
        "portcullis_sink_lag_events",
        "Events in the log the sink has not acknowledged",
        False,
    ),
    "lag_seconds": ("portcullis_sink_lag_seconds", "Age of the oldest unacknowledged event", False),
    "backlog_bytes": (
        "portcullis_sink_backlog_bytes",
        "Bytes of the log on disk not yet shipped",
        False,
    ),
    "behind": ("portcullis_sink_behind", "1 when backlog_bytes is past backlog_alert_bytes", False),
    "failing": ("portcullis_sink_failing", "1 while the sink's last attempt failed", False),
    "discontinuities": (
        "portcullis_sink_log_discontinuities",
        "Times the log was found truncated or replaced under the sink's cursor "
        "(shipped again from the file's start)",
        True,
    ),
}


class ShippingCollector(Collector):
    def __init__(self, sinks: Sequence[SinkHandle]) -> None:
        self.sinks = list(sinks)

    def collect(self) -> Iterator[Metric]:
        stats = [(sink.name, sink.stats) for sink in self.sinks]
        for key, (name, help_text, counter) in METRICS.items():
            family: CounterMetricFamily | GaugeMetricFamily
            if counter:
                family = CounterMetricFamily(name, help_text, labels=["sink"])
            else:
                family = GaugeMetricFamily(name, help_text, labels=["sink"])
            for sink, values in stats:
                family.add_metric([sink], values[key])
            yield family
