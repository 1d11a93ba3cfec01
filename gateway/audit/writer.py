"""The decision log: every decision as one hash-chained JSON line, the chain signed.

File format (JSON lines, UTF-8/ASCII, one record per line, ``\\n``-terminated):

Decision events use OPA's decision-log field names, so tools that read OPA's
logs read ours::

    {"decision_id": "<uuid4>", "timestamp": "2024-05-01T12:00:00.123456789Z",
     "path": "portcullis/gateway/decision", "input": {...}, "result": {...},
     "labels": {"id": ..., "version": ..., ...}, "metrics": {"timer_..._ns": ...},
     "bundles": {"portcullis": {"revision": "..."}},
     "masked": ["/input/attributes/request/http/headers/authorization"],  # if any
     "seq": 42, "prev_hash": "<64 hex>"}

Our chain fields:

- ``seq``: the event's number in its chain, 1, 2, 3, ... across rotated files.
- ``prev_hash``: hex SHA-256 of the exact bytes of the previous line (without
  its newline), which may be in the previous file after a rotation.
- ``masked``: as OPA, the JSON pointers whose values were replaced by
  ``**REDACTED**`` (credential headers always; more through ``mask_headers``).

Chain signatures are lines of their own, in the same chain::

    {"type": "chain_signature", "reason": "start" | "interval" | "close" | "rotate",
     "seq": <events in the chain so far>, "head": "<64 hex>",
     "signed_at": "<RFC 3339 ns>", "kid": "...", "alg": "ES256",
     "signature": "<base64url r||s, as in a JWS>"}

``head`` is the hash of the line before the signature (its link, like an
event's ``prev_hash``); the signature covers :func:`signing_input`, i.e.
reason, seq, head, signed_at and kid. Since each line's hash covers the
previous hash, one signature vouches for every line before it.

Every file begins with a signed ``start`` record: its ``head`` is
:data:`GENESIS` for a brand-new chain, or the hash of the last line of the
previous file (after ``reopen()``, or when the gateway restarts on an existing
file). So a file verifies on its own (lines deleted from its beginning are
caught: the first line is not a start record), and consecutive files verify as
one chain (a missing or reordered file breaks the link). A gateway that starts
on an empty file begins a new chain; that gap can't be checked (reported as a
note). A signature follows every ``sign_interval`` seconds or ``sign_every``
events (whichever first, only when there are new events), one ``rotate``
record ends a file on ``reopen()``, and one ``close`` record ends it at
shutdown. Events after the last signature are not yet vouched for: deleting
them can't be detected, which ``portcullis audit verify`` reports.

Writing: ``record()`` only appends a tuple to a deque (no I/O, no JSON, no
locks): the writer thread masks, serialises, hashes and appends chunks of lines
with ``os.write`` (``O_APPEND``), fsyncs at every signature, and releases the
GIL between chunks, so the event loop never waits for it. A chunk is committed
(the chain advances) only once fully written; when a write fails (full disk,
I/O error) the partial bytes are cut off again, ``write_errors`` counts it, an
error is logged, the events stay queued and are retried with backoff, so
nothing is dropped while the process lives. ``queue_depth`` shows the backlog
for /metrics and alerting. ``await close()`` drains everything, writes the
``close`` signature and fsyncs; if the disk is still failing when its timeout
runs out, it logs how many events are lost.

``record()`` keeps references to ``input`` and ``result`` (copying them on
every request would cost more than the rest of the log): the caller must not
change them afterwards. Masking copies the dicts on the way to the masked
value, so the caller's objects are never modified.

One writer per file: the file is locked (``flock``); with several worker
processes give each its own path.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from portcullis import __version__

logger = logging.getLogger("portcullis.decision_log")

DECISION_PATH = "portcullis/gateway/decision"
GENESIS = "0" * 64
REDACTED = "**REDACTED**"
SIGNATURE_TYPE = "chain_signature"
SIGNATURE_CONTEXT = "portcullis-decision-log-chain-signature/v1"
SIGN_REASONS = ("start", "interval", "close", "rotate")
SEALING_REASONS = ("close", "rotate")
# Credential-bearing headers, masked in every event whatever the config says.
ALWAYS_MASKED_HEADERS = frozenset(
    {"authorization", "cookie", "proxy-authorization", "x-portcullis-assertion", "set-cookie"}
)
_HEADERS_POINTER = ("input", "attributes", "request", "http", "headers")
# Lines per write: bounds how long the writer holds the GIL between syscalls.
_CHUNK = 64
# Wake the writer early when this many events wait (else every flush_interval).
_WAKE_AT = 2048
_MAX_BACKOFF = 5.0
# Lines the verifier remembers to tell an insertion or a swap from a deletion.
_WINDOW = 16


class DecisionLogError(Exception):
    """The decision log can't be opened (bad path, in use by another process)."""


# Queue items: ("event", ns, decision_id, input, result, revision, metrics, labels),
# ("sign", reason) and ("reopen",).
_Item = tuple[Any, ...]


@dataclass
class _Chain:
    head: str = GENESIS
    seq: int = 0  # events in the chain so far
    signed: int = 0  # seq of the last signature written


class DecisionLog:
    """Append-only, hash-chained, periodically signed decision log."""

    def __init__(
        self,
        path: str | Path,
        signing_key: ec.EllipticCurvePrivateKey,
        *,
        key_id: str,
        sign_interval: float = 10.0,
        mask_headers: Iterable[str] = (),
        labels: dict[str, str] | None = None,
        sign_every: int = 10_000,
        flush_interval: float = 0.05,
    ) -> None:
        if not isinstance(signing_key, ec.EllipticCurvePrivateKey) or not isinstance(
            signing_key.curve, ec.SECP256R1
        ):
            raise ValueError("the decision log is signed with ES256: need an EC P-256 key")
        if sign_interval <= 0 or sign_every <= 0 or flush_interval <= 0:
            raise ValueError("sign_interval, sign_every and flush_interval must be positive")
        self.path = Path(path)
        self._key = signing_key
        self._kid = key_id
        self._sign_interval = sign_interval
        self._sign_every = sign_every
        self._flush_interval = flush_interval
        headers, pointers = set(ALWAYS_MASKED_HEADERS), []
        for entry in mask_headers:
            if entry.startswith("/"):
                pointers.append(_parse_pointer(entry))
            else:
                headers.add(entry.lower())
        self._mask_header_names = frozenset(headers)
        self._mask_pointers = pointers
        self._labels = {"version": __version__, **(labels or {})}

        self._queue: collections.deque[_Item] = collections.deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stopping = False
        self._abandon = False
        self._reopen_wanted = False
        self._fd = -1
        self._chain = _Chain()
        self._chunk: list[_Item] | None = None
        self._last_signed = time.monotonic()
        self._failures = 0
        self._events_written = 0
        self._write_errors = 0
        self._signatures_written = 0

    # -- the gateway's side -------------------------------------------------

    async def start(self) -> None:
        """Open (or continue) the file and start the writer; raises DecisionLogError."""
        if self._thread is not None:
            return
        self._fd, self._chain = await asyncio.to_thread(self._open, None)
        self._queue.appendleft(("sign", "start"))
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def record(
        self,
        *,
        decision_id: str,
        input: dict[str, Any],
        result: Any,
        revision: str,
        metrics: dict[str, int],
        labels: dict[str, str] | None = None,
    ) -> None:
        """Queue one decision; never blocks. Don't modify input/result afterwards."""
        if self._closed:
            raise RuntimeError("decision log is closed: this decision would be lost")
        queue = self._queue
        queue.append(
            ("event", time.time_ns(), decision_id, input, result, revision, metrics, labels)
        )
        if len(queue) >= _WAKE_AT:
            self._wake.set()

    def reopen(self) -> None:
        """Seal the current file and continue the chain in a fresh open of ``path``.

        For SIGHUP after logrotate moved the file away (like nginx's reopen).
        """
        self._reopen_wanted = True
        self._queue.append(("reopen",))
        self._wake.set()

    async def close(self, timeout: float = 30.0) -> None:
        """Write everything recorded so far, a ``close`` signature, fsync, stop."""
        if self._closed:
            return
        self._closed = True
        self._queue.append(("sign", "close"))
        thread = self._thread
        if thread is None:  # never started: nothing was written, nothing to seal
            return
        self._stopping = True
        self._wake.set()
        await asyncio.to_thread(thread.join, timeout)
        if thread.is_alive():
            self._abandon = True
            self._wake.set()
            await asyncio.to_thread(thread.join, 5.0)
            pending = self.stats["queue_depth"]
            logger.error(
                "decision log %s: closing with %d events not written after %d write errors",
                self.path,
                pending,
                self._write_errors,
            )

    @property
    def stats(self) -> dict[str, int]:
        """Counters for /metrics."""
        chunk = self._chunk
        in_chunk = sum(1 for item in chunk if item[0] == "event") if chunk else 0
        return {
            "events_written": self._events_written,
            "write_errors": self._write_errors,
            "queue_depth": len(self._queue) + in_chunk,
            "signatures_written": self._signatures_written,
        }

    # -- the writer thread --------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                delay = self._drain()
                if self._abandon or (self._stopping and not self._queue and self._chunk is None):
                    break
                self._wake.wait(delay)
                self._wake.clear()
        except Exception:  # a bug here must be loud: the log is an audit trail
            logger.exception("decision log %s: writer stopped", self.path)
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _drain(self) -> float:
        """Write queued chunks; returns how long to sleep before the next round."""
        while not self._abandon:
            if self._chunk is None:
                self._chunk = self._take_chunk()
                if not self._chunk:
                    self._chunk = None
                    return self._flush_interval
            data, chain, events, signatures, reopen = self._serialize(self._chunk)
            start = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                _write_all(self._fd, data)
            except OSError as error:
                self._failed(error, start)
                if self._reopen_wanted:
                    self._reopen_failing()
                return min(_MAX_BACKOFF, 0.05 * 2.0 ** min(self._failures, 7))
            if self._failures:
                logger.warning("decision log %s: writing again", self.path)
            self._failures = 0
            self._chain = chain
            self._events_written += events
            self._signatures_written += signatures
            self._chunk = None
            if signatures:
                self._last_signed = time.monotonic()
                self._fsync()
            if reopen:
                self._reopen_wanted = False
                self._reopen()
        return self._flush_interval

    def _take_chunk(self) -> list[_Item]:
        chunk: list[_Item] = []
        queue = self._queue
        pending = self._chain.seq - self._chain.signed
        while queue and len(chunk) < _CHUNK and pending < self._sign_every:
            item = queue.popleft()
            chunk.append(item)
            if item[0] == "event":
                pending += 1
            elif item[0] == "reopen":
                break
            else:
                pending = 0
        due = time.monotonic() - self._last_signed >= self._sign_interval
        if pending and (pending >= self._sign_every or due) and not _ends_signed(chunk):
            chunk.append(("sign", "interval"))
        return chunk

    def _serialize(self, chunk: list[_Item]) -> tuple[bytes, _Chain, int, int, bool]:
        head, seq, signed = self._chain.head, self._chain.seq, self._chain.signed
        lines: list[bytes] = []
        events = signatures = 0
        reopen = False
        for item in chunk:
            kind = item[0]
            if kind == "event":
                seq += 1
                events += 1
                line = self._event_line(item, seq, head)
            else:
                reopen = kind == "reopen"
                line = self._signature_line("rotate" if reopen else item[1], seq, head)
                signatures += 1
                signed = seq
            lines.append(line)
            head = hashlib.sha256(line).hexdigest()
        lines.append(b"")
        return b"\n".join(lines), _Chain(head, seq, signed), events, signatures, reopen

    def _event_line(self, item: _Item, seq: int, prev_hash: str) -> bytes:
        _, ns, decision_id, input_, result, revision, metrics, labels = item
        event: dict[str, Any] = {"input": input_, "result": result}
        masked = self._mask(event)
        record: dict[str, Any] = {
            "decision_id": decision_id,
            "timestamp": rfc3339_ns(ns),
            "path": DECISION_PATH,
            "input": event["input"],
            "result": event["result"],
            "labels": {**self._labels, **labels} if labels else self._labels,
            "metrics": metrics,
            "bundles": {"portcullis": {"revision": revision}},
        }
        if masked:
            record["masked"] = masked
        record["seq"] = seq
        record["prev_hash"] = prev_hash
        # orjson: ~14x faster than json here, and this thread shares the GIL
        # with the event loop.
        try:
            return orjson.dumps(record, default=_json_fallback, option=orjson.OPT_NON_STR_KEYS)
        except (TypeError, ValueError, RuntimeError) as error:  # circular, or changed under us
            logger.error("decision log: event %s not serialisable: %s", decision_id, error)
            record["input"] = record["result"] = {"unserialisable": str(error)}
            return orjson.dumps(record, default=_json_fallback, option=orjson.OPT_NON_STR_KEYS)

    def _signature_line(self, reason: str, seq: int, head: str) -> bytes:
        signed_at = rfc3339_ns(time.time_ns())
        message = signing_input(reason, seq, head, signed_at, self._kid)
        der = self._key.sign(message, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        record = {
            "type": SIGNATURE_TYPE,
            "reason": reason,
            "seq": seq,
            "head": head,
            "signed_at": signed_at,
            "kid": self._kid,
            "alg": "ES256",
            "signature": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
        }
        return json.dumps(record, separators=(",", ":")).encode()

    def _mask(self, event: dict[str, Any]) -> list[str]:
        """Replace secrets in ``event`` copy-on-write; returns the masked pointers."""
        masked: list[str] = []
        given = event["input"]
        try:
            headers = given["attributes"]["request"]["http"]["headers"]
        except (KeyError, TypeError, IndexError):
            headers = None
        if isinstance(headers, dict):
            names = self._mask_header_names
            secret = [name for name in headers if str(name).lower() in names]
            if secret:
                # Copy only the dicts on the way down: the caller's stay untouched.
                headers = dict(headers)
                for name in secret:
                    headers[name] = REDACTED
                    masked.append(_header_pointer(str(name)))
                http = {**given["attributes"]["request"]["http"], "headers": headers}
                request = {**given["attributes"]["request"], "http": http}
                attributes = {**given["attributes"], "request": request}
                event["input"] = {**given, "attributes": attributes}
        for pointer in self._mask_pointers:
            if _replace(event, pointer):
                masked.append(_format_pointer(pointer))
        return masked

    def _fsync(self) -> None:
        # The lines are written (in the page cache); a failed fsync is counted and
        # logged, not retried: rewriting them would duplicate them.
        try:
            os.fsync(self._fd)
        except OSError as error:
            if error.errno != errno.EINVAL:  # EINVAL: not a file (a pipe, /dev/...)
                self._write_errors += 1
                logger.error("decision log %s: fsync failed: %s", self.path, error.strerror)

    def _failed(self, error: OSError, start: int) -> None:
        self._write_errors += 1
        self._failures += 1
        # Cut off a partial chunk so the retry starts on a line boundary.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, start)
        if self._failures == 1 or self._failures % 100 == 0:
            logger.error(
                "decision log %s: write failed (%s); %d events kept in memory, retrying",
                self.path,
                error.strerror or error,
                self.stats["queue_depth"],
            )

    def _reopen_failing(self) -> None:
        """Reopen asked for while the file can't be written (e.g. logrotate moved it
        off a full disk): switch now, start the new file with a start record, and
        write the stuck events there. The failing file gets no rotate record."""
        try:
            fd, _ = self._open(self._chain)
        except DecisionLogError as error:
            logger.error("decision log: reopen failed: %s", error)
            return
        os.close(self._fd)
        self._fd = fd
        self._reopen_wanted = False
        with contextlib.suppress(ValueError):
            self._queue.remove(("reopen",))
        stuck = [item for item in self._chunk or [] if item[0] != "reopen"]
        self._chunk = [("sign", "start"), *stuck]
        logger.warning("decision log %s: reopened after write errors", self.path)

    def _reopen(self) -> None:
        try:
            fd, _ = self._open(self._chain)
        except DecisionLogError as error:
            self._write_errors += 1
            logger.error("decision log: reopen failed, still writing the old file: %s", error)
            self._queue.appendleft(("sign", "start"))
            return
        os.close(self._fd)
        self._fd = fd
        self._queue.appendleft(("sign", "start"))

    def _open(self, chain: _Chain | None) -> tuple[int, _Chain]:
        """Open ``path`` for appending and lock it; work out where the chain stands.

        ``chain`` is the writer's state on reopen; None at start, when the chain
        continues from the file's last line (or starts at GENESIS if empty).
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as error:
            raise DecisionLogError(
                f"cannot open decision log {self.path}: {error.strerror}"
            ) from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DecisionLogError(
                    f"decision log {self.path} is in use by another process "
                    "(one writer per file: give each worker its own path)"
                ) from error
            raise DecisionLogError(f"cannot lock {self.path}: {error.strerror}") from error
        if chain is not None and os.fstat(fd).st_size == 0:
            return fd, chain
        try:
            found = _tail_state(self.path)
        except OSError as error:
            os.close(fd)
            raise DecisionLogError(f"cannot read {self.path}: {error.strerror}") from error
        if found is None:
            return fd, chain or _Chain()
        head, seq, torn = found
        if torn:  # a crash cut the last line: end it so our records start on a line
            _write_all(fd, b"\n")
        return fd, _Chain(head, seq, seq)


def _ends_signed(chunk: list[_Item]) -> bool:
    return bool(chunk) and chunk[-1][0] in ("sign", "reopen")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _tail_state(path: Path) -> tuple[str, int, bool] | None:
    """(hash of the last line, last seq seen, line torn) of a non-empty file."""
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return None
        block = 1 << 16
        data = b""
        pos = size
        while pos > 0:
            step = min(block, pos)
            pos -= step
            file.seek(pos)
            data = file.read(step) + data
            lines = data.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or pos == 0:
                break
    torn = not data.endswith(b"\n")
    last = data.rstrip(b"\n").split(b"\n")[-1] if not torn else data.split(b"\n")[-1]
    head = hashlib.sha256(last).hexdigest()
    seq = 0
    for line in reversed(data.split(b"\n")):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("seq"), int):
            seq = record["seq"]
            break
    return head, seq, torn


def signing_input(reason: str, seq: int, head: str, signed_at: str, kid: str) -> bytes:
    """The exact bytes a chain signature covers."""
    return "\n".join([SIGNATURE_CONTEXT, reason, str(seq), head, signed_at, kid]).encode()


_SECOND_CACHE: list[Any] = [None, ""]


def rfc3339_ns(ns: int) -> str:
    """Like OPA: ``2024-05-01T12:00:00.123456789Z``."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    cache = _SECOND_CACHE
    if cache[0] != seconds:
        cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        cache[0] = seconds
    return f"{cache[1]}.{fraction:09d}Z"


def _json_fallback(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _parse_pointer(pointer: str) -> tuple[str, ...]:
    parts = tuple(p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:])
    if len(parts) < 2 or parts[0] not in ("input", "result"):
        raise ValueError(f"mask pointer {pointer!r} must point inside /input/ or /result/")
    return parts


def _format_pointer(parts: Sequence[str]) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


@functools.lru_cache(maxsize=256)
def _header_pointer(name: str) -> str:
    return _format_pointer((*_HEADERS_POINTER, name))


def _step(node: Any, key: str) -> tuple[bool, Any]:
    if isinstance(node, dict):
        return (key in node, node.get(key))
    if isinstance(node, list) and key.isdigit() and int(key) < len(node):
        return True, node[int(key)]
    return False, None


def _walk(node: Any, parts: Sequence[str]) -> Any:
    for key in parts:
        found, node = _step(node, key)
        if not found:
            return None
    return node


def _replace(root: dict[str, Any], parts: Sequence[str]) -> bool:
    """Set root[parts] = REDACTED, copying every container on the way down.

    The caller's objects are shared below ``root``: they are never changed.
    """
    if not _step(_walk(root, parts[:-1]), parts[-1])[0]:
        return False
    node: Any = root
    for depth, key in enumerate(parts):
        last = depth == len(parts) - 1
        index: Any = int(key) if isinstance(node, list) else key
        child = REDACTED if last else node[index]
        if not last:
            child = dict(child) if isinstance(child, dict) else list(child)
        node[index] = child
        node = child
    return True


# -- verification ---------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Where the chain first went wrong, and what it looks like."""

    file: str
    line: int
    kind: str  # modified | deleted | inserted | reordered | signature | damaged | start
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class VerifyResult:
    events: int = 0
    signatures: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unsigned_tail: int = 0
    sealed: bool = False
    last_signed_at: str | None = None
    records: int = 0

    @property
    def ok(self) -> bool:
        """No modification, deletion, insertion or reordering found."""
        return not self.problems

    @property
    def complete(self) -> bool:
        """ok, every event covered by a signature, and the log ends with a seal."""
        return self.ok and self.unsigned_tail == 0 and self.sealed


@dataclass
class _Line:
    file: str
    number: int
    position: tuple[int, int]
    raw: bytes
    digest: str
    record: dict[str, Any] | None
    torn: bool


def _lines(paths: Sequence[Path]) -> Iterator[_Line]:
    for index, path in enumerate(paths):
        with Path(path).open("rb") as file:
            for number, chunk in enumerate(file, start=1):
                torn = not chunk.endswith(b"\n")
                raw = chunk[:-1] if not torn else chunk
                try:
                    record = json.loads(raw)
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    record = None
                digest = hashlib.sha256(raw).hexdigest()
                yield _Line(str(path), number, (index, number), raw, digest, record, torn)


def public_key_from_jwk(jwk: dict[str, Any]) -> ec.EllipticCurvePublicKey:
    """An EC P-256 public key from its JWK."""
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise ValueError(f"key {jwk.get('kid')!r} is not an EC P-256 key")

    def coordinate(name: str) -> int:
        text = str(jwk[name])
        return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")

    numbers = ec.EllipticCurvePublicNumbers(coordinate("x"), coordinate("y"), ec.SECP256R1())
    return numbers.public_key()


def _check_signature(
    record: dict[str, Any], keys: dict[str, ec.EllipticCurvePublicKey]
) -> str | None:
    """None if the signature verifies, else what's wrong with it."""
    kid = record.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        key = keys.get("*")
    if key is None:
        known = ", ".join(sorted(keys)) or "none"
        return f"signed with unknown key id {kid!r} (keys given: {known})"
    try:
        text = str(record["signature"])
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        if len(raw) != 64:
            return "signature is not a 64-byte ES256 signature"
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        message = signing_input(
            str(record["reason"]),
            int(record["seq"]),
            str(record["head"]),
            str(record["signed_at"]),
            str(kid),
        )
        key.verify(der, message, ec.ECDSA(hashes.SHA256()))
    except (KeyError, ValueError, TypeError):
        return "signature record is malformed"
    except InvalidSignature:
        return f"signature does not verify with key {kid!r}"
    return None


def verify_log(
    paths: Sequence[Path], public_keys: dict[str, ec.EllipticCurvePublicKey]
) -> VerifyResult:
    """Check the chain and its signatures over ``paths`` (oldest file first).

    ``public_keys`` maps kid -> key; the kid ``"*"`` matches any kid (a bare
    PEM key). Raises OSError for unreadable files.
    """
    result = VerifyResult()
    ordered = _chain_order(paths)
    if ordered != list(paths):
        names = ", ".join(str(path) for path in ordered)
        result.notes.append(f"files verified in the order they were written: {names}")
    paths = ordered
    links: dict[str, tuple[int, _Line]] = {}  # broken link -> (problem index, its line)
    recent: collections.deque[_Line] = collections.deque(maxlen=_WINDOW)
    count: int | None = None  # events in the chain so far, once known
    last_good_sig: _Line | None = None
    since_sig = 0
    last_break = -_WINDOW - 1  # index of the last broken link
    gaps: list[tuple[int, int, int]] = []  # (problem index, first, last missing seq)
    index = -1

    def problem(line: _Line, kind: str, message: str) -> int:
        result.problems.append(Problem(line.file, line.number, kind, message))
        return len(result.problems) - 1

    for line in _lines(paths):
        index += 1
        result.records += 1
        prev = recent[-1] if recent else None
        recent.append(line)
        record = line.record
        if record is None:
            what = "a cut-off line (a crash mid-write?)" if line.torn else "not a JSON record"
            problem(line, "damaged", f"{what}: edited or damaged")
            continue
        is_signature = record.get("type") == SIGNATURE_TYPE
        link = record.get("head" if is_signature else "prev_hash")
        seq = record.get("seq")
        if not isinstance(link, str) or not isinstance(seq, int):
            problem(line, "damaged", "record has no chain fields (prev_hash/head, seq)")
            continue
        starts = is_signature and record.get("reason") == "start"

        link_ok = True
        if prev is None:
            if not starts:
                problem(
                    line,
                    "start",
                    "the log does not begin with a signed start record: lines were "
                    "deleted from its beginning",
                )
            elif link != GENESIS:
                result.notes.append(
                    f"{line.file} continues a chain: {seq} events before it are in "
                    "earlier files not given"
                )
        elif link != prev.digest:
            link_ok = False
            if prev.record is None:
                pass  # the damaged line before was reported: its bytes are what changed
            elif starts and line.number == 1 and link == GENESIS:
                result.notes.append(
                    f"{line.file} starts a new chain: nothing links it to {prev.file}"
                )
                count, link_ok = 0, True
            else:
                earlier = next((i for i, seen in enumerate(recent) if seen.digest == link), None)
                if earlier is not None and index - last_break < _WINDOW:
                    pass  # the other half of a reordering reported just before
                elif earlier is not None:
                    first = recent[earlier + 1]
                    inserted = len(recent) - 2 - earlier
                    problem(
                        first,
                        "inserted",
                        f"{inserted} line(s) inserted here: line {line.number} links to "
                        f"line {recent[earlier].number}",
                    )
                else:
                    at = _diagnose(line, prev, seq, count, is_signature, problem)
                    links.setdefault(link, (at, line))
                    if result.problems[at].kind == "deleted" and not is_signature:
                        gaps.append((at, (count or 0) + 1, seq - 1))
            if not link_ok:
                last_break = index

        if is_signature:
            error = _check_signature(record, public_keys)
            if error is None and record.get("reason") not in SIGN_REASONS:
                error = f"unknown signature reason {record.get('reason')!r}"
            if error is not None:
                since = (
                    f"line {last_good_sig.number}"
                    if last_good_sig and last_good_sig.file == line.file
                    else "the start of the file"
                )
                detail = ""
                if count is not None and seq != count:
                    change = "inserted" if count > seq else "deleted"
                    detail = f"; it signs {seq} events, {count} precede it ({change}?)"
                problem(
                    line,
                    "signature",
                    f"chain signature invalid: {error}. Records between {since} and here "
                    f"were changed and the chain recomputed, or the signature was forged"
                    f"{detail}",
                )
            elif link_ok:
                if count is not None and seq != count:
                    change = "deleted" if seq > count else "inserted"
                    problem(
                        line,
                        change,
                        f"the signature covers {seq} events but {count} precede it: "
                        f"{abs(seq - count)} event(s) {change} before this line",
                    )
                result.signatures += 1
                result.last_signed_at = str(record.get("signed_at"))
                last_good_sig = line
                since_sig = 0
        else:
            gap = next((g for g in gaps if g[1] <= seq <= g[2]), None)
            if gap is not None:  # a "deleted" event turns up later: it was moved
                gaps.remove(gap)
                old = result.problems[gap[0]]
                result.problems[gap[0]] = Problem(
                    old.file,
                    old.line,
                    "reordered",
                    f"lines reordered: event seq {seq} should come before this line, "
                    f"it is at {line.file}:{line.number}",
                )
            elif link_ok and count is not None and prev is not None and seq != count + 1:
                if seq > count + 1:
                    at = problem(
                        line, "deleted", f"event seq {seq} follows seq {count}: events deleted"
                    )
                    gaps.append((at, count + 1, seq - 1))
                else:
                    problem(
                        line,
                        "reordered",
                        f"event seq {seq} follows seq {count}: reordered or duplicated",
                    )
            result.events += 1
            since_sig += 1
        count = seq

    last = recent[-1] if recent else None
    if last is None:
        return result
    if last.torn and last.record is not None:
        problem(last, "damaged", "the last line has no newline: cut off mid-write")
    result.unsigned_tail = since_sig
    final = last.record or {}
    result.sealed = (
        final.get("type") == SIGNATURE_TYPE
        and final.get("reason") in SEALING_REASONS
        and last is last_good_sig
    )
    if links:
        _find_moved_lines(paths, links, result)
    order = [str(path) for path in paths]
    result.problems.sort(key=lambda p: (order.index(p.file), p.line))
    return result


def _chain_order(paths: Sequence[Path]) -> list[Path]:
    """Files sorted by the signed time of their start record (logrotate numbers
    files newest first, and shells sort names): the order the chain runs in."""

    def started(item: tuple[int, Path]) -> tuple[str, int]:
        index, path = item
        try:
            with Path(path).open("rb") as file:
                first = json.loads(file.readline())
            stamp = first.get("signed_at") if first.get("reason") == "start" else None
        except (OSError, ValueError, AttributeError):
            stamp = None
        return (stamp if isinstance(stamp, str) else "", index)

    return [path for _, path in sorted(enumerate(paths), key=started)]


def _diagnose(
    line: _Line, prev: _Line, seq: int, count: int | None, is_signature: bool, problem: Any
) -> int:
    """Name the broken link between ``prev`` and ``line``; returns the problem index."""
    expected = (count or 0) if is_signature else (count or 0) + 1
    if line.number == 1 and line.file != prev.file:
        gap = f"{seq - expected} events are" if seq > expected else "something is"
        message = f"{gap} missing between {prev.file} and this file (a file deleted?)"
        return int(problem(line, "deleted", message))
    if count is not None and seq > expected:
        missing = seq - expected
        what = "before this signature" if is_signature else "before this line"
        message = f"{missing} event(s) deleted {what} (seq {count} -> {seq})"
        return int(problem(line, "deleted", message))
    if count is not None and seq < expected:
        if is_signature:
            message = f"{count - seq} event(s) inserted before this signature, which covers {seq}"
            return int(problem(line, "inserted", message))
        message = f"seq {seq} after seq {count}: lines reordered or duplicated"
        return int(problem(line, "reordered", message))
    return int(
        problem(
            prev,
            "modified",
            f"this line was modified: line {line.number} records a different hash "
            "for it (or a signature record after it was deleted)",
        )
    )


def _find_moved_lines(
    paths: Sequence[Path], links: dict[str, tuple[int, _Line]], result: VerifyResult
) -> None:
    """Second pass: a line linking to a line found elsewhere means reordering."""
    where: dict[str, _Line] = {}
    for line in _lines(paths):
        if line.digest in links:
            where.setdefault(line.digest, line)
    for digest, (index, broken) in links.items():
        found = where.get(digest)
        old = result.problems[index]
        if found is None or found is broken or old.kind not in ("deleted", "modified"):
            continue
        result.problems[index] = Problem(
            broken.file,
            broken.number,
            "reordered",
            f"lines reordered: this line belongs right after {found.file}:{found.number}",
        )
