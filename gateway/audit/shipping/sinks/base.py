"""What every sink kind implements."""

from __future__ import annotations

from typing import Any, Protocol


class SinkError(Exception):
    """A batch was not acknowledged: it is sent again after a backoff, or after
    ``retry_after`` seconds if the receiver asked for longer (HTTP Retry-After);
    ``too_large``: the receiver refused it for its size (HTTP 413), and fewer
    records a batch may pass."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, too_large: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.too_large = too_large


class Sink(Protocol):
    def encode(self, record: dict[str, Any], formatted: dict[str, Any]) -> bytes:
        """One record as this sink sends it (a JSON text, an envelope, a syslog
        frame): ``record`` is the log's, ``formatted`` the sink's format of it.
        Called as each record is read, so a batch holds bytes, not objects."""
        ...

    def encode_json(self, record: dict[str, Any], text: bytes) -> bytes:
        """The same, from the format's JSON ``text`` of the record, already
        encoded (:func:`gateway.audit.shipping.formats.opa.encode_line`'s); the
        bytes are those :meth:`encode` gives for the object ``text`` holds."""
        ...

    async def send(self, batch: list[bytes]) -> int:
        """Deliver the encoded records and wait for the receiver's acknowledgement;
        the bytes sent. Raises SinkError (or OSError, TimeoutError) if not
        acknowledged."""
        ...

    async def close(self) -> None: ...
