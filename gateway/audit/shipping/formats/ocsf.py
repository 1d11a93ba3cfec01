"""The ``ocsf`` format: OCSF 1.3 events (README "Shipping decisions" has the table).

- an access decision or a gateway refusal: Web Resource Access Activity (class
  6004), activity Access Grant / Access Deny, with the security-control fields
  ``action``/``disposition`` (Allowed/Denied, Allowed/Blocked) and ``policy``;
- a sign-in, a step-up, or a bearer token the gateway refused: Authentication
  (class 3002), activity Logon, with ``is_mfa`` and ``auth_protocol``;
- a chain signature: a Base Event (class 0) whose ``unmapped.chain_signature``
  is the signature record, whole (a head `audit verify --head` accepts);
- a shadow policy's divergence: not an access decision that happened (nothing
  was enforced): a Base Event, activity Other (``shadow_divergence``), labelled
  ``shadow`` in ``metadata.labels``, ``unmapped.shadow`` true and both results
  in ``unmapped.divergence``;
- a damaged line (not a JSON record): a Base Event, activity Other
  (``damaged_record``), severity High, its text in ``raw_data``.

Each carries ``metadata.uid`` (the decision id), ``metadata.sequence`` (seq)
and ``unmapped.portcullis`` (decision_id, seq, chain_hash, prev_hash).
"""

from __future__ import annotations

from typing import Any

from gateway.audit.shipping.formats.fields import DAMAGED, Event, read

OCSF_VERSION = "1.3.0"
WEB_RESOURCE_ACCESS = 6004
AUTHENTICATION = 3002
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
    activity = 1 if event.allow else 2
    return {
        **_base(event, WEB_RESOURCE_ACCESS, 6, "Web Resource Access Activity"),
        "activity_id": activity,
        "activity_name": "Access Grant" if event.allow else "Access Deny",
        "type_uid": WEB_RESOURCE_ACCESS * 100 + activity,
        "type_name": "Web Resource Access Activity: "
        + ("Access Grant" if event.allow else "Access Deny"),
        "severity_id": 1 if event.allow else 3,
        "severity": "Informational" if event.allow else "Medium",
        **_outcome(event),
        "policy": {"name": event.policy, "uid": event.policy, "version": event.revision},
        "actor": {"user": _user(event)},
        "src_endpoint": _src(event),
        "http_request": _http_request(event),
        "http_response": {"code": event.http_status},
        "web_resources": [{"name": event.app, "type": "app", "uid": event.app}],
    }


def _authentication(event: Event) -> dict[str, Any]:
    method = str(event.identity.get("method", "bearer"))
    protocol_id, protocol = AUTH_PROTOCOLS.get(method, (6, "OAUTH 2.0"))
    return {
        **_base(event, AUTHENTICATION, 3, "Authentication"),
        "activity_id": 1,
        "activity_name": "Logon",
        "type_uid": AUTHENTICATION * 100 + 1,
        "type_name": "Authentication: Logon",
        "severity_id": 1 if event.allow else 3,
        "severity": "Informational" if event.allow else "Medium",
        **_outcome(event),
        "is_mfa": event.is_mfa,
        "auth_protocol_id": protocol_id,
        "auth_protocol": protocol,
        "user": _user(event),
        "src_endpoint": _src(event),
        "http_request": _http_request(event),
        "service": {"name": event.app, "uid": event.app},
    }


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
            "portcullis": _chain(event),
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
            "portcullis": {**_chain(event), "instance": event.instance},
            "shadow": True,
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
        "message": "a line of the decision log is not a JSON record (damaged?); its text is "
        "in raw_data",
        "raw_data": record.get(DAMAGED, ""),
        "unmapped": {
            "portcullis": _chain(event),
            "damaged": {
                "bytes": record.get("damaged_bytes"),
                "truncated": record.get("damaged_truncated"),
            },
        },
    }


_CATEGORIES = {0: "Other", 3: "Identity & Access Management", 6: "Application Activity"}


def _base(event: Event, class_uid: int, category_uid: int, class_name: str) -> dict[str, Any]:
    """What every class has (its ``unmapped``, the chain fields, is replaced by
    :func:`_outcome`'s where the class has that too)."""
    categories = _CATEGORIES
    return {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": categories[category_uid],
        "time": event.time_ms,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": event.decision_id or event.chain_hash,
            "sequence": event.seq,
            "original_time": event.timestamp,
            "log_name": "portcullis decision log",
            "correlation_uid": event.request_id or None,
            "product": {
                "name": "Portcullis",
                "vendor_name": "Portcullis",
                "version": event.version,
            },
        },
        "unmapped": {"portcullis": _chain(event)},
    }


def _outcome(event: Event) -> dict[str, Any]:
    reasons = "; ".join(event.reasons)
    return {
        "status_id": 1 if event.allow else 2,
        "status": "Success" if event.allow else "Failure",
        "status_code": str(event.http_status),
        "status_detail": reasons,
        "message": reasons or ("allowed" if event.allow else "denied"),
        "action_id": 1 if event.allow else 2,
        "action": "Allowed" if event.allow else "Denied",
        "disposition_id": 1 if event.allow else 2,
        "disposition": "Allowed" if event.allow else "Blocked",
        "unmapped": {
            "portcullis": {
                **_chain(event),
                "reasons": event.reasons,
                "step_up": event.step_up,
                "instance": event.instance,
            },
        },
    }


def _chain(event: Event) -> dict[str, Any]:
    return {
        "decision_id": event.decision_id,
        "seq": event.seq,
        "chain_hash": event.chain_hash,
        "prev_hash": event.prev_hash,
    }


def _user(event: Event) -> dict[str, Any]:
    identity = event.identity
    user: dict[str, Any] = {
        "uid": identity.get("subject") or None,
        "email_addr": identity.get("email") or None,
        "groups": [{"name": group} for group in event.groups],
    }
    if identity.get("issuer"):
        user["org"] = {"uid": str(identity["issuer"])}
    return {key: value for key, value in user.items() if value is not None}


def _src(event: Event) -> dict[str, Any]:
    return {"ip": event.source_ip, "port": event.source_port}


def _http_request(event: Event) -> dict[str, Any]:
    path, _, query = event.path.partition("?")
    url = {"hostname": event.host.rsplit(":", 1)[0], "path": path, "scheme": event.scheme}
    if query:
        url["query_string"] = query
    return {"http_method": event.method, "url": url, "uid": event.request_id}
