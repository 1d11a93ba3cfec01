"""The ``syslog`` sink: RFC 5424 messages over TCP or TLS, octet-counted (RFC 6587
3.4.1 / RFC 5425), one record per message.

Syslog over TCP has no acknowledgement of its own. A batch counts as delivered
once the receiver's TCP stack has acknowledged every byte of it (the socket's
unsent-and-unacknowledged queue, SIOCOUTQ, is empty) and the connection is still
open; a connection that fails before that sends the batch again on a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import re
import socket
import ssl
import struct
import termios
import time
from typing import Any

import orjson

from gateway.audit.chain import SHADOW_PATH, SIGNATURE_TYPE
from gateway.audit.shipping.formats.fields import is_damaged
from gateway.audit.shipping.settings import SinkConfig, TlsFileError, tls_context
from gateway.audit.shipping.sinks.base import SinkError

# RFC 5424 severities: deny is a notice, a damaged line a warning, everything
# else (a shadow policy's divergence too: nothing was enforced) informational.
INFO, NOTICE, WARNING = 6, 5, 4
ENTERPRISE_ID = 32473  # RFC 5612's example number: no IANA number of our own
BOM = b"\xef\xbb\xbf"


class SyslogSink:
    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self.host, self.port = config.host_port
        self.hostname = (socket.gethostname() or "-")[:255].replace(" ", "_")
        self.procid = str(os.getpid())
        # What every message's header holds but its PRI, time and MSGID.
        self._after_time = f" {self.hostname} {config.app_name} {self.procid} "
        self._pri = {
            severity: f"<{config.facility * 8 + severity}>1 "
            for severity in (INFO, NOTICE, WARNING)
        }
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        # A second descriptor of the connection's socket: its queue and state can
        # still be read after asyncio closed its own on the receiver's close.
        self._probe: socket.socket | None = None
        # Made on the first connection (and again after one failed), so a CA file
        # that is fixed after the start is picked up on the next retry.
        self._tls: ssl.SSLContext | None = None

    async def send(self, batch: list[bytes]) -> int:
        data = b"".join(batch)
        writer = await self._connection()
        try:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self.config.timeout)
            await self._acknowledged(writer)
        except SinkError:
            # Not acknowledged (in time): the receiver may hold part of the batch.
            # Never resend on this connection: a new one starts on a frame boundary.
            await self.close()
            raise
        except (OSError, TimeoutError, ConnectionError, ssl.SSLError) as error:
            await self.close()
            reason = str(error) or type(error).__name__
            raise SinkError(f"syslog {self.config.address}: {reason}") from error
        return len(data)

    def encode(self, record: dict[str, Any], formatted: dict[str, Any]) -> bytes:
        """One octet-counted RFC 5424 message."""
        return self.encode_json(record, orjson.dumps(formatted))

    def encode_json(self, record: dict[str, Any], text: bytes) -> bytes:
        signature = record.get("type") == SIGNATURE_TYPE
        if signature:
            msgid, severity, stamp = "chain_head", INFO, str(record.get("signed_at", ""))
        elif is_damaged(record):
            msgid, severity, stamp = "damaged", WARNING, str(record.get("read_at", ""))
        elif record.get("path") == SHADOW_PATH or _labels(record).get("shadow") is True:
            msgid, severity, stamp = "shadow_divergence", INFO, str(record.get("timestamp", ""))
        else:
            allowed = isinstance(record.get("result"), dict) and record["result"].get("allow")
            msgid = "refusal" if record.get("path") == "gateway" else "decision"
            severity, stamp = (INFO if allowed else NOTICE), str(record.get("timestamp", ""))
        # A damaged record has only what its line parsed to: not JSON, neither (a
        # seq="0" would read as a record's); a record a format can't express, those it had.
        damaged, params = msgid == "damaged", ""
        if not damaged or "seq" in record:
            seq = record.get("seq", 0)
            # The writer's seq is an int; a hand-edited log's could close the element.
            params = f' seq="{seq if type(seq) is int else _sd_escape(str(seq))}"'
        if not signature and (not damaged or "decision_id" in record):
            params += f' decision_id="{_sd_escape(str(record.get("decision_id", "")))}"'
        header = (
            f"{self._pri[severity]}{_timestamp(stamp)}{self._after_time}{msgid} "
            f"[portcullis@{ENTERPRISE_ID}{params}] "
        ).encode()
        size = str(len(header) + len(BOM) + len(text)).encode()
        return b"".join((size, b" ", header, BOM, text))

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.close()
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _connection(self) -> asyncio.StreamWriter:
        if self._writer is not None and self._reader is not None:
            if not self._reader.at_eof() and not self._writer.is_closing():
                return self._writer
            await self.close()  # the receiver closed it: a new connection
        if self.config.tls is not None and self._tls is None:
            try:
                self._tls = tls_context(self.config.tls)
            except TlsFileError as error:
                raise SinkError(f"syslog {self.config.address}: tls: {error}") from error
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host, self.port, ssl=self._tls,
                    server_hostname=self._server_name() if self._tls else None,
                ),
                self.config.timeout,
            )  # fmt: skip
        except (OSError, TimeoutError, ssl.SSLError) as error:
            self._tls = None  # read the CA and certificate files again next time
            raise SinkError(
                f"syslog {self.config.address}: cannot connect: {error or 'timed out'}"
            ) from error
        sock = writer.get_extra_info("socket")
        self._probe = socket.socket(fileno=os.dup(sock.fileno()))
        self._reader, self._writer = reader, writer
        return writer

    def _server_name(self) -> str:
        tls = self.config.tls
        return (tls.server_name if tls and tls.server_name else None) or self.host

    async def _acknowledged(self, writer: asyncio.StreamWriter) -> None:
        """Wait until the receiver's TCP stack acknowledged everything sent, on a
        connection that is still open (a reset connection purges its queue too)."""
        probe = self._probe
        assert probe is not None
        deadline = time.monotonic() + self.config.timeout
        delay = 0.0005
        while True:
            # Nothing left in asyncio's (or TLS's) buffer, nothing unacknowledged in the kernel's.
            idle = writer.transport.get_write_buffer_size() == 0
            if idle and _unacknowledged(probe.fileno()) == 0:
                if _tcp_state(probe) in _OPEN_STATES:
                    return
                raise SinkError(f"syslog {self.config.address}: connection reset")
            if writer.is_closing() and not idle:
                raise SinkError(f"syslog {self.config.address}: connection lost")
            if time.monotonic() > deadline:
                raise SinkError(f"syslog {self.config.address}: not acknowledged in time")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)


# ESTABLISHED, and CLOSE_WAIT: the receiver closed after reading (a receiver that
# closes with unread data resets the connection instead).
_OPEN_STATES = (1, 8)


def _tcp_state(sock: Any) -> int:
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0])


def _unacknowledged(fd: int) -> int:
    buffer = fcntl.ioctl(fd, termios.TIOCOUTQ, struct.pack("i", 0))  # == SIOCOUTQ
    return int(struct.unpack("i", buffer)[0])


def _labels(record: dict[str, Any]) -> dict[str, Any]:
    labels = record.get("labels")
    return labels if isinstance(labels, dict) else {}


# RFC 5424's TIMESTAMP, but with any number of fractional digits (the log has 9).
_SECOND = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")
_STAMP = re.compile(rf"({_SECOND.pattern})(?:\.([0-9]+))?(Z|[+-][0-9]{{2}}:[0-9]{{2}})")


def _timestamp(stamp: str) -> str:
    """The record's time as RFC 5424 writes it (at most 6 fractional digits), or
    its NILVALUE "-" for anything else: a field of the header can't hold a space."""
    if len(stamp) == 30 and stamp[19] == "." and stamp[29] == "Z":  # the writer's, to the ns
        fraction = stamp[20:29]
        if fraction.isascii() and fraction.isdigit() and _is_second(stamp[:19]):
            return f"{stamp[:26]}Z"
    match = _STAMP.fullmatch(stamp)
    if match is None:
        return "-"
    whole, fraction, zone = match.groups()
    return f"{whole}.{fraction[:6]}{zone}" if fraction else f"{whole}{zone}"


@functools.lru_cache(maxsize=256)  # the records of one second share it
def _is_second(text: str) -> bool:
    """Whether ``text`` is a date and time to the second, as _STAMP's start."""
    return _SECOND.fullmatch(text) is not None


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
