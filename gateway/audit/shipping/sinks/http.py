"""The ``http`` sink: batches POSTed as OPA's decision-log API takes them (a
gzip'd JSON array, ``Authorization: Bearer``), or in Splunk HEC's envelope
(``/services/collector/event``: one ``{"time", "host", "source", "sourcetype",
"event"}`` object per record, ``Authorization: Splunk``). A 2xx acknowledges the
batch: for HEC only with HEC's JSON answer whose ``code`` is 0; for OPA's API with
any body (OPA's own agent takes a 200 and reads no body). Anything else (a redirect
too: it is not followed), a timeout or a refused connection is retried by the shipper with
backoff. An https url is verified against the system's CAs, or the sink's
``tls.ca_file`` (hostname checked: the url's, or ``tls.server_name``)."""

from __future__ import annotations

import email.utils
import socket
import ssl
import time
from typing import Any

import aiohttp
import orjson
from isal import igzip

from gateway.audit.shipping.formats.fields import epoch_ms
from gateway.audit.shipping.settings import (
    SinkConfig,
    TlsFileError,
    read_token,
    tls_context,
    without_userinfo,
)
from gateway.audit.shipping.sinks.base import SinkError
from portcullis import __version__

# ISA-L's igzip, not zlib: on a batch of 500 of the decision log's records (bench
# figures, CPU per record) zlib's level 3 took 4.2 us at 10.3:1; igzip's level 1
# takes 0.55 us at 10.8:1. The same gzip stream (RFC 1952): any receiver reads it.
# The gateway's host is where CPU is short; the SIEM's network rarely is.
GZIP_LEVEL = 1
# The most of a receiver's answer read (see _answer).
ANSWER_MAX_BYTES = 64 * 1024


class HttpSink:
    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self.hostname = socket.gethostname()
        self._where = without_userinfo(config.url)  # what error lines name it by
        self._session: aiohttp.ClientSession | None = None
        # Made for the first request (and again after a connection failed), so a CA
        # or client certificate file fixed after the start is picked up on a retry.
        self._tls: ssl.SSLContext | None = None

    def encode(self, record: dict[str, Any], formatted: dict[str, Any]) -> bytes:
        return self.encode_json(record, orjson.dumps(formatted))

    def encode_json(self, record: dict[str, Any], text: bytes) -> bytes:
        if self.config.envelope != "splunk_hec":
            return text
        # HEC's envelope: {"time", "host", "source", "sourcetype", "event"[, "index"]}.
        stamp = str(
            record.get("timestamp") or record.get("signed_at") or record.get("read_at") or ""
        )
        head = orjson.dumps({
            "time": epoch_ms(stamp) / 1000,
            "host": self.hostname,
            "source": "portcullis",
            "sourcetype": self.config.hec_sourcetype,
        })  # fmt: skip
        index = self.config.hec_index
        after = b',"index":' + orjson.dumps(index) + b"}" if index else b"}"
        return head[:-1] + b',"event":' + text + after

    def body(self, batch: list[bytes]) -> bytes:
        """OPA's API takes a JSON array; HEC takes the envelopes one after another."""
        if self.config.envelope == "splunk_hec":
            return b"".join(batch)
        return b"[" + b",".join(batch) + b"]"

    async def send(self, batch: list[bytes]) -> int:
        body = self.body(batch)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"portcullis/{__version__}",
        }
        if self.config.gzip:
            body = igzip.compress(body, compresslevel=GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        token = self._token()
        if token:
            scheme = "Splunk" if self.config.envelope == "splunk_hec" else "Bearer"
            headers["Authorization"] = f"{scheme} {token}"
        tls = self._tls_context()
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.config.timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        server_name = self.config.tls.server_name if self.config.tls is not None else None
        try:
            async with self._session.post(
                self.config.url, data=body, headers=headers, allow_redirects=False,
                ssl=tls if tls is not None else True, server_hostname=server_name,
            ) as response:  # fmt: skip
                text = await _answer(response)
                if 300 <= response.status < 400:
                    # Following it would POST nowhere useful (a 301/302 turns into a
                    # GET) and count the batch as delivered: a failure, retried.
                    location = without_userinfo(response.headers.get("Location", "?"))
                    raise SinkError(
                        f"{self._where}: HTTP {response.status} redirected to {location}: "
                        "point the sink's url there"
                    )
                if not 200 <= response.status < 300:
                    raise SinkError(
                        f"{self._where}: HTTP {response.status} {without_userinfo(text[:200])}",
                        retry_after=_retry_after(response.headers.get("Retry-After")),
                        too_large=response.status == 413,
                    )
                if self.config.envelope == "splunk_hec":
                    _check_hec(self._where, response, text)
        except (aiohttp.ClientError, TimeoutError) as error:
            if isinstance(error, aiohttp.ClientConnectionError):
                self._tls = None  # read the CA and certificate files again next time
            detail = without_userinfo(str(error)) or type(error).__name__
            raise SinkError(f"{self._where}: {detail}") from None
        return len(body)

    def _tls_context(self) -> ssl.SSLContext | None:
        """The sink's own TLS context (None: aiohttp's default, the system CAs)."""
        if self.config.tls is None or not self.config.url.lower().startswith("https:"):
            return None
        if self._tls is None:
            try:
                self._tls = tls_context(self.config.tls)
            except TlsFileError as error:
                raise SinkError(f"{self._where}: tls: {error}") from error
        return self._tls

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _token(self) -> str | None:
        """Read on every batch, so a rotated token (a remounted Secret) is picked up."""
        if self.config.token_file is None:
            return None
        try:
            return read_token(self.config.token_file)
        except OSError as error:
            raise SinkError(f"token_file {self.config.token_file}: {error.strerror}") from error
        except ValueError as error:
            raise SinkError(f"token_file {error}") from error


async def _answer(response: aiohttp.ClientResponse) -> str:
    """The start of the receiver's answer, decoded: at most ANSWER_MAX_BYTES of it
    (HEC's acknowledgement is some 30 bytes; of an error page, its start is all
    that is shown). Read whole, a 64 MiB answer, or a gzip bomb of a few KB on the
    wire, took the shipping process's memory with it, and every sink's shipping
    with the process. A longer answer is no acknowledgement (it isn't HEC's), and
    its connection is closed rather than drained."""
    chunks: list[bytes] = []
    size = 0
    while size < ANSWER_MAX_BYTES:
        chunk = await response.content.read(ANSWER_MAX_BYTES - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if not response.content.at_eof():
        response.close()
    answer = b"".join(chunks)
    try:
        return answer.decode(response.charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python doesn't know
        return answer.decode("utf-8", errors="replace")


def _check_hec(url: str, response: aiohttp.ClientResponse, text: str) -> None:
    """HEC acknowledges a batch with a JSON object whose ``code`` is 0 (``{"text":
    "Success", "code": 0}``, with ``ackId`` when indexer acknowledgement is on). A
    2xx without it (a captive portal's page, a proxy's empty answer, a url that is
    not the collector's) says nothing about the batch: not acknowledged."""
    try:
        answer = orjson.loads(text)
    except orjson.JSONDecodeError:
        answer = None
    code = answer.get("code") if isinstance(answer, dict) else None
    if type(code) is int:
        if code == 0:
            return
        raise SinkError(f"{url}: HEC refused the batch: {without_userinfo(str(answer))}")
    content_type = response.headers.get("Content-Type", "no Content-Type")
    raise SinkError(
        f"{url}: HTTP {response.status} ({content_type}) is not HEC's acknowledgement "
        f'(a JSON body with "code": 0): {without_userinfo(text[:200])!r}; is the url the '
        "collector's (/services/collector/event)?"
    )


def _retry_after(value: str | None) -> float | None:
    """RFC 9110's Retry-After (a 429 or 503 asking the client to slow down): seconds,
    or an HTTP date; None if absent or not either."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - time.time())
