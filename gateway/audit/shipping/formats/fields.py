"""What every format reads from a log record: one flat, typed view of an event."""

from __future__ import annotations

import calendar
import functools
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.audit.chain import (
    NOT_COUNTED_LABEL,
    REFUSAL_PATH,
    SHADOW_PATH,
    SIGN_IN_EVENT_PATH,
    SIGNATURE_TYPE,
)
from portcullis import __version__

# Sign-in and step-up events (the OIDC callback), when the gateway logs them.
# amr values (RFC 8176) that mean a second factor or a phishing-resistant one.
MFA_METHODS = frozenset({"otp", "hwk", "swk", "fido", "mfa", "sms", "sc", "pop", "face", "fpt"})
# A bearer token the gateway refused is a failed authentication, not an access
# decision; so is a client certificate that names no one subject.
TOKEN_REFUSAL = "gateway.invalid_token"
CERTIFICATE_REFUSAL = "gateway.invalid_client_certificate"
# A line of the log that can't be shipped as itself (damaged: not a JSON record;
# or a record the format or sink can't express, e.g. nested past the JSON
# encoder's depth) is shipped as this record: {"damaged": <its text, cut at
# DAMAGED_MAX_CHARS>, "damaged_bytes": <its length>, "damaged_truncated": <cut?>,
# "read_at": <when the shipper read it>}, plus the record's decision_id, seq and
# prev_hash when the line parsed and they have the writer's types: the SIEM
# still knows which decision it was and that no seq is missing (the writer puts
# seq and prev_hash last, past the cut).
DAMAGED = "damaged"
DAMAGED_MAX_CHARS = 4096
DAMAGED_MESSAGE = (
    "a line of the decision log that can't be shipped as a record "
    "(not JSON, or more than the format can express)"
)
# orjson writes integers up to 64 bits; the writer's seq is a count far below.
# A bigger one (a hand-edited line read by the stdlib parser) would make the
# damaged record itself unshippable.
_SEQ_MAX = 2**63 - 1


class DamagedRecord(dict[str, Any]):
    """A damaged record, told apart by its type: every parsed line is a plain
    dict, so no line of the log (whatever a client or an editor of the log put
    in it) reads as damaged, and a damaged record that carries its line's seq
    and decision_id never reads as the record itself."""


def damaged_record(
    raw: bytes, read_at: str, record: dict[str, Any] | None = None, size: int | None = None
) -> DamagedRecord:
    """The damaged record for line ``raw``; ``record``: what it parsed to, if it did;
    ``size``: the line's length when ``raw`` is only its first bytes (an overlong line)."""
    text = raw.decode("utf-8", "replace")
    size = len(raw) if size is None else size
    damaged = DamagedRecord(
        {
            DAMAGED: text[:DAMAGED_MAX_CHARS],
            "damaged_bytes": size,
            "damaged_truncated": len(text) > DAMAGED_MAX_CHARS or size > len(raw),
            "read_at": read_at,
        }
    )
    if record is not None:
        decision_id, seq, prev_hash = (
            record.get("decision_id"), record.get("seq"), record.get("prev_hash")
        )  # fmt: skip
        if type(decision_id) is str and decision_id:
            damaged["decision_id"] = decision_id
        if type(seq) is int and 0 <= seq <= _SEQ_MAX:
            damaged["seq"] = seq
        if type(prev_hash) is str and prev_hash:
            damaged["prev_hash"] = prev_hash
    return damaged


def without_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (keys too) replaced by
    U+FFFD. The writer keeps bytes of a request that were not UTF-8 as lone
    surrogates (``\\udcXX`` escapes in the line); no JSON encoder for a SIEM
    writes them, and the line itself keeps the original. Two keys that the
    replacement would make equal (``x\\udcff`` and ``x\\udcfe``: an attacker's
    pair of query parameters) both stay: the later one is named with its bytes
    (``x\\xfe``), so no value is dropped from what the SIEM gets."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        clean: dict[Any, Any] = {}
        for key, item in value.items():
            name = without_surrogates(key)
            if name in clean:
                name = _distinct_key(key, clean)
            clean[name] = without_surrogates(item)
        return clean
    if isinstance(value, list):
        return [without_surrogates(item) for item in value]
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _distinct_key(key: Any, taken: dict[Any, Any]) -> str:
    """A name for ``key`` that no key in ``taken`` has: its undecodable bytes
    spelled ``\\xNN`` (other surrogates ``\\uNNNN``), then numbered if needed."""
    spelled = _SURROGATE.sub(_spell, str(key))
    name, number = spelled, 2
    while name in taken:
        name, number = f"{spelled} ({number})", number + 1
    return name


def _spell(match: re.Match[str]) -> str:
    code = ord(match.group())
    # surrogateescape keeps byte 0x80-0xff as U+DC80-U+DCFF.
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def is_damaged(record: dict[str, Any]) -> bool:
    return type(record) is DamagedRecord


@dataclass
class Event:
    decision_id: str
    seq: int | None  # None: a damaged line that has none (0 would read as one)
    chain_hash: str
    prev_hash: str
    timestamp: str
    time_ms: int
    # decision | refusal | authentication | chain_signature | shadow_divergence | damaged
    kind: str
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
    # A deny another site's page caused, counted toward no lockout: the label's
    # value (the browser's Sec-Fetch-Site) as text; "" for every other record.
    not_counted: str = ""
    # A decision that failed closed: its event's error {code, message} as text
    # ("" for every other record, and for an error that isn't an object).
    error_code: str = ""
    error_message: str = ""

    @property
    def is_mfa(self) -> bool:
        return bool(MFA_METHODS & set(_strings(self.identity.get("amr"))))

    @property
    def groups(self) -> list[str]:
        return _strings(self.identity.get("groups"))

    @property
    def origin_form(self) -> bool:
        """Whether the request target is a path (RFC 9112 3.2.1's origin-form,
        ``/wms/stock?x=1``), which the Host header and scheme make a URL; not the
        absolute-form (``http://other.example/...``), ``*`` or an authority."""
        return self.path.startswith("/")

    @property
    def email(self) -> str:
        """The identity's email claim if it is a string ("" if not): whatever it
        says, each format decides where its schema takes it."""
        email = self.identity.get("email")
        return email if isinstance(email, str) else ""


def chain_fields(event: Event) -> dict[str, Any]:
    """The record's place in the chain, each field only when the record has it: a
    chain signature has no decision_id, a line that is not JSON only its chain_hash
    (it has no seq, and 0 would read as one). A signature's seq 0 (an empty log's
    head) stays."""
    fields: dict[str, Any] = {"decision_id": event.decision_id} if event.decision_id else {}
    if event.seq is not None:
        fields["seq"] = event.seq
    if event.chain_hash:
        fields["chain_hash"] = event.chain_hash
    if event.prev_hash:
        fields["prev_hash"] = event.prev_hash
    return fields


def drop_empty(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` without its None, "", [] and {} (values the record lacks: a SIEM
    schema types an empty string or object as invalid, and a missing one as absent).
    A 0 or false stays. (Its values are JSON's types: the only falsy ones are
    those four, 0, 0.0 and false; truthiness is cheaper than comparing with each.)"""
    return {key: item for key, item in value.items() if item or type(item) in _FALSY_KEPT}


_FALSY_KEPT = (int, float, bool)


# Records carry a few distinct Host headers (each gateway's names) a thousand times
# over: each is parsed once. Bounded: a client's made-up hosts only miss the cache.
@functools.lru_cache(maxsize=256)
def split_host(host: str) -> tuple[str, int | None]:
    """The name and the port of a Host header (RFC 9110 7.2: ``uri-host [":" port]``).
    An IPv6 literal keeps its brackets (``[2001:db8::1]``, with or without a port:
    its colons are not a port's). A port that is not a number in 0-65535 is left
    out; the name is what comes before it, whatever it is (the client wrote it)."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return host, None
        name, rest = host[: end + 1], host[end + 1 :]
    elif host.count(":") == 1:
        name, rest = host.split(":")
        rest = ":" + rest
    else:  # no port, or colons without brackets (not a valid Host): all of it
        return host, None
    digits = rest[1:]
    if rest.startswith(":") and 0 < len(digits) <= 5 and digits.isascii() and digits.isdigit():
        return (name, int(digits)) if int(digits) < 65536 else (name, None)
    return name, None


def read(record: dict[str, Any], digest: str) -> Event:
    """The flat view of a decision event, a chain signature or a damaged line.
    (Runs for every shipped record: lookups inline, no helper per field.)"""
    if record.get("type") == SIGNATURE_TYPE:
        stamp = str(record.get("signed_at", ""))
        # No labels: the product version is the shipping Portcullis' own.
        return Event("", _int(record.get("seq")), digest, str(record.get("head", "")), stamp,
                     epoch_ms(stamp), "chain_signature", version=__version__)  # fmt: skip
    if is_damaged(record):  # its fields are damaged_record's: typed already
        stamp = record["read_at"]
        return Event(record.get("decision_id", ""), record.get("seq"), digest,
                     record.get("prev_hash", ""), stamp, epoch_ms(stamp), DAMAGED,
                     version=__version__)  # fmt: skip
    # type() is: parsed JSON has no subclasses of its types.
    input_ = record.get("input")
    if type(input_) is not dict:
        input_ = _EMPTY
    result = record.get("result")
    if type(result) is not dict:
        result = _EMPTY
    attributes = input_.get("attributes")
    http = socket = _EMPTY
    if type(attributes) is dict:
        request, source = attributes.get("request"), attributes.get("source")
        if type(request) is dict and type(request.get("http")) is dict:
            http = request["http"]
        address = source.get("address") if type(source) is dict else None
        if type(address) is dict and type(address.get("socketAddress")) is dict:
            socket = address["socketAddress"]
    labels = record.get("labels")
    if type(labels) is not dict:
        labels = _EMPTY
    bundles = record.get("bundles")
    bundle = bundles.get("portcullis") if type(bundles) is dict else None
    if type(bundle) is not dict:
        bundle = _EMPTY
    reasons = result.get("reasons")
    reasons = [str(item) for item in reasons] if type(reasons) is list else []
    path = str(record.get("path", ""))
    if path == SHADOW_PATH or labels.get("shadow") is True:
        kind = "shadow_divergence"  # what a candidate policy would have decided: not enforced
    elif path == SIGN_IN_EVENT_PATH or any(
        r.startswith((TOKEN_REFUSAL, CERTIFICATE_REFUSAL)) for r in reasons
    ):
        kind = "authentication"
    elif path == REFUSAL_PATH:
        kind = "refusal"
    else:
        kind = "decision"
    stamp = str(record.get("timestamp", ""))
    identity = input_.get("identity")
    not_counted = labels.get(NOT_COUNTED_LABEL)
    if not_counted is not None and type(not_counted) is not str:
        not_counted = label_text(not_counted)
    error = record.get("error")
    error_code = error_message = ""
    if type(error) is dict:  # the gateway's are strings; a hand-edited line's, text
        code, message = error.get("code"), error.get("message")
        error_code = "" if code is None else code if type(code) is str else label_text(code)
        error_message = "" if message is None else (
            message if type(message) is str else label_text(message)
        )  # fmt: skip
    return Event(
        str(record.get("decision_id", "")),
        _int(record.get("seq")),
        digest,
        str(record.get("prev_hash", "")),
        stamp,
        epoch_ms(stamp),
        kind,
        result.get("allow") is True,
        reasons,
        _int(result.get("http_status")),
        result.get("step_up"),
        path,
        str(bundle.get("revision", "")),
        str(labels.get("app", "-")),
        str(labels.get("id", "")),
        str(labels.get("version", "")),
        str(http.get("method", "")),
        str(http.get("host", "")),
        str(http.get("path", "")),
        str(http.get("scheme", "")),
        str(http.get("id", "")),
        str(socket.get("address", "")),
        _int(socket.get("portValue")),
        identity if type(identity) is dict else {},
        not_counted or "",
        error_code,
        error_message,
    )


# Read only: stands in for a missing object.
_EMPTY: dict[str, Any] = {}


def epoch_ms(stamp: str) -> int:
    """Milliseconds since the epoch of an RFC 3339 UTC ``...Z`` timestamp (0 if not one)."""
    if len(stamp) == 30 and stamp[19] == "." and stamp[29] == "Z":  # the writer's, to the ns
        try:
            return _epoch_seconds(stamp[:19]) * 1000 + int(stamp[20:23])
        except ValueError:
            pass
    try:
        whole, _, fraction = stamp.rstrip("Z").partition(".")
        return _epoch_seconds(whole) * 1000 + int((fraction + "000")[:3])
    except (ValueError, TypeError):
        return 0


@functools.lru_cache(maxsize=256)
def _epoch_seconds(whole: str) -> int:
    """The records of one second share this (strptime is most of a format's cost)."""
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))


def label_text(value: Any) -> str:
    """A label's value that is not text, as text: the gateway writes labels as
    strings, a SIEM schema types them so (ECS's labels are keywords), and a line
    of the log may hold anything. Its JSON (``5``, ``true``, ``{"a":1}``), or, for
    a value orjson can't write (nested past its 254 levels, an integer past 64
    bits: the parser of lines with lone surrogates reads those), its JSON type."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return "object" if type(value) is dict else "array" if type(value) is list else "number"


def _int(value: Any) -> int:
    """A JSON integer, else 0 (``true`` is no number here: bool's type is not int)."""
    return value if type(value) is int else 0


def _strings(value: Any) -> list[str]:
    """The non-empty strings of a claim's list (groups, amr): a number, null or
    object in it names no group (and ``str()`` would invent "None"), "" none either."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, str) and item]
