"""Headers refused before routing (gateway/screening/headers.py): bytes that are not
UTF-8 never blank a decision-log record or become "policy evaluation failed", and
a Host that is not a host[:port] never reaches a backend's X-Forwarded-Host. And
headers a backend believes about the user (gateway/screening/trusted_headers.py):
no forward-auth proxy's identity header from a client reaches a backend."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.chain import REFUSAL_PATH
from gateway.audit.reader import verify_log
from gateway.audit.writer import DecisionLog
from gateway.config import load_config
from gateway.screening.headers import bad_host
from gateway.screening.trusted_headers import backend_trusted, fold
from gateway.server import Gateway
from tests.gateway_stack import ServerFactory, Stack, raw_request, start_stack

WAREHOUSE = {"groups": ["warehouse"], "amr": ["pwd", "otp"]}


@pytest.mark.parametrize(
    ("target", "extra", "name"),
    [
        (b"/wms/admin/users", b"X-Probe: \xe9\r\n", "X-Probe"),
        (b"/nothing-here", b"X-Probe: \xe9\r\n", "X-Probe"),
        (b"/wms/%2e%2e/pos/refunds", b"X-Probe: \xe9\r\n", "X-Probe"),
        (b"/wms/stock", b"X-Latin-1: caf\xe9 cr\xe8me\r\n", "X-Latin-1"),
    ],
)
async def test_non_utf8_header_is_a_logged_400_not_a_blank_record(
    stack: Stack, target: bytes, extra: bytes, name: str
) -> None:
    """The pen test: one `\\xe9` byte turned the record into {"unserialisable": ...}
    (no path, subject, address or outcome) and an allowed request into a 403."""
    token = stack.token("alice", **WAREHOUSE).encode()
    status, _, body = await raw_request(
        stack.url,
        b"GET " + target + b" HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer " + token
        + b"\r\n" + extra,
    )  # fmt: skip
    assert status == 400, body
    assert json.loads(body)["error"] == "bad_header"
    assert stack.total_forwarded() == 0
    (event,) = await stack.events()
    assert event["path"] == REFUSAL_PATH
    assert event["result"]["reasons"][0].startswith(f"gateway.bad_header: header '{name}'")
    http = event["input"]["attributes"]["request"]["http"]
    assert http["path"] == target.decode()
    assert "\ufffd" in http["headers"][name.lower()]
    assert event["input"]["attributes"]["source"]["address"]["socketAddress"]["address"]
    assert b"unserialisable" not in stack.log_path.read_bytes()


async def test_non_utf8_host_is_a_logged_400(stack: Stack) -> None:
    status, _, body = await raw_request(stack.url, b"GET /wms/stock HTTP/1.1\r\nHost: \xe9vil\r\n")
    assert status == 400, body
    (event,) = await stack.events()
    assert event["result"]["reasons"][0].startswith("gateway.bad_header: header 'Host'")
    assert event["input"]["attributes"]["request"]["http"]["host"] == "\ufffdvil"


async def test_decision_log_keeps_a_record_with_undecodable_text(tmp_path: Path) -> None:
    """Defence in depth: whatever reaches the writer with lone surrogates is written
    whole (escaped), never replaced by {"unserialisable"}, and the chain verifies."""
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "d.jsonl"
    key = ec.generate_private_key(ec.SECP256R1())
    log = DecisionLog(path, key, key_id="k")
    await log.start()
    given = {"attributes": {"request": {"http": {"path": "/wms/x", "headers": {"x": "\udce9"}}}}}
    log.record(decision_id="d-1", input=given, result={"allow": False}, revision="r", metrics={})
    await log.close()
    (line,) = [raw for raw in path.read_bytes().splitlines() if b'"decision_id"' in raw]
    event = json.loads(line)
    assert event["input"]["attributes"]["request"]["http"]["path"] == "/wms/x"
    assert event["input"]["attributes"]["request"]["http"]["headers"]["x"] == "\udce9"
    assert event["result"] == {"allow": False}
    assert verify_log([path], {"k": key.public_key()}).complete


@pytest.mark.parametrize(
    "host",
    [b"evil.example/<x>\"", b"", b"a b", b"[zz]", b"gw:99999", b"gw:80x", b"x'y", b"a%2fb"],
)  # fmt: skip
async def test_malformed_host_is_refused_before_routing(stack: Stack, host: bytes) -> None:
    """The pen test: `Host: evil.example/<x>"` reached a backend as X-Forwarded-Host
    on a 200, and an empty Host as ''."""
    token = stack.token("alice", **WAREHOUSE).encode()
    status, _, body = await raw_request(
        stack.url,
        b"GET /wms/stock HTTP/1.1\r\nHost: "
        + host
        + b"\r\nAuthorization: Bearer "
        + token
        + b"\r\n",
    )
    assert status == 400, body
    assert json.loads(body)["error"] == "bad_host"
    assert stack.total_forwarded() == 0
    (event,) = await stack.events()
    assert event["result"]["reasons"][0].startswith("gateway.bad_host: ")


@pytest.mark.parametrize("host", ["gw", "gw.example.com:8443", "127.0.0.1", "[::1]:80", "a_b"])
async def test_valid_host_reaches_the_backend_as_x_forwarded_host(stack: Stack, host: str) -> None:
    response = await stack.get(
        "/wms/stock", stack.token("alice", **WAREHOUSE), headers={"Host": host}
    )
    assert response.status == 200
    assert (await response.json())["headers"]["X-Forwarded-Host"] == host


# --- a route's host, whatever the Host header's spelling -----------------------------------


async def test_a_route_for_an_ipv6_host_matches_it_with_a_port(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The review: a route with `host: '[2001:db8::1]'` matched `Host: [2001:db8::1]`
    but was a 404 for `Host: [2001:db8::1]:8443`, while `example.com:8443` matched."""
    async with start_stack(aiohttp_server, tmp_path) as running:
        wms = running.config.routes[0]
        hosted = (replace(wms, host="[2001:db8::1]"), replace(wms, host="gw.example"))
        running.gateway.route_table.routes[:] = hosted  # no host-agnostic route to fall back on
        token = running.token("alice", **WAREHOUSE)
        for host in ("[2001:db8::1]:8443", "[2001:DB8:0::1]", "GW.example:8443", "gw.example"):
            response = await running.get("/wms/stock", token, headers={"Host": host})
            assert response.status == 200, host
            assert (await response.json())["headers"]["X-Forwarded-Host"] == host
        response = await running.get("/wms/stock", token, headers={"Host": "[2001:db8::2]:8443"})
        assert response.status == 404
        event = (await running.events(at_least=5))[0]
        assert event["input"]["attributes"]["request"]["http"]["host"] == "[2001:db8::1]:8443"


async def test_a_host_with_the_trailing_dot_of_its_full_name_matches_its_own_route(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The review: `Host: gw.example.` (the fully qualified spelling, which DNS
    resolves as `gw.example`) missed the route with `host: gw.example` and fell
    through to a route for any host: another app than the one that host serves."""
    async with start_stack(aiohttp_server, tmp_path) as running:
        wms, pos = running.config.routes[0], running.config.routes[1]
        fallback = replace(pos, path_prefix=wms.path_prefix, host=None)  # POS, for any host
        running.gateway.route_table.routes[:] = (replace(wms, host="gw.example"), fallback)
        token = running.token("alice", **WAREHOUSE)
        for host in ("gw.example.", "GW.Example.:8443", "gw.example"):
            assert (
                running.gateway.route_table.match(host, "/wms/stock")
                is running.gateway.route_table.routes[0]
            ), host
            response = await running.get("/wms/stock", token, headers={"Host": host})
            assert response.status == 200, host
            assert (await response.json())["headers"]["X-Forwarded-Host"] == host
        for host in ("gw.example..", "other.example.", "gw.example.com"):
            assert running.gateway.route_table.match(host, "/wms/stock") is fallback, host


IPV6 = st.ip_addresses(v=6)


def _spell(address: ipaddress.IPv6Address, exploded: bool, upper: bool, port: int | None) -> str:
    text = address.exploded if exploded else address.compressed
    text = f"[{text.upper() if upper else text}]"
    return text if port is None else f"{text}:{port}"


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(
    address=IPV6, route_exploded=st.booleans(), route_upper=st.booleans(),
    exploded=st.booleans(), upper=st.booleans(),
    port=st.one_of(st.none(), st.integers(0, 65535)), other=IPV6,
)  # fmt: skip
def test_any_spelling_of_an_ipv6_host_matches_its_route_and_only_it(
    tmp_path_factory: pytest.TempPathFactory,
    address: ipaddress.IPv6Address,
    route_exploded: bool,
    route_upper: bool,
    exploded: bool,
    upper: bool,
    port: int | None,
    other: ipaddress.IPv6Address,
) -> None:
    """A route's `host` as the config spells it and the request's Host (case, zeros,
    with or without a port) name one address; another address never matches it."""
    config = tmp_path_factory.mktemp("config") / "gateway.yaml"
    route_host = _spell(address, route_exploded, route_upper, None)
    config.write_text(
        f"auth: false\nroutes: [{{app: wms, host: '{route_host}', upstream: 'http://w'}}]\n"
    )
    gateway = Gateway(load_config(config))
    request_host = _spell(address, exploded, upper, port)
    assert bad_host(request_host) is None
    assert gateway.route_table.match(request_host, "/x") is gateway.route_table.routes[0], (
        route_host,
        request_host,
    )
    if other != address:
        assert gateway.route_table.match(_spell(other, exploded, upper, port), "/x") is None


def test_host_syntax() -> None:
    assert bad_host("[fe80::1%25eth0]") is not None  # a zone id names the client's interface
    assert bad_host("[v1.fe]:80") is None  # IPvFuture
    assert bad_host("a" * 300) is not None
    assert bad_host("gw:") is None  # RFC 3986: port = *DIGIT


# --- forward-auth identity headers never come from a client --------------------------------

# The identity set of each well-known forward-auth or access proxy, as it hands it to
# a backend. The pen test's repro: Remote-Groups: admins reached the backend next to a
# stripped Remote-User.
FORWARD_AUTH_IDENTITY = [
    # Authelia, Tinyauth
    "Remote-User", "Remote-Groups", "Remote-Email", "Remote-Name",
    # Keycloak Gatekeeper, Louketo proxy
    "X-Auth-Userid", "X-Auth-Username", "X-Auth-Subject", "X-Auth-Email", "X-Auth-Groups",
    "X-Auth-Roles", "X-Auth-Audience", "X-Auth-ExpiresIn",
    # Grafana's auth proxy (its documented `headers` example) and caddy-tailscale
    "X-WEBAUTH-USER", "X-WEBAUTH-EMAIL", "X-WEBAUTH-NAME", "X-WEBAUTH-GROUPS",
    "X-WEBAUTH-ROLE",
    # authentik
    "X-authentik-username", "X-authentik-groups", "X-authentik-email", "X-authentik-uid",
    "X-authentik-entitlements", "X-authentik-jwt",
    # oauth2-proxy (both spellings: its X-Forwarded-* set is the gateway's own)
    "X-Auth-Request-Groups", "X-Auth-Request-Preferred-Username", "X-Forwarded-User",
    "X-Forwarded-Email", "X-Forwarded-Groups", "X-Forwarded-Preferred-Username",
    # Pomerium
    "X-Pomerium-Jwt-Assertion", "X-Pomerium-Claim-Email", "X-Pomerium-Claim-Groups",
    # Vouch Proxy
    "X-Vouch-User", "X-Vouch-Idp-Claims-Groups",
    # Cloudflare Access, Google IAP, AWS ALB and Verified Access, Azure App Service
    "Cf-Access-Authenticated-User-Email", "Cf-Access-Jwt-Assertion",
    "X-Goog-Iap-Jwt-Assertion", "X-Goog-Authenticated-User-Email", "X-Amzn-Oidc-Data",
    "X-Amzn-Ava-User-Context", "X-MS-Client-Principal", "X-MS-Token-AAD-Id-Token",
    # Teleport, Tailscale Serve, caddy-security, APISIX, mod_auth_openidc, Kubernetes
    "Teleport-Jwt-Assertion", "Tailscale-User-Login", "Tailscale-App-Capabilities",
    "X-Token-User-Email", "X-Token-User-Roles", "X-Token-Subject", "X-ID-Token",
    "OIDC_CLAIM_groups", "X-Remote-Uid",
]  # fmt: skip
# What clients legitimately send a backend themselves: credentials, not claims.
CLIENT_CREDENTIALS = [
    "X-Auth-Token", "X-Api-Key", "X-Access-Token", "Cf-Access-Client-Id",
    "Cf-Access-Client-Secret", "X-Auth-Key",
]  # fmt: skip


async def only_kept_reach_the_backend(stack: Stack, spoofed: list[str], kept: list[str]) -> None:
    """An allowed request carrying every ``spoofed`` and ``kept`` header: none of the
    first reach the backend (in any spelling), each of the second does, unchanged."""
    sent = {name: f"spoofed-{number}" for number, name in enumerate(spoofed)}
    clean = {name: f"kept-{number}" for number, name in enumerate(kept)}
    response = await stack.get(
        "/wms/stock", stack.token("alice", **WAREHOUSE), headers={**sent, **clean}
    )
    assert response.status == 200
    (received,) = stack.forwarded("wms")
    reached = {name for name, value in received.headers.items() if value.startswith("spoofed-")}
    assert reached == set()
    for name, value in clean.items():
        assert received.headers.get(name) == value, name


async def test_spoofed_forward_auth_groups_and_email_never_reach_the_backend(
    stack: Stack,
) -> None:
    """The pen test: with Remote-User stripped, `Remote-Groups: admins` still reached a
    backend that authorizes on Authelia's headers, and X-Auth-Roles one behind Louketo."""
    await only_kept_reach_the_backend(stack, FORWARD_AUTH_IDENTITY, CLIENT_CREDENTIALS)


IDENTITY_PREFIXES = [
    "X-authentik-", "X-Pomerium-Claim-", "X-Vouch-Idp-Claims-", "X-WebAuth-", "X-MS-Token-",
    "Tailscale-User-", "X-Token-User-", "OIDC_CLAIM_", "X-Amzn-Ava-",
]  # fmt: skip


def _spellings(names: list[str], prefixes: list[str]) -> st.SearchStrategy[str]:
    """A header of the set, or any name under one of its prefixes."""
    suffixes = st.text("abcdefghijklmnopqrstuvwxyz-_", min_size=1, max_size=12)
    return st.one_of(
        st.sampled_from(names),
        st.builds(str.__add__, st.sampled_from(prefixes), suffixes),
    )


@pytest.mark.parametrize("kind", ["forward-auth identity", "client certificate"])
@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    data=st.data(),
    case=st.lists(st.booleans(), min_size=40, max_size=40),
    underscores=st.booleans(),
)
def test_any_spelling_of_a_trusted_header_is_stripped(
    kind: str, data: st.DataObject, case: list[bool], underscores: bool
) -> None:
    """Any case, `_` for `-` (CGI reads both as one variable), any claim a proxy maps
    to a header under its prefix (Pomerium, Vouch, authentik add one per claim), any
    field a TLS front adds under its client-certificate prefix (-Serial, -Not-After)."""
    if kind == "client certificate":
        name = data.draw(_spellings(CLIENT_CERTIFICATE, CLIENT_CERTIFICATE_PREFIXES))
    else:
        name = data.draw(_spellings(FORWARD_AUTH_IDENTITY, IDENTITY_PREFIXES))
    spelled = "".join(c.upper() if up else c.lower() for c, up in zip(name, case, strict=False))
    spelled += name[len(case) :]
    if underscores:
        spelled = spelled.replace("-", "_")
    assert backend_trusted(fold(spelled)) or fold(spelled).startswith("x-forwarded-"), spelled


@pytest.mark.parametrize("name", CLIENT_CREDENTIALS)
def test_client_credentials_are_not_mistaken_for_identity_headers(name: str) -> None:
    assert not backend_trusted(fold(name))


# --- a client certificate is the TLS front's word, never a client's -------------------------

# How TLS-terminating fronts hand a backend the client certificate they verified.
CLIENT_CERTIFICATE = [
    # nginx and HAProxy setups
    "X-SSL-Client-Cert", "X-SSL-Client-Verify", "X-SSL-Client-S-DN", "X-SSL-Client-I-DN",
    "X-SSL-Client-Serial", "X-SSL-Client-Fingerprint", "X-SSL-Cert", "X-SSL",
    "X-Client-Cert", "X-Client-Certificate", "X-Client-Verify", "X-Client-DN",
    # Envoy (XFCC), Traefik
    "X-Forwarded-Client-Cert", "X-Forwarded-Tls-Client-Cert",
    # ingress-nginx, Apache mod_ssl, Tomcat's SSLValve
    "Ssl-Client-Cert", "Ssl-Client-Verify", "Ssl-Client-Subject-DN", "SSL_CLIENT_S_DN",
    # IIS ARR / Azure App Service, RFC 9440, AWS ALB, Cloudflare, Google Cloud LB
    "X-ARR-ClientCert", "Client-Cert", "Client-Cert-Chain", "X-Amzn-Mtls-Clientcert",
    "X-Amzn-Mtls-Clientcert-Subject", "Cf-Cert-Verified", "Cf-Cert-Subject-DN",
    "X-Client-Cert-Present", "X-Tls-Client-Cert",
]  # fmt: skip
# Client headers that share a stem with those and are no certificate.
NOT_A_CERTIFICATE = ["X-Client-Id", "X-Client-Version", "X-Client-Name", "X-SSLify"]


async def test_a_forged_client_certificate_header_never_reaches_the_backend(
    stack: Stack,
) -> None:
    """The review: `X-SSL-Client-Verify: SUCCESS` and `X-SSL-Client-S-DN: CN=admin` from
    a client reached a backend that trusts its TLS front for them: an mTLS login
    forged with two headers."""
    await only_kept_reach_the_backend(stack, CLIENT_CERTIFICATE, NOT_A_CERTIFICATE)


async def test_a_route_that_lists_a_client_certificate_header_takes_it_from_the_client(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """As for any header a backend trusts: only the `-` spelling the route lists."""
    async with start_stack(aiohttp_server, tmp_path) as running:
        wms = replace(running.config.routes[0], forward_headers=frozenset({"x-ssl-client-s-dn"}))
        running.gateway.route_table.routes[:] = [wms]
        response = await running.get(
            "/wms/stock",
            running.token("alice", **WAREHOUSE),
            headers={
                "X-SSL-Client-S-DN": "CN=alice",
                "X_SSL_Client_S_DN": "CN=admin",
                "X-SSL-Client-Verify": "SUCCESS",
            },
        )
        assert response.status == 200
        (received,) = running.forwarded("wms")
        assert received.headers.getall("X-SSL-Client-S-DN") == ["CN=alice"]
        assert "X-SSL-Client-Verify" not in received.headers


CLIENT_CERTIFICATE_PREFIXES = [
    "X-SSL-", "Ssl-Client-", "X-Client-Cert", "X-Amzn-Mtls-", "Cf-Cert-", "X-Tls-Client-",
]  # fmt: skip
