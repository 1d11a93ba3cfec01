"""What every sink kind implements, and what it is handed."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from gateway.audit.tail import TailLine


class SinkError(Exception):
    """A batch was not acknowledged: it is sent again after a backoff."""


class Item(NamedTuple):
    """One record to ship: the log line and the sink's format of it."""

    line: TailLine
    record: dict[str, Any]
    formatted: dict[str, Any]


class Sink(Protocol):
    async def send(self, items: list[Item]) -> int:
        """Deliver the batch and wait for the receiver's acknowledgement; the bytes
        sent. Raises SinkError (or OSError, TimeoutError) if not acknowledged."""
        ...

    async def close(self) -> None: ...
