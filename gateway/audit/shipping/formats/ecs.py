"""The ``ecs`` format: Elastic Common Schema 8 documents (README "Shipping
decisions" has the table). ``event.type`` is ``allowed`` or ``denied`` (with
``access``, or ``start`` for a sign-in; ``event.category`` has ``network``,
the category ECS allows them in), ``event.outcome`` success/failure; a deny
another site's page caused (counted toward no lockout) has
``labels.deny_not_counted``; a decision that failed closed has the event's
``error`` as ``error.code`` and ``error.message``; a value the record lacks is
left out, not sent empty; the chain fields
are under ``portcullis.*`` and ``event.sequence``; a chain signature is an
``event.kind: state`` document whose ``portcullis.chain_signature`` is the
signature record, whole. A shadow policy's divergence is not an access decision
(nothing was enforced): ``event.type: [info]``, no outcome, ``labels.shadow``
"true" (ECS labels are keywords), both results in ``portcullis.divergence``. A
damaged line (not a JSON record, or one this format can't express) is an
``event.kind: pipeline_error`` document with its text in ``event.original`` (and
the record's decision_id and seq, if it parsed, where a decision's go)."""

from __future__ import annotations

from typing import Any

from gateway.audit.chain import NOT_COUNTED_LABEL
from gateway.audit.shipping.formats.fields import (
    DAMAGED,
    DAMAGED_MESSAGE,
    Event,
    chain_fields,
    drop_empty,
    read,
    split_host,
)


def format(record: dict[str, Any], digest: str) -> dict[str, Any]:
    event = read(record, digest)
    document: dict[str, Any] = {
        "@timestamp": event.timestamp,
        "ecs": {"version": "8.11.0"},
        "observer": {
            "product": "Portcullis",
            "vendor": "Portcullis",
            "type": "proxy",
            "version": event.version,
        },
        "portcullis": chain_fields(event),
    }
    if event.kind == "chain_signature":
        document["event"] = {
            "kind": "state",
            "category": ["configuration"],
            "type": ["info"],
            "action": "chain_signature",
            "sequence": event.seq,
            "hash": event.chain_hash,  # what a SIEM deduplicates every document on
        }
        document["portcullis"]["chain_signature"] = {**record, "line_hash": digest}
        return document
    if event.kind == DAMAGED:
        document["event"] = {
            "kind": "pipeline_error",
            "type": ["error"],
            "action": "damaged_record",
            "severity": 4,
            "original": record.get(DAMAGED, ""),
            "hash": event.chain_hash,
        }
        if event.decision_id:  # a record that parsed: where a decision's go
            document["event"]["id"] = event.decision_id
        if event.seq is not None:
            document["event"]["sequence"] = event.seq
        document["error"] = {"message": DAMAGED_MESSAGE}
        document["portcullis"]["damaged"] = {
            "bytes": record.get("damaged_bytes"),
            "truncated": record.get("damaged_truncated"),
        }
        return document
    if event.kind == "shadow_divergence":
        return _shadow_divergence(event, record, document)
    authentication, allow = event.kind == "authentication", event.allow
    # ECS allows allowed/denied in the network category (not in web, iam or
    # authentication): a decision is web + network, access + allowed/denied; a
    # sign-in or a refused token authentication + network, start + allowed/denied.
    document["event"] = drop_empty(
        {
            "kind": "event",
            "id": event.decision_id,
            "sequence": event.seq,
            "category": ["authentication", "network"] if authentication else ["web", "network"],
            "type": ["start" if authentication else "access", "allowed" if allow else "denied"],
            "outcome": "success" if event.allow else "failure",
            "action": "authentication" if authentication else f"access-{event.kind}",
            "reason": "; ".join(event.reasons),
            "hash": event.chain_hash,
        }
    )
    document["rule"] = drop_empty(
        {"name": event.policy, "version": event.revision, "ruleset": "portcullis"}
    )
    user = drop_empty(_user(event))
    if user:
        document["user"] = user
    source = drop_empty({"ip": event.source_ip, "port": event.source_port or None})
    if source:
        document["source"] = source
    url = _url(event)
    if url:
        document["url"] = url
    http = drop_empty(
        {
            "request": drop_empty({"method": event.method, "id": event.request_id}),
            "response": drop_empty({"status_code": event.http_status or None}),
        }
    )
    if http:
        document["http"] = http
    document["service"] = _service(event)
    if event.not_counted:  # a deny another site's page caused, not counted: say so
        document["labels"] = {NOT_COUNTED_LABEL: event.not_counted}
    error = _error(event)
    if error:  # a decision that failed closed: why, where ECS puts an event's error
        document["error"] = error
    document["portcullis"]["reasons"] = event.reasons
    if event.step_up is not None:
        document["portcullis"]["step_up"] = _drop_none(event.step_up)
    return document


def _url(event: Event) -> dict[str, Any]:
    """ECS keeps an IPv6 literal's brackets in url.domain (its docs: RFC 2732). A
    target that is not a path (absolute-form, ``*``) is no url.path: it is
    url.original, the url "as it was observed, complete or not"."""
    domain, port = split_host(event.host)
    url = {"domain": domain, "port": port, "scheme": event.scheme}
    if event.origin_form:
        path, _, query = event.path.partition("?")
        url |= {"path": path, "query": query}
    else:
        url["original"] = event.path
    return drop_empty(url)


def _shadow_divergence(
    event: Event, record: dict[str, Any], document: dict[str, Any]
) -> dict[str, Any]:
    result, labels = record.get("result"), record.get("labels")
    result = result if isinstance(result, dict) else {}
    labels = labels if isinstance(labels, dict) else {}
    divergence = result.get("divergence")
    document["event"] = {
        "kind": "event",
        "id": event.decision_id,
        "sequence": event.seq,
        "category": ["web"],
        "type": ["info"],
        "action": "shadow-divergence",
        "reason": f"shadow policy would decide differently ({divergence}); not enforced",
        "hash": event.chain_hash,
    }
    document["labels"] = {"shadow": "true"}  # ECS labels are keywords: text, not a boolean
    document["rule"] = {"name": event.policy, "version": event.revision, "ruleset": "portcullis"}
    document["user"] = drop_empty(_user(event)) or None
    document["source"] = {"ip": event.source_ip or None, "port": event.source_port}
    document["service"] = _service(event)
    document["error"] = _error(event) or None
    document["portcullis"]["divergence"] = {
        "kind": divergence,
        "live": result.get("live"),
        "shadow": result.get("shadow"),
        "shadow_error": result.get("shadow_error"),
        "shadow_policy": labels.get("shadow_policy"),
        "live_decision_id": labels.get("live_decision_id"),
    }
    return {key: _drop_none(value) for key, value in document.items() if value is not None}


def _error(event: Event) -> dict[str, Any]:
    """ECS's ``error.code`` and ``error.message`` ("the event itself contains an
    error"): why the decision failed closed; {} when it didn't."""
    return drop_empty({"code": event.error_code, "message": event.error_message})


def _service(event: Event) -> dict[str, Any]:
    """The gateway, and the app the request was for: none without a route (the
    record's "-"), as OCSF leaves it out."""
    service: dict[str, Any] = {"name": "portcullis"}
    if event.instance:
        service["node"] = {"name": event.instance}
    if event.app != "-":
        service["target"] = {"name": event.app}
    return service


def _user(event: Event) -> dict[str, Any]:
    identity = event.identity
    return {
        "id": identity.get("subject") or None,
        "email": event.email or None,  # ECS's user.email is a keyword: any text
        "roles": event.groups,
        "domain": identity.get("issuer") or None,
    }


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value
