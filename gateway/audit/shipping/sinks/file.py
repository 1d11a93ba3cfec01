"""The ``file`` sink: formatted records as JSON lines in a second file (e.g. on
another volume), acknowledged once fsync'd."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import orjson

from gateway.audit.shipping.settings import SinkConfig
from gateway.audit.shipping.sinks.base import SinkError


class FileSink:
    def __init__(self, config: SinkConfig) -> None:
        assert config.path is not None
        self.path: Path = config.path
        self._fd = -1

    def encode(self, record: dict[str, Any], formatted: dict[str, Any]) -> bytes:
        return orjson.dumps(formatted, option=orjson.OPT_APPEND_NEWLINE)

    def encode_json(self, record: dict[str, Any], text: bytes) -> bytes:
        return text + b"\n"

    async def send(self, batch: list[bytes]) -> int:
        data = b"".join(batch)
        start = -1
        try:
            if self._fd < 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            start = os.fstat(self._fd).st_size
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as error:
            if start >= 0:
                # A write cut short (a full disk) left part of the batch, maybe half
                # a record: the retry appends the whole batch, so cut this one off
                # first, or half a record and the next would make one line.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
            await self.close()
            raise SinkError(f"{self.path}: {error.strerror}") from error
        return len(data)

    async def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
