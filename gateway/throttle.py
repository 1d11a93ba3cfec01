"""Log lines that a client or an upstream can cause on every request, said at most
once a while per subject (an upstream host, a kind of problem)."""

from __future__ import annotations

import time


class Throttle:
    """``due(key)`` is true at most once every ``every`` seconds per key. The keys
    must come from a bounded set (configured hosts, fixed names), never from a
    request."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._last: dict[str, float] = {}

    def due(self, key: str = "") -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -self.every) < self.every:
            return False
        self._last[key] = now
        return True
