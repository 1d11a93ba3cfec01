"""The ``ocsf`` format: OCSF 1.3 events (README "Shipping decisions" has the table).

- an access decision or a gateway refusal: Web Resources Activity (class 6001;
  Web Resource Access Activity, 6004, is deprecated), its activity the request's
  method (Read for GET), with the Security Control profile's ``action`` and
  ``disposition`` (Allowed/Denied, Allowed/Blocked) and ``authorizations``
  (the decision and the ``policy``), and the user as ``actor.user`` (the Host
  profile's ``actor``); ``metadata.profiles`` names the profiles used; a deny
  another site's page caused (counted toward no lockout) is labelled
  ``deny_not_counted`` in ``metadata.labels``, its value (the browser's
  Sec-Fetch-Site) in ``unmapped.portcullis.deny_not_counted``; a decision
  that failed closed adds its ``error`` to ``status_detail`` and has it whole
  in ``unmapped.portcullis.error``;
- a sign-in, a step-up, or a bearer token the gateway refused: Authentication
  (class 3002), activity Logon, with ``is_mfa`` and ``auth_protocol``; the
  outcome is ``status`` (IAM classes have no Security Control profile in 1.3);
- a chain signature: a Base Event (class 0) whose ``unmapped.chain_signature``
  is the signature record, whole (a head `audit verify --head` accepts);
- a shadow policy's divergence: not an access decision that happened (nothing
  was enforced): a Base Event, activity Other (``shadow_divergence``), labelled
  ``shadow`` in ``metadata.labels``, ``unmapped.shadow`` true and both results
  in ``unmapped.divergence``;
- a damaged line (not a JSON record, or a record this format can't express):
  a Base Event, activity Other (``damaged_record``), severity High, its text in
  ``raw_data``.

Each carries ``metadata.uid`` (the decision id), ``metadata.sequence`` (seq)
and ``unmapped.portcullis`` (decision_id, seq, chain_hash, prev_hash: a chain
signature has no decision_id, a damaged line that is not JSON only chain_hash). A value
the record lacks is left out, not sent empty: OCSF types an empty hostname or a
user without a name or uid as invalid, and a strict pipeline drops the event.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from gateway.audit.chain import NOT_COUNTED_LABEL
from gateway.audit.shipping.formats.fields import (
    CERTIFICATE_REFUSAL,
    DAMAGED,
    DAMAGED_MESSAGE,
    Event,
    chain_fields,
    drop_empty,
    read,
    split_host,
)

OCSF_VERSION = "1.3.0"
WEB_RESOURCES_ACTIVITY = 6001
AUTHENTICATION = 3002
# Web Resources Activity's activity_id by request method (0 Unknown, 99 Other).
ACTIVITIES = {"GET": (2, "Read"), "HEAD": (2, "Read"), "POST": (1, "Create"),
              "PUT": (3, "Update"), "PATCH": (3, "Update"), "DELETE": (4, "Delete")}  # fmt: skip
# 3002 needs a user with a name or uid; a refused token or a failed sign-in has none.
ANONYMOUS = "anonymous"
# The characters of a label of OCSF's hostname_t (a DNS name or an IPv4 address).
_LABEL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
# OCSF 1.3.0's email_t, its regex as the schema writes it ("+-/" is the range + , - . /),
# matched whole (Python's "$" would take a trailing newline). An email claim it
# doesn't take (no "@", a space, an internationalised address) is no email_addr:
# it goes to unmapped.user.email, kept for the SIEM, outside the typed fields.
_EMAIL = re.compile(r"[a-zA-Z0-9!#$%&'*+-/=?^_`{|}~.]+@[a-zA-Z0-9-]+\.[a-zA-Z0-9-.]+")
# OCSF auth_protocol_id by how the gateway authenticated the request.
AUTH_PROTOCOLS = {"session": (4, "OpenID"), "bearer": (6, "OAUTH 2.0"), "mtls": (99, "mTLS")}


def format(record: dict[str, Any], digest: str) -> dict[str, Any]:
    event = read(record, digest)
    if event.kind == "chain_signature":
        return _chain_signature(event, record)
    if event.kind == "shadow_divergence":
        return _shadow_divergence(event, record)
    if event.kind == DAMAGED:
        return _damaged(event, record)
    if event.kind == "authentication":
        return _authentication(event)
    return _access(event)


def _access(event: Event) -> dict[str, Any]:
    """(Runs for most shipped records: one dict filled in place, in the order the
    fields are sent, rather than merged from a dict per part.)"""
    activity, activity_name = ACTIVITIES.get(event.method, (99, "Other"))
    if not event.method:
        activity, activity_name = 0, "Unknown"
    allow = event.allow
    decision = "Allowed" if allow else "Denied"
    user = _user(event)
    policy = {"name": event.policy, "uid": event.policy, "version": event.revision}
    access = _base(event, WEB_RESOURCES_ACTIVITY, 6, "Web Resources Activity")
    access["activity_id"] = activity
    access["activity_name"] = activity_name if activity != 99 else event.method
    access["type_uid"] = WEB_RESOURCES_ACTIVITY * 100 + activity
    access["type_name"] = f"Web Resources Activity: {activity_name}"
    access["severity_id"] = 1 if allow else 3
    access["severity"] = "Informational" if allow else "Medium"
    _add_outcome(access, event)
    # The Security Control profile: the gateway is the control that decided.
    access["action_id"] = 1 if allow else 2
    access["action"] = decision
    access["disposition_id"] = 1 if allow else 2
    access["disposition"] = "Allowed" if allow else "Blocked"
    access["authorizations"] = [{"decision": decision, "policy": drop_empty(policy)}]
    if user:  # the Host profile is what defines actor for this class in 1.3.0
        access["actor"] = {"user": user}
    _add_endpoint_and_http(access, event)
    if event.http_status:
        access["http_response"] = {"code": event.http_status}
    access["web_resources"] = [_web_resource(event)]
    access["metadata"]["profiles"] = ["security_control", "host"] if user else ["security_control"]
    return access


def _web_resource(event: Event) -> dict[str, Any]:
    if event.app != "-":
        return {"name": event.app, "uid": event.app, "type": "app"}
    # No route (or not parsed): what was asked for is all there is.
    return {"name": event.path.partition("?")[0] or "-", "type": "path"}


def _authentication(event: Event) -> dict[str, Any]:
    method = str(event.identity.get("method", "bearer"))
    if any(reason.startswith(CERTIFICATE_REFUSAL) for reason in event.reasons):
        method = "mtls"  # refused before it was an identity: the record says none
    protocol_id, protocol = AUTH_PROTOCOLS.get(method, (6, "OAUTH 2.0"))
    service = {"name": event.app, "uid": event.app} if event.app != "-" else {"name": "portcullis"}
    authentication = {
        **_base(event, AUTHENTICATION, 3, "Authentication"),
        "activity_id": 1,
        "activity_name": "Logon",
        "type_uid": AUTHENTICATION * 100 + 1,
        "type_name": "Authentication: Logon",
        "severity_id": 1 if event.allow else 3,
        "severity": "Informational" if event.allow else "Medium",
    }
    _add_outcome(authentication, event)
    authentication["is_mfa"] = event.is_mfa
    authentication["auth_protocol_id"] = protocol_id
    authentication["auth_protocol"] = protocol
    authentication["user"] = _user(event) or {"name": ANONYMOUS}
    _add_endpoint_and_http(authentication, event)
    authentication["service"] = service
    return authentication


def _other(event: Event, activity: str, severity_id: int, severity: str) -> dict[str, Any]:
    """A Base Event of activity Other (99): what the log holds beside access decisions."""
    return {
        **_base(event, 0, 0, "Base Event"),
        "activity_id": 99,
        "activity_name": activity,
        "type_uid": 99,
        "type_name": "Base Event: Other",
        "severity_id": severity_id,
        "severity": severity,
    }


def _chain_signature(event: Event, record: dict[str, Any]) -> dict[str, Any]:
    return {
        **_other(event, "chain_signature", 1, "Informational"),
        "status_id": 1,
        "status": "Success",
        "message": f"decision log chain head at seq {event.seq} ({record.get('reason')})",
        "unmapped": {
            "chain_signature": {**record, "line_hash": event.chain_hash},
            "portcullis": chain_fields(event),
        },
    }


def _shadow_divergence(event: Event, record: dict[str, Any]) -> dict[str, Any]:
    result, labels = record.get("result"), record.get("labels")
    result = result if isinstance(result, dict) else {}
    labels = labels if isinstance(labels, dict) else {}
    base = _other(event, "shadow_divergence", 1, "Informational")
    base["metadata"]["labels"] = ["shadow"]
    divergence = result.get("divergence")
    return {
        **base,
        "message": f"shadow policy {labels.get('shadow_policy', '?')} would decide "
        f"differently ({divergence}); not enforced",
        "unmapped": {
            "portcullis": {**chain_fields(event), "instance": event.instance},
            **_unmapped_user(event),
            "shadow": True,
            **_unmapped_error(event),
            "divergence": {
                "kind": divergence,
                "live": result.get("live"),
                "shadow": result.get("shadow"),
                "shadow_error": result.get("shadow_error"),
                "shadow_policy": labels.get("shadow_policy"),
                "shadow_revision": event.revision,
                "live_decision_id": labels.get("live_decision_id"),
                "app": event.app,
                "user": _user(event),
                "http_request": _http_request(event),
            },
        },
    }


def _damaged(event: Event, record: dict[str, Any]) -> dict[str, Any]:
    return {
        **_other(event, "damaged_record", 4, "High"),
        "status_id": 2,
        "status": "Failure",
        "message": f"{DAMAGED_MESSAGE}; its text is in raw_data",
        "raw_data": record.get(DAMAGED, ""),
        "unmapped": {
            "portcullis": chain_fields(event),
            "damaged": {
                "bytes": record.get("damaged_bytes"),
                "truncated": record.get("damaged_truncated"),
            },
        },
    }


_CATEGORIES = {0: "Other", 3: "Identity & Access Management", 6: "Application Activity"}


def _base(event: Event, class_uid: int, category_uid: int, class_name: str) -> dict[str, Any]:
    """What every class has. (``unmapped``, the chain fields, is each caller's: an
    access or sign-in takes :func:`_add_outcome`'s, the others their own.)"""
    categories = _CATEGORIES
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "uid": event.decision_id or event.chain_hash,
        "sequence": event.seq,
        "original_time": event.timestamp,
        "log_name": "portcullis decision log",
        "product": {"name": "Portcullis", "vendor_name": "Portcullis", "version": event.version},
    }
    if event.seq is None:  # a line that is not JSON has no seq (0 would read as one)
        del metadata["sequence"]
    if event.request_id:
        metadata["correlation_uid"] = event.request_id
    return {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": categories[category_uid],
        "time": event.time_ms,
        "metadata": metadata,
    }


def _add_outcome(fields: dict[str, Any], event: Event) -> None:
    """An access decision's or a sign-in's outcome, and its ``unmapped`` part."""
    allow, reasons = event.allow, "; ".join(event.reasons)
    portcullis = chain_fields(event)
    portcullis["reasons"] = event.reasons
    portcullis["step_up"] = event.step_up
    portcullis["instance"] = event.instance
    fields["status_id"] = 1 if allow else 2
    fields["status"] = "Success" if allow else "Failure"
    fields["message"] = reasons or ("allowed" if allow else "denied")
    if event.not_counted:  # a deny another site's page caused, not counted: say so
        portcullis[NOT_COUNTED_LABEL] = event.not_counted
        fields["metadata"]["labels"] = [NOT_COUNTED_LABEL]
    fields["unmapped"] = {"portcullis": portcullis, **_unmapped_user(event)}
    if event.http_status:
        fields["status_code"] = str(event.http_status)
    detail = reasons
    if event.error_code or event.error_message:
        # Failed closed: why is the outcome's detail, and whole in unmapped.
        portcullis["error"] = {"code": event.error_code, "message": event.error_message}
        detail = f"{reasons} ({event.error_code}: {event.error_message})"
    if detail:
        fields["status_detail"] = detail


def _unmapped_error(event: Event) -> dict[str, Any]:
    """``unmapped``'s part for the error of an evaluation that failed, if any."""
    if not (event.error_code or event.error_message):
        return {}
    return {"error": {"code": event.error_code, "message": event.error_message}}


def _user(event: Event) -> dict[str, Any]:
    """The user the request was made as; {} if none (anonymous): OCSF's user
    needs a name or uid, and an identity without a subject has neither."""
    identity = event.identity
    subject = identity.get("subject")
    if not subject:
        return {}
    user: dict[str, Any] = {"uid": str(subject)}
    email = event.email
    if email and _is_email(email):
        user["email_addr"] = email
    groups = event.groups
    if groups:
        user["groups"] = [{"name": group} for group in groups]
    issuer = identity.get("issuer")
    if issuer:
        user["org"] = {"uid": str(issuer)}
    return user


def _unmapped_user(event: Event) -> dict[str, Any]:
    """``unmapped``'s part for what of the user OCSF's types don't take: an email
    claim that is not an email_t (see _EMAIL), for a user :func:`_user` maps."""
    email = event.email
    if email and not _is_email(email) and event.identity.get("subject"):
        return {"user": {"email": email}}
    return {}


@functools.lru_cache(maxsize=256)  # a user's email is in each of the user's records
def _is_email(text: str) -> bool:
    return _EMAIL.fullmatch(text) is not None


def _add_endpoint_and_http(fields: dict[str, Any], event: Event) -> None:
    """``src_endpoint`` and ``http_request``, each only with what the record has
    (a request refused before it was parsed has no Host)."""
    request = _http_request(event)
    if request:
        fields["http_request"] = request
    if event.source_ip:
        source: dict[str, Any] = {"ip": event.source_ip}
        if event.source_port:
            source["port"] = event.source_port
        fields["src_endpoint"] = source


def _http_request(event: Event) -> dict[str, Any]:
    path, _, query = event.path.partition("?")
    host, port = split_host(event.host)
    url: dict[str, Any] = {}
    if path:
        url["path"] = path
    if host and event.scheme and event.origin_form:  # else the target is no path to join
        url["url_string"] = f"{event.scheme}://{event.host}{event.path}"
    if _is_hostname(host):  # an IPv6 literal is not one: it stays in url_string
        url["hostname"] = host
    if port is not None:
        url["port"] = port
    if event.scheme:
        url["scheme"] = event.scheme
    if query:
        url["query_string"] = query
    # OCSF's url needs a path or a url_string; without either there is no URL.
    request: dict[str, Any] = {"url": url} if "path" in url or "url_string" in url else {}
    if event.method:
        request["http_method"] = event.method
    if event.request_id:
        request["uid"] = event.request_id
    return request


@functools.lru_cache(maxsize=256)  # a few hosts, in thousands of records
def _is_hostname(host: str) -> bool:
    """Whether OCSF's hostname_t takes ``host``: dot-separated labels of letters,
    digits and hyphens, none empty or starting or ending with a hyphen (its regex,
    without the regex: the client wrote the Host header, at any length)."""
    return bool(host) and all(
        label and label[0] != "-" and label[-1] != "-" and _LABEL.issuperset(label)
        for label in host.split(".")
    )
