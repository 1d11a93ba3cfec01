"""What every sink kind implements."""

from __future__ import annotations

from typing import Any, Protocol


class SinkError(Exception):
    """A batch was not acknowledged: it is sent again after a backoff."""


class Sink(Protocol):
    def encode(self, record: dict[str, Any], formatted: dict[str, Any]) -> bytes:
        """One record as this sink sends it (a JSON text, an envelope, a syslog
        frame): ``record`` is the log's, ``formatted`` the sink's format of it.
        Called as each record is read, so a batch holds bytes, not objects."""
        ...

    async def send(self, batch: list[bytes]) -> int:
        """Deliver the encoded records and wait for the receiver's acknowledgement;
        the bytes sent. Raises SinkError (or OSError, TimeoutError) if not
        acknowledged."""
        ...

    async def close(self) -> None: ...
