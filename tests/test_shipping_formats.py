"""The ocsf and ecs formats of a real gateway's decisions, checked against the
schemas they claim: OCSF 1.3.0 (the schema pydantic-ocsf bundles) and ECS 8.11's
categorization rules."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.chain import NOT_COUNTED_LABEL
from gateway.audit.shipping.settings import SinkConfig
from gateway.audit.shipping.sinks.file import FileSink
from gateway.audit.shipping.sinks.syslog import SyslogSink
from gateway.audit.writer import _forgiving_line
from tests.gateway_stack import ServerFactory
from tests.test_decision_log_shipping import ALICE, caught_up, log_records, with_sinks
from tests.test_gateway_limits import closed_after, limited_stack, open_raw
from tests.test_shipping_opa_lines import ship_opa

# --- OCSF 1.3.0 ----------------------------------------------------------------------------

OCSF = json.loads(
    (importlib.resources.files("ocsf") / "schemas" / "v1_3_0.json").read_text(encoding="utf-8")
)
# The bundled schema names the files a class includes ("$include") without their
# contents. These are their attributes and requirements in ocsf-schema's tag 1.3.0
# (includes/classification.json, includes/occurrence.json, profiles/*.json).
INCLUDES: dict[str, dict[str, str]] = {
    "includes/classification.json": {
        "activity_name": "optional", "activity_id": "required", "category_name": "optional",
        "category_uid": "required", "class_name": "optional", "class_uid": "required",
        "type_name": "optional", "type_uid": "required",
    },
    "includes/occurrence.json": {
        "count": "optional", "duration": "optional", "end_time": "optional",
        "start_time": "optional", "time": "required", "timezone_offset": "recommended",
    },
    "profiles/host.json": {"device": "recommended", "actor": "optional"},
    "profiles/security_control.json": {
        "action": "optional", "action_id": "required", "attacks": "optional",
        "authorizations": "optional", "disposition": "optional",
        "disposition_id": "recommended", "firewall_rule": "optional", "malware": "optional",
    },
    "profiles/network_proxy.json": {
        "proxy_endpoint": "optional", "proxy_connection_info": "recommended",
        "proxy_http_request": "optional", "proxy_http_response": "optional",
        "proxy_traffic": "recommended", "proxy_tls": "recommended",
    },
    "profiles/cloud.json": {"cloud": "required", "api": "optional"},
    "profiles/datetime.json": {},
    "profiles/osint.json": {"osint": "required"},
}  # fmt: skip
DICTIONARY = OCSF["dictionary"]["attributes"]
TYPES = OCSF["dictionary"]["types"]["attributes"]
CATEGORIES = OCSF["categories_meta"]["attributes"]


def ocsf_class(class_uid: int) -> tuple[str, dict[str, Any]]:
    for name, spec in OCSF["events"].items():
        uid = category_uid(name) * 1000 + spec["uid"] if "uid" in spec else 0
        if uid == class_uid and (uid or name == "base_event"):
            return name, spec
    raise KeyError(class_uid)


def category_uid(class_name: str) -> int:
    """A class's category is its own or the one of the class it extends."""
    names = [s["category"] for s in chain(OCSF["events"], class_name) if "category" in s]
    return int(CATEGORIES.get(names[-1], {}).get("uid", 0)) if names else 0


def chain(table: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The definitions a class or object inherits, the base first."""
    specs = []
    while name:
        spec = table[name]
        specs.insert(0, spec)
        name = spec.get("extends", "")
    return specs


def class_attributes(class_name: str, profiles: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The attributes of a class with these profiles applied, and the problems
    with the profiles (one the class does not have)."""
    attributes: dict[str, dict[str, Any]] = {}
    offered: set[str] = set()
    for spec in chain(OCSF["events"], class_name):
        offered.update(spec.get("profiles", []))
        own = spec.get("attributes", {})
        for include in own.get("$include", []):
            profile = include.removeprefix("profiles/").removesuffix(".json")
            if include.startswith("profiles/") and profile not in profiles:
                continue
            for name, requirement in INCLUDES[include].items():
                attributes[name] = {**attributes.get(name, {}), "requirement": requirement}
        for name, definition in own.items():
            if name != "$include":
                attributes[name] = merged(attributes.get(name, {}), definition)
    problems = [f"metadata.profiles: {p} is not a profile of {class_name}"
                for p in profiles if p not in offered]  # fmt: skip
    return attributes, problems


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A definition refined by a class or object: its enum adds to the base's
    (activity_id keeps 0 Unknown and 99 Other beside a class's own)."""
    enum = {**base.get("enum", {}), **override.get("enum", {})}
    return {**base, **override, **({"enum": enum} if enum else {})}


def object_attributes(object_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    attributes: dict[str, dict[str, Any]] = {}
    constraints: dict[str, Any] = {}
    for spec in chain(OCSF["objects"], object_name):
        for name, definition in (spec.get("attributes") or {}).items():
            if name != "$include":  # object profiles (container, ...): none is used
                attributes[name] = merged(attributes.get(name, {}), definition)
        constraints.update(spec.get("constraints") or {})
    return attributes, constraints


def check_attributes(
    value: dict[str, Any], attributes: dict[str, Any], constraints: dict[str, Any], where: str
) -> list[str]:
    problems = []
    for name, definition in attributes.items():
        if definition.get("requirement") == "required" and name not in value:
            problems.append(f"{where}{name}: required, missing")
    for group in constraints.get("at_least_one", []), constraints.get("just_one", []):
        if group and not any(name in value for name in group):
            problems.append(f"{where.rstrip('.')}: needs one of {group}: {value}")
    for name, item in value.items():
        if name not in attributes:
            problems.append(f"{where}{name}: not an attribute here")
            continue
        if DICTIONARY.get(name, {}).get("@deprecated"):
            problems.append(f"{where}{name}: deprecated")
        definition = merged(DICTIONARY.get(name, {}), attributes[name])
        if definition.get("is_array"):
            if not isinstance(item, list):
                problems.append(f"{where}{name}: not an array")
                continue
            for index, element in enumerate(item):
                problems += check_value(element, definition, f"{where}{name}[{index}]")
        else:
            problems += check_value(item, definition, f"{where}{name}")
    return problems


def check_value(value: Any, definition: dict[str, Any], where: str) -> list[str]:
    kind = definition.get("type", "")
    if kind == "object":  # unmapped: free-form
        return []
    if kind in OCSF["objects"]:
        if not isinstance(value, dict):
            return [f"{where}: not an object ({kind})"]
        attributes, constraints = object_attributes(kind)
        return check_attributes(value, attributes, constraints, f"{where}.")
    problems = []
    base = TYPES.get(kind, {}).get("type", kind)
    python = {"string_t": str, "integer_t": int, "long_t": int, "boolean_t": bool}.get(base)
    if python and (not isinstance(value, python) or (python is int and isinstance(value, bool))):
        problems.append(f"{where}: {value!r} is not {kind}")
    regex = TYPES.get(kind, {}).get("regex")
    if regex and isinstance(value, str) and not _matches(regex, value):
        problems.append(f"{where}: {value!r} is not {kind}")
    low, high = TYPES.get(kind, {}).get("range", (None, None))
    if low is not None and isinstance(value, int) and not low <= value <= high:
        problems.append(f"{where}: {value} out of {kind}'s range")
    enum = definition.get("enum")
    if enum and where.endswith("_id") and str(value) not in enum:
        problems.append(f"{where}: {value} is not one of {sorted(enum, key=int)}")
    return problems


def _matches(regex: str, value: str) -> bool:
    import re

    return re.search(regex, value) is not None


def ocsf_problems(event: dict[str, Any]) -> list[str]:
    """What the OCSF 1.3.0 schema says is wrong with an event: its class (exists,
    not deprecated), the profiles it declares, every attribute defined (for the
    class, a declared profile, or the object it is in), required attributes,
    at_least_one constraints (a user needs account, name or uid), types (hostname_t,
    ip_t, port_t, ...), enums (activity_id, status_id, action_id, ...), and
    type_uid and category_uid."""
    try:
        class_name, spec = ocsf_class(event.get("class_uid", -1))
    except KeyError:
        return [f"class_uid {event.get('class_uid')}: no such class"]
    problems = []
    if spec.get("@deprecated"):
        problems.append(f"class {class_name} is deprecated: {spec['@deprecated']['message']}")
    profiles = event.get("metadata", {}).get("profiles", [])
    attributes, profile_problems = class_attributes(class_name, profiles)
    problems += profile_problems
    problems += check_attributes(event, attributes, spec.get("constraints") or {}, "")
    if event.get("type_uid") != event.get("class_uid", 0) * 100 + event.get("activity_id", 0):
        problems.append(f"type_uid {event.get('type_uid')}: not class_uid * 100 + activity_id")
    category = category_uid(class_name)
    if event.get("category_uid") != category:
        problems.append(f"category_uid {event.get('category_uid')}: the class's is {category}")
    return problems


def empty_values(value: Any, where: str = "") -> list[str]:
    """Where a document (outside unmapped and our own portcullis.*) holds an empty
    value: what the record lacks is left out, not sent as "" or {} or []."""
    if value in ("", [], {}, None):
        return [where]
    if isinstance(value, dict):
        return [p for key, item in value.items() if key not in ("unmapped", "portcullis")
                for p in empty_values(item, f"{where}.{key}")]  # fmt: skip
    if isinstance(value, list):
        return [
            p for index, item in enumerate(value) for p in empty_values(item, f"{where}[{index}]")
        ]
    return []


# --- ECS 8.11 --------------------------------------------------------------------------------

# The event.type values ECS 8.11 expects with each event.category (schemas/event.yml,
# "expected_event_types"); a document's types must each fit one of its categories.
ECS_TYPES = {
    "authentication": {"start", "end", "info"},
    "configuration": {"access", "change", "creation", "deletion", "info"},
    "iam": {"admin", "change", "creation", "deletion", "group", "info", "user"},
    "intrusion_detection": {"allowed", "denied", "info", "start"},
    "network": {"access", "allowed", "connection", "denied", "end", "info", "protocol", "start"},
    "session": {"start", "end", "info"},
    "web": {"access", "error", "info"},
}


def ecs_problems(document: dict[str, Any]) -> list[str]:
    categories = document["event"].get("category", [])
    problems = [
        f"event.category {c}: not an ECS category" for c in categories if c not in ECS_TYPES
    ]
    for kind in document["event"].get("type", []):
        if categories and not any(kind in ECS_TYPES.get(c, ()) for c in categories):
            problems.append(f"event.type {kind}: ECS allows it in none of {categories}")
    # ECS types labels as keywords (base.yml): a boolean or a number is not one.
    for name, value in document.get("labels", {}).items():
        if not isinstance(value, str):
            problems.append(f"labels.{name} {value!r}: not a keyword")
    return problems


# --- a real gateway's events ---------------------------------------------------------------

TOKEN = "alice-token"
REQUESTS = {
    # request id: path, token, extra headers
    "allow": ("/wms/stock?item=4", TOKEN, {}),
    "deny": ("/pos/sales", TOKEN, {}),
    "anonymous": ("/pos/sales", None, {}),
    "refused-token": ("/wms/x", "not-a-jwt", {}),
    "no-route": ("/nowhere", None, {}),
    "ipv6": ("/wms/stock", TOKEN, {"Host": "[2001:db8::1]"}),
    "ipv6-port": ("/wms/stock", TOKEN, {"Host": "[2001:db8::1]:8443"}),
    "dns-port": ("/wms/stock", TOKEN, {"Host": "gw.example.com:8443"}),
}
UNPARSED = b"GET /wms/x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n"


async def shipped(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The OCSF events and ECS documents of REQUESTS (by request id; "unparsed" is a
    request aiohttp's parser refused) and the OCSF events of everything shipped."""
    sinks = [SinkConfig(f, "file", f, path=tmp_path / f"{f}.jsonl") for f in ("ocsf", "ecs")]
    async with limited_stack(
        aiohttp_server, tmp_path, overrides=with_sinks(tmp_path, *sinks)
    ) as stack:
        token = stack.token("alice", email="alice@example.com", **ALICE)
        for request_id, (path, bearer, headers) in REQUESTS.items():
            bearer = token if bearer == TOKEN else bearer
            headers = {**headers, "X-Request-Id": request_id}
            async with await stack.get(path, bearer, headers=headers) as response:
                await response.read()
        reader, _ = await open_raw(stack, UNPARSED)
        await closed_after(reader, 5.0)
        await caught_up(stack)
    unparsed = next(r for r in log_records(stack.log_path) if r.get("path") == "gateway" and
                    r["result"]["reasons"][0].startswith("gateway.bad_request"))  # fmt: skip
    ids = {request_id: request_id for request_id in REQUESTS}
    ids[unparsed["decision_id"]] = "unparsed"
    everything = log_records(tmp_path / "ocsf.jsonl")
    ocsf = {ids[e["metadata"]["correlation_uid"]]: e for e in everything
            if e["metadata"].get("correlation_uid") in ids}  # fmt: skip
    ecs = {ids[d["http"]["request"]["id"]]: d for d in log_records(tmp_path / "ecs.jsonl")
           if d.get("http", {}).get("request", {}).get("id") in ids}  # fmt: skip
    assert set(ocsf) == set(ecs) == {*REQUESTS, "unparsed"}
    return ocsf, ecs, everything


async def test_every_ocsf_event_of_a_gateway_run_is_valid_ocsf_1_3_0(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    _, _, everything = await shipped(aiohttp_server, tmp_path)
    problems = {
        f"{e['metadata'].get('correlation_uid', e['activity_name'])}": ocsf_problems(e)
        for e in everything
    }
    assert not {key: found for key, found in problems.items() if found}
    assert {e["class_uid"] for e in everything} == {0, 6001, 3002}  # chain signatures too
    empty = {e["metadata"]["uid"]: empty_values(e) for e in everything}
    assert not {key: found for key, found in empty.items() if found}


async def test_access_decisions_are_web_resources_activity_with_the_security_control_profile(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    ocsf, _, _ = await shipped(aiohttp_server, tmp_path)
    allow, deny = ocsf["allow"], ocsf["deny"]
    assert (allow["class_uid"], allow["activity_name"], allow["type_uid"]) == (6001, "Read", 600102)
    assert allow["metadata"]["profiles"] == ["security_control", "host"]
    assert (allow["action"], allow["action_id"], allow["disposition"]) == ("Allowed", 1, "Allowed")
    assert (deny["action"], deny["action_id"], deny["disposition"]) == ("Denied", 2, "Blocked")
    (authorization,) = deny["authorizations"]
    assert authorization["decision"] == "Denied"
    assert authorization["policy"]["name"] == "portcullis/gateway/decision"
    assert authorization["policy"]["version"]  # the policy revision
    assert allow["actor"]["user"] == {
        "uid": "alice",
        "email_addr": "alice@example.com",
        "groups": [{"name": "warehouse"}],
        "org": allow["actor"]["user"]["org"],
    }
    assert allow["src_endpoint"]["ip"] == "127.0.0.1"
    assert allow["web_resources"] == [{"name": "wms", "uid": "wms", "type": "app"}]
    assert deny["status_detail"] == "requires membership in one of: store"
    assert deny["unmapped"]["portcullis"]["reasons"] == ["requires membership in one of: store"]
    for event in (allow, deny):
        chain_fields = event["unmapped"]["portcullis"]
        assert event["metadata"]["uid"] == chain_fields["decision_id"]
        assert event["metadata"]["sequence"] == chain_fields["seq"]
        assert len(chain_fields["chain_hash"]) == 64


async def test_anonymous_requests_and_refusals_leave_out_what_they_lack(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    ocsf, ecs, _ = await shipped(aiohttp_server, tmp_path)
    anonymous, no_route, unparsed = ocsf["anonymous"], ocsf["no-route"], ocsf["unparsed"]
    assert "actor" not in anonymous and anonymous["metadata"]["profiles"] == ["security_control"]
    assert anonymous["action"] == "Denied"
    assert no_route["web_resources"] == [{"name": "/nowhere", "type": "path"}]
    url = unparsed["http_request"]["url"]
    assert url == {"path": "/wms/x"}  # no Host and no scheme: not sent empty
    assert (unparsed["class_uid"], unparsed["action"]) == (6001, "Denied")
    assert "user" not in ecs["anonymous"] and "domain" not in ecs["unparsed"]["url"]
    for name in ("anonymous", "no-route", "unparsed"):
        assert not ocsf_problems(ocsf[name]), name
        assert not empty_values(ocsf[name]) and not empty_values(ecs[name]), name


async def test_a_refused_token_is_an_authentication_event_with_a_user(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    ocsf, ecs, _ = await shipped(aiohttp_server, tmp_path)
    refused = ocsf["refused-token"]
    assert (refused["class_uid"], refused["type_uid"], refused["status"]) == (
        3002,
        300201,
        "Failure",
    )
    # The record holds no subject for a token that failed verification.
    assert refused["user"] == {"name": "anonymous"}
    assert (refused["is_mfa"], refused["auth_protocol"]) == (False, "OAUTH 2.0")
    assert refused["service"] == {"name": "wms", "uid": "wms"}
    assert refused["status_detail"].startswith("gateway.invalid_token: malformed token")
    assert "action" not in refused and "metadata" in refused
    assert not ocsf_problems(refused)
    event = ecs["refused-token"]["event"]
    assert (event["category"], event["type"]) == (
        ["authentication", "network"],
        ["start", "denied"],
    )
    assert event["outcome"] == "failure"


def test_a_refused_client_certificate_is_a_failed_mtls_authentication() -> None:
    """A certificate naming no one subject (gateway/mtls/subject.py) is refused
    before it is an identity: it shipped as a web-resource refusal, where a SOC
    watching failed authentications looks for it (as for a refused token)."""
    from gateway.audit.shipping.formats import formatter

    record = {**hostile("alice@example.com", ["warehouse"], "refused-certificate"),
              "path": "gateway"}  # fmt: skip
    record["input"] = {**record["input"], "identity": {"authenticated": False, "method": "none"}}
    event = formatter("ocsf")(record, LINE_HASH)
    assert (event["class_uid"], event["status"]) == (3002, "Failure")
    assert (event["auth_protocol_id"], event["auth_protocol"]) == (99, "mTLS")
    assert event["user"] == {"name": "anonymous"} and not ocsf_problems(event)
    document = formatter("ecs")(record, LINE_HASH)
    assert document["event"]["category"] == ["authentication", "network"]
    assert document["event"]["outcome"] == "failure" and not ecs_problems(document)


async def test_an_ipv6_host_keeps_its_address_in_ocsf_and_ecs(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    ocsf, ecs, _ = await shipped(aiohttp_server, tmp_path)
    # hostname_t takes no IPv6 literal: the address is in url_string.
    assert ocsf["ipv6"]["http_request"]["url"] == {
        "path": "/wms/stock",
        "scheme": "http",
        "url_string": "http://[2001:db8::1]/wms/stock",
    }
    url = ocsf["ipv6-port"]["http_request"]["url"]
    assert (url["url_string"], url["port"]) == ("http://[2001:db8::1]:8443/wms/stock", 8443)
    url = ocsf["dns-port"]["http_request"]["url"]
    assert (url["hostname"], url["port"]) == ("gw.example.com", 8443)
    # ECS keeps an IPv6 literal's brackets in url.domain.
    assert ecs["ipv6"]["url"]["domain"] == "[2001:db8::1]" and "port" not in ecs["ipv6"]["url"]
    assert (ecs["ipv6-port"]["url"]["domain"], ecs["ipv6-port"]["url"]["port"]) == (
        "[2001:db8::1]",
        8443,
    )
    assert (ecs["dns-port"]["url"]["domain"], ecs["dns-port"]["url"]["port"]) == (
        "gw.example.com",
        8443,
    )


async def test_ecs_event_types_are_ones_ecs_allows_for_their_categories(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    _, ecs, _ = await shipped(aiohttp_server, tmp_path)
    events = {name: document["event"] for name, document in ecs.items()}
    assert (events["allow"]["category"], events["allow"]["type"]) == (
        ["web", "network"],
        ["access", "allowed"],
    )
    assert events["deny"]["type"] == ["access", "denied"]
    assert [events[n]["outcome"] for n in ("allow", "deny")] == ["success", "failure"]
    problems = {name: ecs_problems(document) for name, document in ecs.items()}
    assert not {name: found for name, found in problems.items() if found}
    assert not {name: empty_values(d) for name, d in ecs.items() if empty_values(d)}


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("gw.example.com", ("gw.example.com", None)),
        ("gw.example.com:8443", ("gw.example.com", 8443)),
        ("[2001:db8::1]", ("[2001:db8::1]", None)),
        ("[2001:db8::1]:8443", ("[2001:db8::1]", 8443)),
        ("[2001:db8::1]:x", ("[2001:db8::1]", None)),
        ("gw:99999", ("gw", None)),
        ("gw:" + "9" * 5000, ("gw", None)),
        ("", ("", None)),
    ],
)
def test_a_host_header_splits_into_name_and_port(host: str, expected: tuple[str, Any]) -> None:
    from gateway.audit.shipping.formats.fields import split_host

    assert split_host(host) == expected


# --- hostile identity claims -------------------------------------------------------------------

RECORD = json.loads(
    (Path(__file__).parent / "fixtures/decision_log/decision_record.json").read_text()
)
# A claim's value as an issuer may send it: text (addresses or not), or any JSON value.
_JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text()
)
_CLAIM = st.one_of(
    _JSON_LEAF, st.lists(_JSON_LEAF, max_size=3), st.dictionaries(st.text(), _JSON_LEAF, max_size=2)
)
_EMAILS = st.one_of(
    st.emails(),
    st.text(),
    st.sampled_from(['not an email "]', "ålice@exämple.com", "a@b", "a@b.c\n", ""]),
    _CLAIM,
)
# What the record's path and labels make of it: an access decision, a sign-in, a shadow divergence.
_KINDS = {
    "decision": {},
    "signin": {"path": "gateway/signin"},
    "refused-token": {"result": {**RECORD["result"], "allow": False,
                                 "reasons": ["gateway.invalid_token: expired"]}},
    "refused-certificate": {"result": {**RECORD["result"], "allow": False, "reasons": [
        "gateway.invalid_client_certificate: client certificate's subject is ambiguous"]}},
    "shadow": {"path": "shadow/portcullis/gateway/decision",
               "labels": {**RECORD["labels"], "shadow": True}},
}  # fmt: skip


def hostile(email: Any, groups: Any, kind: str) -> dict[str, Any]:
    identity = {**RECORD["input"]["identity"], "email": email, "groups": groups}
    return {**RECORD, "input": {**RECORD["input"], "identity": identity}, **_KINDS[kind]}


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    email=_EMAILS,
    groups=st.one_of(st.lists(st.one_of(st.sampled_from(["warehouse", ""]), _CLAIM)), _CLAIM),
    kind=st.sampled_from(sorted(_KINDS)),
)
def test_hostile_email_and_groups_claims_keep_ocsf_and_ecs_valid(
    email: Any, groups: Any, kind: str
) -> None:
    """An email claim that is no address (``not an email "]``, ``ålice@exämple.com``)
    was sent as OCSF's email_addr, which must be an email_t; groups holding 5,
    null, an object or "" became {"name": ""} (and "None") in OCSF and an empty
    role in ECS. Each event stays valid and sends nothing empty; an email OCSF
    can't type is kept in ``unmapped``, not dropped."""
    from gateway.audit.shipping.formats import ecs, ocsf

    record = hostile(email, groups, kind)
    event, document = ocsf.format(record, "0" * 64), ecs.format(record, "0" * 64)
    assert ocsf_problems(event) == [] and empty_values(event) == []
    assert ecs_problems(document) == [] and empty_values(document) == []
    names = [g for g in groups if isinstance(g, str) and g] if isinstance(groups, list) else []
    user = event.get("actor", {}).get("user") or event.get("user") or {}
    if kind == "shadow":
        user = event["unmapped"]["divergence"]["user"]
    assert [group["name"] for group in user.get("groups", [])] == names
    assert document.get("user", {}).get("roles", []) == names
    if isinstance(email, str) and email:
        kept = user.get("email_addr") or event["unmapped"].get("user", {}).get("email")
        assert kept == email  # typed, or unmapped: never lost
        assert document["user"]["email"] == email
    else:
        assert "email_addr" not in user and "email" not in document.get("user", {})


@pytest.mark.parametrize(
    "target",
    [
        "http://other.example:81/wms/stock?x=1",  # absolute-form (RFC 9112 3.2.2)
        "*",  # OPTIONS *: asterisk-form
        "other.example:443",  # CONNECT: authority-form
    ],
)
def test_a_request_target_that_is_not_a_path_makes_no_url_string(target: str) -> None:
    """``GET http://other.example:81/wms/stock?x=1`` with Host other.example gave
    url_string ``http://other.examplehttp://other.example:81/...``, and ``OPTIONS *``
    ``http://h*``: the target is joined to the Host only when it is a path."""
    from gateway.audit.shipping.formats import ecs, ocsf

    http = {**RECORD["input"]["attributes"]["request"]["http"], "host": "other.example",
            "path": target}  # fmt: skip
    attributes = {**RECORD["input"]["attributes"], "request": {"http": http}}
    record = {**RECORD, "input": {**RECORD["input"], "attributes": attributes}}
    event, document = ocsf.format(record, "0" * 64), ecs.format(record, "0" * 64)
    url = event["http_request"]["url"]
    assert "url_string" not in url and url["path"] == target.partition("?")[0]
    assert ocsf_problems(event) == [] and empty_values(event) == []
    assert document["url"] == {"domain": "other.example", "scheme": "http", "original": target}
    assert ecs_problems(document) == [] and empty_values(document) == []


def test_an_origin_form_target_is_the_url_with_its_host() -> None:
    from gateway.audit.shipping.formats import ecs, ocsf

    url = ocsf.format(RECORD, "0" * 64)["http_request"]["url"]
    assert url["url_string"] == "http://gw.example.com/wms/stock?item=4"
    assert (url["path"], url["query_string"]) == ("/wms/stock", "item=4")
    assert ecs.format(RECORD, "0" * 64)["url"] == {
        "domain": "gw.example.com", "scheme": "http", "path": "/wms/stock", "query": "item=4"
    }  # fmt: skip


# --- what a record lacks is left out ---------------------------------------------------------

HEAD = {"type": "chain_signature", "reason": "interval", "seq": 3, "head": "ab" * 32,
        "signed_at": "2026-12-03T07:00:00.5Z", "kid": "k", "signature": "x"}  # fmt: skip
LINE_HASH = "cd" * 32


def chain_part(form: str, shipped_as: dict[str, Any]) -> dict[str, Any]:
    """The chain fields of a shipped event: OCSF's unmapped.portcullis, ECS's
    portcullis.* (without the signature or damaged line it also holds)."""
    fields = shipped_as["unmapped"]["portcullis"] if form == "ocsf" else shipped_as["portcullis"]
    return {k: v for k, v in fields.items() if k not in ("chain_signature", "damaged")}


@pytest.mark.parametrize("form", ["ocsf", "ecs"])
def test_a_chain_signature_sends_no_empty_decision_id(form: str) -> None:
    """A chain signature has no decision_id: it was sent as "" (and a strict
    pipeline types "" as a value). Its seq, even 0 (an empty log's head), stays."""
    from gateway.audit.shipping.formats import formatter

    assert chain_part(form, formatter(form)(HEAD, LINE_HASH)) == {
        "seq": 3, "chain_hash": LINE_HASH, "prev_hash": "ab" * 32}  # fmt: skip
    empty_log_head = {**HEAD, "seq": 0, "reason": "start"}
    assert chain_part(form, formatter(form)(empty_log_head, LINE_HASH))["seq"] == 0


@pytest.mark.parametrize("form", ["ocsf", "ecs"])
def test_a_damaged_line_sends_only_its_chain_hash_not_an_empty_id_or_seq_0(form: str) -> None:
    """A damaged line is no record: it has no decision_id, prev_hash or seq. They
    were sent as "", "" and 0 (seq 0 is a real record's: a SIEM would take the
    damaged line for one)."""
    from gateway.audit.shipping.formats import formatter
    from gateway.audit.shipping.formats.fields import damaged_record

    record = damaged_record(b"not json", "2026-12-03T07:00:00.5Z")
    shipped_as = formatter(form)(record, LINE_HASH)
    assert chain_part(form, shipped_as) == {"chain_hash": LINE_HASH}
    if form == "ocsf":
        assert "sequence" not in shipped_as["metadata"]
        assert shipped_as["metadata"]["uid"] == LINE_HASH
        assert ocsf_problems(shipped_as) == []


@pytest.mark.parametrize("form", ["ocsf", "ecs"])
def test_a_damaged_record_that_parsed_sends_its_chain_fields_where_a_records_go(
    form: str,
) -> None:
    """A record the format can't express ships damaged, but it parsed: its
    decision_id, seq and prev_hash are known, and the SIEM needs them to tell
    which decision it was and that no seq is missing."""
    from gateway.audit.shipping.formats import formatter
    from gateway.audit.shipping.formats.fields import damaged_record

    parsed = {"decision_id": "d-1", "seq": 9, "prev_hash": "ab" * 32, "result": {}}
    record = damaged_record(b"{...}", "2026-12-03T07:00:00.5Z", parsed)
    shipped_as = formatter(form)(record, LINE_HASH)
    chain = {"decision_id": "d-1", "seq": 9, "chain_hash": LINE_HASH, "prev_hash": "ab" * 32}
    assert chain_part(form, shipped_as) == chain
    if form == "ocsf":
        assert (shipped_as["metadata"]["uid"], shipped_as["metadata"]["sequence"]) == ("d-1", 9)
        assert ocsf_problems(shipped_as) == []
    else:
        event = shipped_as["event"]
        assert (event["id"], event["sequence"], event["hash"]) == ("d-1", 9, LINE_HASH)


@pytest.mark.parametrize("kind", ["decision", "shadow"])
def test_ecs_names_no_target_app_for_a_request_without_a_route(kind: str) -> None:
    """service.target.name was "-" (the record's stand-in for no app): OCSF
    leaves the app out then, and so does ECS now."""
    from gateway.audit.shipping.formats import ecs

    labels = {k: v for k, v in RECORD["labels"].items() if k != "app"}
    record = {**hostile("alice@example.com", ["warehouse"], kind), "labels": labels}
    if kind == "shadow":
        record["labels"] = {**labels, "shadow": True}
    service = ecs.format(record, LINE_HASH)["service"]
    assert service == {"name": "portcullis", "node": {"name": "0c0615698cb3"}}
    routed = ecs.format(hostile("alice@example.com", ["warehouse"], kind), LINE_HASH)
    assert routed["service"]["target"] == {"name": "wms"}


async def test_a_gateway_request_with_no_route_has_no_ecs_target_app(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    ocsf, ecs, _ = await shipped(aiohttp_server, tmp_path)
    assert "target" not in ecs["no-route"]["service"]
    assert ocsf["no-route"]["web_resources"] == [{"name": "/nowhere", "type": "path"}]
    assert ecs["allow"]["service"]["target"] == {"name": "wms"}


# --- a deny another site's page caused (not counted toward the lockout) -----------------------

# What the gateway logs when a page on another site sends a signed-in browser to a
# URL the policy denies (gateway/shared/third_party.py): a deny like any other,
# labelled with the Sec-Fetch-Site the browser sent.
DENY = {
    **RECORD,
    "input": {**RECORD["input"], "identity": {**RECORD["input"]["identity"], "method": "session"}},
    "result": {**RECORD["result"], "allow": False, "http_status": 403,
               "reasons": ["requires membership in one of: store"]},
}  # fmt: skip


# A file and a syslog sink in each format, never connected: only their encoding is used.
ENCODERS = {
    form: [FileSink(SinkConfig(form, "file", form, path=Path("/nonexistent/copy.jsonl"))),
           SyslogSink(SinkConfig(form, "syslog", form, address="127.0.0.1:9"))]
    for form in ("ocsf", "ecs")
}  # fmt: skip


def not_counted(value: Any) -> dict[str, Any]:
    return {**DENY, "labels": {**DENY["labels"], NOT_COUNTED_LABEL: value}}


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_a_deny_another_sites_page_caused_says_so_in_ocsf_and_ecs(site: str) -> None:
    """The label reached only opa-format sinks: in OCSF and ECS a deny another
    site caused (counted toward no lockout) read as one that counted, and a SOC
    could not tell the two apart or look for pages sending staff to denied URLs."""
    from gateway.audit.shipping.formats import ecs, ocsf

    record = not_counted(site)
    event, document = ocsf.format(record, LINE_HASH), ecs.format(record, LINE_HASH)
    assert event["metadata"]["labels"] == [NOT_COUNTED_LABEL]
    assert event["unmapped"]["portcullis"][NOT_COUNTED_LABEL] == site
    assert (event["action"], event["disposition"]) == ("Denied", "Blocked")
    assert ocsf_problems(event) == [] and empty_values(event) == []
    assert document["labels"] == {NOT_COUNTED_LABEL: site}
    assert document["event"]["type"] == ["access", "denied"]
    assert ecs_problems(document) == [] and empty_values(document) == []
    # A deny that counted (no label, or one without a value) says nothing of it.
    for record in DENY, not_counted(None), not_counted(""):
        event, document = ocsf.format(record, LINE_HASH), ecs.format(record, LINE_HASH)
        assert "labels" not in event["metadata"] and "labels" not in document
        assert NOT_COUNTED_LABEL not in event["unmapped"]["portcullis"]


def nested(depth: int) -> Any:
    value: Any = "cross-site"
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(5, "5", id="int"),
        pytest.param(0.5, "0.5", id="float"),
        pytest.param(True, "true", id="true"),
        pytest.param(False, "false", id="false"),
        pytest.param({"site": "cross-site"}, '{"site":"cross-site"}', id="object"),
        pytest.param(["cross-site", 1], '["cross-site",1]', id="array"),
        pytest.param("x" * 100_000, "x" * 100_000, id="long"),
        pytest.param("cross-site\n\u2603", "cross-site\n\u2603", id="odd-text"),
        # Past the 254 levels orjson writes (the log's parser takes 1024): its type.
        pytest.param(nested(300), "object", id="deep-object"),
        pytest.param([nested(300)], "array", id="deep-array"),
        # The parser of lines with lone surrogates reads one whole.
        pytest.param(2**70, "number", id="past-64-bits"),
    ],
)
def test_a_not_counted_label_of_any_json_value_ships_as_text(value: Any, text: str) -> None:
    """The gateway writes the label as text, but the shipper reads lines from a
    file: whatever the line holds there, the OCSF event stays valid and ECS's
    labels (keyword values, ECS base.yml) get text, never a number or an object."""
    from gateway.audit.shipping.formats import ecs, ocsf

    record = not_counted(value)
    event, document = ocsf.format(record, LINE_HASH), ecs.format(record, LINE_HASH)
    assert event["metadata"]["labels"] == [NOT_COUNTED_LABEL]
    assert event["unmapped"]["portcullis"][NOT_COUNTED_LABEL] == text
    assert ocsf_problems(event) == []
    assert document["labels"] == {NOT_COUNTED_LABEL: text}
    for form, shipped_as in ("ocsf", event), ("ecs", document):  # as the shipper sends them
        for sink in ENCODERS[form]:
            sink.encode(record, shipped_as)


async def test_the_shipper_ships_odd_not_counted_labels_as_records_not_damaged_lines(
    tmp_path: Path,
) -> None:
    """The real shipper on a log of labelled denies whose values are not the
    writer's (a number, an object, past orjson's depth, a lone surrogate,
    numbers past 64 bits): each ships in OCSF and ECS as the deny it is, with
    its label as text, not as a damaged line."""
    values: list[Any] = [5, {"site": "cross-site"}, nested(300), "cross-site\udcff"]
    lines = [_forgiving_line({**not_counted(v), "seq": n}) for n, v in enumerate(values)]
    past_64_bits = b'"deny_not_counted":123456789012345678901234567890'
    lines.append(orjson.dumps({**not_counted(0), "seq": 4}).replace(b'"deny_not_counted":0',
                                                                   past_64_bits))  # fmt: skip
    # A lone surrogate in a line has it read by the stdlib's parser, which keeps the
    # integer whole; orjson reads one as a float.
    lines.append(_forgiving_line({**not_counted(2**70), "seq": 5, "note": "\udcff"}))
    expected = ["5", '{"site":"cross-site"}', "object", "cross-site\ufffd",
                "1.2345678901234568e+29", "number"]  # fmt: skip
    for form in "ocsf", "ecs":
        (tmp_path / form).mkdir()
        _, copy = await ship_opa(tmp_path / form, lines, form)
        shipped = log_records(copy)
        assert len(shipped) == len(lines)
        if form == "ocsf":
            assert [e["class_uid"] for e in shipped] == [6001] * len(lines)
            assert [e["unmapped"]["portcullis"][NOT_COUNTED_LABEL] for e in shipped] == expected
            assert [ocsf_problems(e) for e in shipped] == [[]] * len(lines)
        else:
            assert [d["event"]["action"] for d in shipped] == ["access-decision"] * len(lines)
            assert [d["labels"][NOT_COUNTED_LABEL] for d in shipped] == expected
