"""Bounded counters and a latency histogram: a report's memory doesn't grow with the log."""

from __future__ import annotations

import math
from typing import Any

OTHER = "(other)"
# Distinct values a counter tracks exactly; past it, new values count as (other).
MAX_KEYS = 10_000
# Times past this share the last bucket (the max is still exact).
_CAP_NS = 10_000_000_000


class TopCounter:
    """Counts per value, exact for the first MAX_KEYS distinct values."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.overflow = 0

    def add(self, key: str) -> None:
        counts = self.counts
        if key in counts:
            counts[key] += 1
        elif len(counts) < MAX_KEYS:
            counts[key] = 1
        else:
            self.overflow += 1

    def top(self, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` most frequent values (ties by value), then (other)."""
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        rows: list[dict[str, Any]] = [{"value": k, "count": n} for k, n in ranked[:limit]]
        rest = sum(n for _, n in ranked[limit:]) + self.overflow
        if rest:
            rows.append({"value": OTHER, "count": rest})
        return rows


class Latency:
    """Evaluation times in buckets of 1 us below 1 ms and 100 us above (an add is
    a dict increment, cheap enough to run on every replayed decision)."""

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total_ns = 0
        self.max_ns = 0

    def add(self, ns: int) -> None:
        index = ns // 1000 if ns < 1_000_000 else 1000 + min(ns, _CAP_NS) // 100_000 * 100
        buckets = self.buckets
        buckets[index] = buckets.get(index, 0) + 1
        self.count += 1
        self.total_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns

    def percentile(self, fraction: float) -> float:
        """The value (ns) at ``fraction`` of the sorted samples (its bucket's upper edge)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                upper = (index + 1) * 1000 if index < 1000 else (index - 1000 + 100) * 1000
                return float(min(upper, self.max_ns))
        return float(self.max_ns)

    def summary(self) -> dict[str, Any]:
        """Microseconds, rounded: what the report shows."""
        if not self.count:
            return {"count": 0}
        return {
            "count": self.count,
            "mean_us": round(self.total_ns / self.count / 1000, 1),
            "p50_us": round(self.percentile(0.5) / 1000, 1),
            "p90_us": round(self.percentile(0.9) / 1000, 1),
            "p99_us": round(self.percentile(0.99) / 1000, 1),
            "max_us": round(self.max_ns / 1000, 1),
        }
