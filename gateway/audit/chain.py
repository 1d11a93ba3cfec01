"""The decision log's format: record shapes, the hash chain and its signatures.

Everything that writes or reads the log agrees on what is here (the writer in
:mod:`gateway.audit.writer`, the reader and verifier in :mod:`gateway.audit.reader`).

File format (JSON lines, UTF-8/ASCII, one record per line, ``\\n``-terminated, a line
at most :data:`MAX_LINE_BYTES` long):

Decision events use OPA's decision-log field names, so tools that read OPA's
logs read ours::

    {"decision_id": "<uuid4>", "timestamp": "2024-05-01T12:00:00.123456789Z",
     "path": "portcullis/gateway/decision", "input": {...}, "result": {...},
     "labels": {"id": ..., "version": ..., ...}, "metrics": {"timer_..._ns": ...},
     "bundles": {"portcullis": {"revision": "..."}},
     "masked": ["/input/attributes/request/http/headers/authorization"],  # if any
     "truncated": ["/input/attributes/request/http/headers/x-long"],  # if any
     "seq": 42, "prev_hash": "<64 hex>"}

Our chain fields:

- ``seq``: the event's number in its chain, 1, 2, 3, ... across rotated files.
- ``prev_hash``: hex SHA-256 of the exact bytes of the previous line (without
  its newline), which may be in the previous file after a rotation.
- ``masked``: as OPA, the JSON pointers whose values were replaced by
  ``**REDACTED**`` (credential headers always; more through ``mask_headers``
  and ``mask_query_params``), and ``truncated``: those of header values cut
  short, or of the headers object when some were left out (both written by
  :mod:`gateway.audit.redaction`, only when not empty).

Chain signatures are lines of their own, in the same chain::

    {"type": "chain_signature", "reason": "start" | "interval" | "close" | "rotate",
     "seq": <events in the chain so far>, "head": "<64 hex>",
     "signed_at": "<RFC 3339 ns>", "kid": "...", "log": "<host>:decisions.log",
     "alg": "ES256", "signature": "<base64url r||s, as in a JWS>"}

``head`` is the hash of the line before the signature (its link, like an
event's ``prev_hash``); the signature covers :func:`signing_input`, i.e.
reason, seq, head, signed_at, kid and log. Since each line's hash covers the
previous hash, one signature vouches for every line before it. ``log`` names
the log the head belongs to (``decision_log.name``; by default the host and the
log's file name), so the heads of several replicas or workers that share a key
and a SIEM index can be told apart; signatures written before it existed have
none (and a v1 signing input without it).

Every run and every file begins with a signed ``start`` record: its ``head``
is :data:`GENESIS` for a brand-new chain, or the hash of the last line before
it: of the previous run in the same file, of the previous file after
``reopen()``, or, when the gateway starts on an empty file (logrotate moved
the old one while it was stopped), as recorded in ``<log>.head`` beside the
log. Its ``seq`` is the number of events before it. So runs and files form
one chain: a missing run or file breaks a link, a log that doesn't begin at
GENESIS is incomplete unless the verifier is told what it continues from,
and a ``start`` record is itself a signed head of everything before it.
A signature follows every ``sign_interval`` seconds or ``sign_every``
events (whichever first, only when there are new events), one ``rotate``
record ends a file on ``reopen()``, and one ``close`` record ends a run at
shutdown. Events after the last signature are not yet vouched for, and a log
cut at a signature still looks whole: only a head kept elsewhere (the admin
listener's ``/audit/head``, the next file's ``start``) shows the cut.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

DECISION_PATH = "portcullis/gateway/decision"
# The event path of a request the gateway refused itself (bad path, no route,
# oversized headers, rate limit, bad token): no policy was asked.
REFUSAL_PATH = "gateway"
# The event path of a browser sign-in through the gateway (or a failed one).
SIGN_IN_EVENT_PATH = "gateway/signin"
# The event path of a shadow policy's divergence (README "Shadow mode"): not a
# live decision; ``labels.shadow`` is true and ``result`` holds both results.
SHADOW_PATH = "shadow/portcullis/gateway/decision"
# The label of a deny another site's page made a signed-in browser run into, which
# counts toward no lockout (gateway/shared/third_party.py); its value is the
# Sec-Fetch-Site the browser sent. Here beside the paths: the formats read it too.
NOT_COUNTED_LABEL = "deny_not_counted"
GENESIS = "0" * 64
REDACTED = "**REDACTED**"
SIGNATURE_TYPE = "chain_signature"
SIGNATURE_CONTEXT = "portcullis-decision-log-chain-signature/v1"
# Since signatures name their log: the name is signed too.
SIGNATURE_CONTEXT_NAMED = "portcullis-decision-log-chain-signature/v2"
SIGN_REASONS = ("start", "interval", "close", "rotate")
SEALING_REASONS = ("close", "rotate")
# The longest line (its newline not counted) a reader of the log takes whole. The
# writer's lines are some KB (header values are cut at 1,024 characters, a
# policy's answer at 64 KiB): a longer line is not one the gateway wrote. Readers
# hash it in pieces, so its chain hash is exact and the chain goes on past it, and
# take it as damaged: one line of hundreds of MB must not cost `audit verify` or
# the shipper its memory.
MAX_LINE_BYTES = 16 << 20


def line_hash(raw: bytes) -> str:
    """The chain link to a line: hex SHA-256 of its bytes without the newline."""
    return hashlib.sha256(raw).hexdigest()


def signing_input(
    reason: str, seq: int, head: str, signed_at: str, kid: str, log: str | None = None
) -> bytes:
    """The exact bytes a chain signature covers (``log`` None: a signature from
    before signatures named their log)."""
    if log is None:
        return "\n".join([SIGNATURE_CONTEXT, reason, str(seq), head, signed_at, kid]).encode()
    fields = [SIGNATURE_CONTEXT_NAMED, reason, str(seq), head, signed_at, kid, log]
    return "\n".join(fields).encode()


_SECOND_CACHE: list[Any] = [None, ""]


def rfc3339_ns(ns: int) -> str:
    """Like OPA: ``2024-05-01T12:00:00.123456789Z``."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    cache = _SECOND_CACHE
    if cache[0] != seconds:
        moment = time.gmtime(seconds)  # %Y isn't zero-padded below year 1000 on glibc
        cache[1] = f"{moment.tm_year:04d}" + time.strftime("-%m-%dT%H:%M:%S", moment)
        cache[0] = seconds
    return f"{cache[1]}.{fraction:09d}Z"


def public_key_from_jwk(jwk: dict[str, Any]) -> ec.EllipticCurvePublicKey:
    """An EC P-256 public key from its JWK."""
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise ValueError(f"key {jwk.get('kid')!r} is not an EC P-256 key")

    def coordinate(name: str) -> int:
        text = str(jwk[name])
        return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")

    numbers = ec.EllipticCurvePublicNumbers(coordinate("x"), coordinate("y"), ec.SECP256R1())
    return numbers.public_key()


def check_signature(
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
        log = record.get("log")
        if log is not None and not isinstance(log, str):
            return "signature record is malformed"
        message = signing_input(
            str(record["reason"]),
            int(record["seq"]),
            str(record["head"]),
            str(record["signed_at"]),
            str(kid),
            log,
        )
        key.verify(der, message, ec.ECDSA(hashes.SHA256()))
    except (KeyError, ValueError, TypeError):
        return "signature record is malformed"
    except InvalidSignature:
        return f"signature (key id {kid!r}) does not verify with the key given"
    return None
