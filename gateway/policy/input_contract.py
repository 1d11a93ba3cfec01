"""Which input paths a gateway policy reads that the decision input never holds,
and which it leaves out of some requests.

A rule reading such a path is undefined, so a rule that needs it never fires
(and a `not` of it always holds), with no error anywhere: the way a DENY rule
ported from OPA-Envoy (opa-envoy-plugin) silently lets through what it stopped
there. `portcullis policy check` prints each one, and the gateway warns at
every load. The tree below is what gateway/policy/decision.py builds (README
"Decision contract"); a test holds the two the same. LEFT_OUT says which of
its keys a request may go without: replay (portcullis/replay/comparable.py)
tells a logged input that lacks one from one an older gateway wrote.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.policy.decision import DECISION_PATH
from policy_engine.embedded import CompiledPolicy
from policy_engine.errors import Problem, character_column
from policy_engine.input_reads import deciding_modules_reached

Path = tuple[str, ...]

# A value any read under which may hold (a list, a string, a map of any keys).
ANY: dict[str, Any] = {}
_SOCKET = {"socketAddress": {"address": ANY, "portValue": ANY}}
# Envoy's pseudo-headers, in its headers map: never an HTTP/1.1 header name (":"
# is not a token character), so no request can set them here.
PSEUDO_HEADERS = {
    ":authority": "input.attributes.request.http.host",
    ":method": "input.attributes.request.http.method",
    ":path": "input.attributes.request.http.path",
    ":scheme": "input.attributes.request.http.scheme",
}
PROVIDED: dict[str, Any] = {
    "attributes": {
        "request": {
            "http": {
                "method": ANY,
                "host": ANY,
                "path": ANY,
                "scheme": ANY,
                "headers": ANY,
                "id": ANY,
                "protocol": ANY,
                "request_line": ANY,
            }
        },
        "source": {"address": _SOCKET, "principal": ANY},
        "destination": {"address": _SOCKET},
    },
    "parsed_path": ANY,
    "parsed_query": ANY,
    "route": {"app": ANY, "upstream": ANY, "path_prefix": ANY},
    "identity": {
        "authenticated": ANY,
        "method": ANY,
        "subject": ANY,
        "email": ANY,
        "groups": ANY,
        "amr": ANY,
        "acr": ANY,
        "auth_time": ANY,
        "issuer": ANY,
        "client_cert": ANY,
    },
    "now_ns": ANY,
    "signals": {
        "available": ANY,
        "reason": ANY,
        "new_source_ip": ANY,
        "recent_denies": ANY,
        "concurrent_sessions": ANY,
    },
}
_BODY = (
    "from the request body Envoy buffers (with_request_body), where the gateway "
    "decides before any body"
)
# What OPA-Envoy's input holds where the gateway's has nothing, and where Envoy takes it.
ENVOY_SETS: dict[Path, str] = {
    ("attributes", "request", "http", "body"): _BODY,
    ("attributes", "request", "http", "raw_body"): _BODY,
    ("attributes", "request", "http", "size"): "to the request's size in bytes",
    ("attributes", "request", "http", "query"): "always empty: the query is in path",
    ("attributes", "request", "http", "fragment"): "always empty",
    ("attributes", "request", "time"): "to when Envoy got the request, where the gateway "
    "has input.now_ns",
    ("attributes", "source", "certificate"): "to the client certificate's PEM "
    "(include_peer_certificate), where the gateway has its fields in input.identity.client_cert",
    ("attributes", "source", "service"): "from x-envoy-downstream-service-cluster",
    ("attributes", "source", "labels"): "from the Envoy node's metadata",
    ("attributes", "destination", "principal"): "from Envoy's own server certificate",
    ("attributes", "destination", "certificate"): "to Envoy's own server certificate",
    ("attributes", "destination", "service"): "from Envoy's configuration",
    ("attributes", "destination", "labels"): "from the Envoy node's metadata",
    ("attributes", "contextExtensions"): "from the route's ext_authz configuration, where the "
    "gateway has input.route",
    ("attributes", "metadataContext"): "from other Envoy filters' dynamic metadata",
    ("attributes", "routeMetadataContext"): "from the Envoy route's metadata",
    ("attributes", "tlsSession"): "to the TLS SNI Envoy saw",
    ("parsed_body",): _BODY,
    ("truncated_body",): _BODY,
    ("version",): "to the ext_authz API version and encoding",
    ("source_principal",): "to attributes.source.principal, which the gateway sets too",
}


_HEADERS = ("attributes", "request", "http", "headers")


def never_provided(path: Path) -> str | None:
    """Why the decision input never holds ``path`` (a read under `input`), or None
    when it may."""
    node = PROVIDED
    for depth, key in enumerate(path):
        if node is ANY:
            if path[:depth] != _HEADERS:
                return None
            if key in PSEUDO_HEADERS:
                return (
                    f"it is Envoy's pseudo-header {key}, which no HTTP/1.1 request has, "
                    f"where the gateway has {PSEUDO_HEADERS[key]}"
                )
            if key != key.lower():
                return "header names are lower case there, as in Envoy's input"
            return None
        if key not in node:
            envoy = ENVOY_SETS.get(path[: depth + 1])
            return (
                f"OPA-Envoy sets it {envoy}" if envoy else 'it is not in README "Decision contract"'
            )
        node = node[key]
    return None


def rego_ref(path: Path) -> str:
    """``path`` under `input` as Rego writes it (`input.a["x-b"]`)."""
    return "input" + "".join(
        f".{key}" if key.isidentifier() and key.isascii() else f"[{json.dumps(key)}]"
        for key in path
    )


def unprovided_reads(compiled: CompiledPolicy) -> list[Problem]:
    """A warning for each input path the gateway's decision (its modules and what
    they reach through `data`; not tests) reads and the decision input never
    holds, at the first place each module reads it."""
    texts = {module.file: module.text for module in compiled.policy_set.modules}
    problems = []
    for shape in deciding_modules_reached(compiled.shapes, DECISION_PATH):
        for path in sorted(shape.input_reads):
            why = never_provided(path)
            if why is None:
                continue
            line, col = shape.input_read_at.get(path, (shape.package_line or 0, 0))
            lines = texts.get(shape.file, "").splitlines()
            if col and 0 < line <= len(lines):
                col = character_column(lines[line - 1], col)
            message = (
                f"warning: reads {rego_ref(path)}, which the gateway never sets: {why}; a rule "
                "that needs it never fires, and a `not` of it always holds"
            )
            problems.append(Problem(shape.file, message, line or None, col or None))
    return problems


def _has_protocol(document: dict[str, Any]) -> bool:
    # A hand-edited log (--no-verify) may hold anything on the way: not a crash.
    node: Any = document
    for key in ("attributes", "request", "http"):
        node = node.get(key) if type(node) is dict else None
    return type(node) is dict and "protocol" in node


def _always(document: dict[str, Any]) -> bool:
    return True


def _unauthenticated(document: dict[str, Any]) -> bool:
    identity = document.get("identity")
    return not isinstance(identity, dict) or identity.get("authenticated") is not True


# The keys of the contract a decision input leaves out of some requests, and how a
# logged input shows that its request had none (rather than that the gateway which
# wrote it didn't set the key yet). Any other key of the tree above is in every
# decision input, so a logged one without it was written before the key existed
# (or lost it on the way): the live input would hold it.
LEFT_OUT: dict[Path, Any] = {
    # Set with a client certificate's principal since the commit that added protocol.
    ("attributes", "source", "principal"): _has_protocol,
    # Only in the input of a request the parser refused: never a policy decision's.
    ("attributes", "request", "http", "request_line"): _always,
    # Only with shared state (the gateway's config, not its version).
    ("signals",): _always,
    **{("identity", key): _unauthenticated for key in PROVIDED["identity"]},
}
del LEFT_OUT[("identity", "authenticated")], LEFT_OUT[("identity", "method")]


def contract_leaves(read: Path) -> list[Path]:
    """The paths of the contract tree a read of ``read`` depends on: ``read`` cut
    where the tree's value may hold anything (a header map, a list), or every
    such path under it (a bare `input` reads them all); none for a path the
    gateway never sets (`policy check` warns of those)."""
    node = PROVIDED
    for depth, key in enumerate(read):
        if node is ANY:
            return [read[:depth]]
        if key not in node:
            return []
        node = node[key]
    return list(_leaves(node, read))


def left_out_of_every_log(leaf: Path) -> bool:
    """Whether a decision input without ``leaf`` always says its request had none
    (the key depends on the gateway's config or the request, never its version)."""
    return any(LEFT_OUT.get(leaf[:depth]) is _always for depth in range(1, len(leaf) + 1))


def _leaves(node: dict[str, Any], at: Path) -> Any:
    if node is ANY:
        yield at
        return
    for key, child in node.items():
        yield from _leaves(child, (*at, key))
