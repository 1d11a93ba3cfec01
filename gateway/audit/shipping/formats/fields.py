"""What every format reads from a log record: one flat, typed view of an event."""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.chain import REFUSAL_PATH, SIGN_IN_EVENT_PATH, SIGNATURE_TYPE

# Sign-in and step-up events (the OIDC callback), when the gateway logs them.
# amr values (RFC 8176) that mean a second factor or a phishing-resistant one.
MFA_METHODS = frozenset({"otp", "hwk", "swk", "fido", "mfa", "sms", "sc", "pop", "face", "fpt"})
# A bearer token the gateway refused is a failed authentication, not an access decision.
TOKEN_REFUSAL = "gateway.invalid_token"


@dataclass
class Event:
    decision_id: str
    seq: int
    chain_hash: str
    prev_hash: str
    timestamp: str
    time_ms: int
    kind: str  # decision | refusal | authentication | chain_signature
    allow: bool = False
    reasons: list[str] = field(default_factory=list)
    http_status: int = 0
    step_up: Any = None
    policy: str = ""
    revision: str = ""
    app: str = "-"
    instance: str = ""
    version: str = ""
    method: str = ""
    host: str = ""
    path: str = ""
    scheme: str = ""
    request_id: str = ""
    source_ip: str = ""
    source_port: int = 0
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def is_mfa(self) -> bool:
        return bool(MFA_METHODS & set(_strings(self.identity.get("amr"))))

    @property
    def groups(self) -> list[str]:
        return _strings(self.identity.get("groups"))


def read(record: dict[str, Any], digest: str) -> Event:
    """The flat view of a decision event or a chain signature."""
    if record.get("type") == SIGNATURE_TYPE:
        stamp = str(record.get("signed_at", ""))
        return Event("", _int(record.get("seq")), digest, str(record.get("head", "")), stamp,
                     epoch_ms(stamp), "chain_signature")  # fmt: skip
    input_ = _dict(record.get("input"))
    result = _dict(record.get("result"))
    http = _dict(_dict(_dict(input_.get("attributes")).get("request")).get("http"))
    socket = _dict(_dict(_dict(_dict(input_.get("attributes")).get("source")).get("address")).get(
        "socketAddress"))  # fmt: skip
    labels = _dict(record.get("labels"))
    bundle = _dict(_dict(record.get("bundles")).get("portcullis"))
    reasons = _strings(result.get("reasons"))
    path = str(record.get("path", ""))
    if path == SIGN_IN_EVENT_PATH or any(r.startswith(TOKEN_REFUSAL) for r in reasons):
        kind = "authentication"
    elif path == REFUSAL_PATH:
        kind = "refusal"
    else:
        kind = "decision"
    stamp = str(record.get("timestamp", ""))
    return Event(
        decision_id=str(record.get("decision_id", "")),
        seq=_int(record.get("seq")),
        chain_hash=digest,
        prev_hash=str(record.get("prev_hash", "")),
        timestamp=stamp,
        time_ms=epoch_ms(stamp),
        kind=kind,
        allow=result.get("allow") is True,
        reasons=reasons,
        http_status=_int(result.get("http_status")),
        step_up=result.get("step_up"),
        policy=path,
        revision=str(bundle.get("revision", "")),
        app=str(labels.get("app", "-")),
        instance=str(labels.get("id", "")),
        version=str(labels.get("version", "")),
        method=str(http.get("method", "")),
        host=str(http.get("host", "")),
        path=str(http.get("path", "")),
        scheme=str(http.get("scheme", "")),
        request_id=str(http.get("id", "")),
        source_ip=str(socket.get("address", "")),
        source_port=_int(socket.get("portValue")),
        identity=_dict(input_.get("identity")),
    )


def epoch_ms(stamp: str) -> int:
    """Milliseconds since the epoch of an RFC 3339 UTC ``...Z`` timestamp (0 if not one)."""
    try:
        whole, _, fraction = stamp.rstrip("Z").partition(".")
        seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
        return seconds * 1000 + int((fraction + "000")[:3])
    except (ValueError, TypeError):
        return 0


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _strings(value: Any) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []
