"""A policy ported from OPA-Envoy (opa-envoy-plugin, Envoy's ext_authz input) reads
the fields Envoy sets where Envoy sets them. A DENY rule reading a field the
gateway never set was undefined, so it never fired: the ported policy let through
what it stopped under Envoy, with no error anywhere. Real TLS handshakes and
requests against the gateway; `openssl` (what Envoy prints a subject with) is
the oracle for the principal of a certificate without a URI SAN."""

from __future__ import annotations

import gc
import logging
import ssl
import subprocess
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import Route
from gateway.mtls.subject import CertificateRejected, certificate_identity, envoy_principal
from gateway.policy.decision import decision_input
from gateway.policy.input_contract import PROVIDED, contract_leaves, never_provided
from gateway.screening.paths import normalize
from portcullis.replay.comparable import lacked_under
from tests.conftest import FIXTURES
from tests.gateway_stack import ServerFactory, free_port, raw_request, start_stack
from tests.test_attack_client_certificate_subjects import WORKLOAD, gateway, refused
from tests.test_gateway_transport import make_cert
from tests.test_policy_cli import portcullis

pytestmark = pytest.mark.timeout(60)
PORTED_FIXTURE = FIXTURES / "policies/ported_from_envoy"

# As a security team ports it from OPA-Envoy: deny by default, allow what is not
# denied, the denies written against Envoy's input.
PORTED = """package portcullis.gateway
import rego.v1

denied contains "blocked workload" if {
\tinput.attributes.source.principal == "%s"
}

denied contains "HTTP/1.0 is not allowed" if {
\tinput.attributes.request.http.protocol == "HTTP/1.0"
}

denied contains "not the public listener" if {
\tinput.attributes.destination.address.socketAddress.portValue != %d
}

decision := {"allow": count(denied) == 0, "reasons": sort(denied)}
"""


# A SAN that is neither a URI nor a DNS name: Envoy's principal is then the subject.
_MAIL = x509.RFC822Name("wms-sync@store.example")


def _organisation(name: str = "Store") -> x509.RelativeDistinguishedName:
    return x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])


def _cn(name: str) -> x509.RelativeDistinguishedName:
    return x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _paths(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every path to a leaf of a JSON object (an empty object is a leaf)."""
    if not isinstance(value, dict) or not value:
        return [path]
    return [leaf for key, inner in value.items() for leaf in _paths(inner, (*path, key))]


def _holds_the_contract(document: dict[str, Any]) -> None:
    """The policy check's contract (input_contract.PROVIDED) is what the gateway
    sent: no path of a real input is warned about as never set, and every field
    the contract names but `signals` (only with shared_state) and `request_line`
    (only for a request the parser refused) is in it, and `source.principal`
    with a client certificate."""
    assert [path for path in _paths(document) if never_provided(path)] == []
    sent = _paths(document)
    optional = {"signals", "request_line"}
    if not document["identity"].get("client_cert"):
        optional.add("principal")
    for named in _paths(PROVIDED):
        if not optional.intersection(named):
            assert any(path[: len(named)] == named for path in sent), named
    http = document["attributes"]["request"]["http"]
    assert set(PROVIDED["attributes"]["request"]["http"]) - set(http) == {"request_line"}
    # What replay takes for a field an older gateway didn't log: never a live input's.
    lacking = [
        leaf
        for leaf in contract_leaves(())
        if lacked_under(document, leaf[:-1], frozenset(leaf[-1:]))
    ]
    assert lacking == []


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_a_ported_envoy_deny_on_source_principal_still_fires(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """Envoy's source.principal is the client certificate's URI SAN (a SPIFFE ID),
    else its DNS SAN, else its subject in RFC 2253 form: a deny naming any fires,
    for that certificate only (an e-mail SAN is none of them)."""
    blocked_dn = "CN=wms-sync,O=Store"
    for blocked, subject, sans in (
        (WORKLOAD, [_organisation()], [x509.UniformResourceIdentifier(WORKLOAD)]),
        (blocked_dn, [_organisation(), _cn("wms-sync")], [_MAIL]),
    ):
        directory = tmp_path / str(len(blocked))
        directory.mkdir()
        async with gateway(aiohttp_server, directory, PORTED % (blocked, -1)) as running:
            # The listener's port is the gateway's own pick: the policy says it now.
            policy = directory / "policy" / "decision.rego"
            policy.write_text(PORTED % (blocked, _port_of(running.base)))
            await running.stack.gateway.policy.reload("test")
            status, body, _ = await running.get(running.client("blocked", subject, sans))
            assert status == 403, body
            assert body["reasons"] == ["blocked workload"], body
            (event,) = await running.stack.events()
            assert event["input"]["attributes"]["source"]["principal"] == blocked
            _holds_the_contract(event["input"])
            other = running.client("other", [_organisation("Depot"), _cn("wms-sync")], [_MAIL])
            status, body, _ = await running.get(other)
            assert status == 200, body
            events = await running.stack.events(at_least=2)
            assert events[-1]["input"]["attributes"]["source"]["principal"] == (
                "CN=wms-sync,O=Depot"
            )


async def test_a_ported_envoy_deny_on_a_dns_san_principal_fires(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """Envoy's principal for a certificate without a URI SAN is its first DNS SAN,
    not its subject (ext_authz's check_request_utils): the gateway gave the
    subject, so a ported deny naming a host's certificate never fired and the
    blocked host was let through. A certificate with no DNS SAN is its subject."""
    async with gateway(aiohttp_server, tmp_path, PORTED % ("kiosk-7.store.example", -1)) as running:
        policy = tmp_path / "policy" / "decision.rego"
        policy.write_text(PORTED % ("kiosk-7.store.example", _port_of(running.base)))
        await running.stack.gateway.policy.reload("test")
        sans: list[x509.GeneralName] = [
            _MAIL,
            x509.DNSName("kiosk-7.store.example"),
            x509.DNSName("kiosk.store.example"),
        ]
        kiosk = running.client("kiosk", [_organisation(), _cn("kiosk-7")], sans)
        status, body, _ = await running.get(kiosk)
        assert status == 403, body
        assert body["reasons"] == ["blocked workload"], body
        (event,) = await running.stack.events()
        assert event["input"]["attributes"]["source"]["principal"] == "kiosk-7.store.example"
        # Its second DNS name is not what Envoy names it by: no deny on it fires.
        policy.write_text(PORTED % ("kiosk.store.example", _port_of(running.base)))
        await running.stack.gateway.policy.reload("test")
        status, body, _ = await running.get(kiosk)
        assert status == 200, body
        assert len(running.stack.forwarded("wms")) == 1


# As ported from OPA-Envoy: the one service allowed, named by its subject.
ALLOW_BY_SUBJECT = """package portcullis.gateway
import rego.v1
decision := {
\t"allow": input.attributes.source.principal == "CN=wms-sync,O=Store",
\t"reasons": [sprintf("decided for %v", [input.attributes.source.principal])],
}
"""


async def test_a_san_spelled_like_another_certificates_subject_is_refused_not_its_principal(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """A certificate of CN=intruder whose DNS or URI SAN reads `CN=wms-sync,O=Store`
    (a CA that copies a request's SANs signs it) was principal
    `CN=wms-sync,O=Store`, the subject of the service a ported rule allows: it
    was let through as that service, with a bearer token or without. A SAN
    RFC 5280 forbids (no host name, no absolute URI, a NUL) is refused, 401 and
    logged; the service itself is still allowed."""
    async with gateway(aiohttp_server, tmp_path, ALLOW_BY_SUBJECT) as running:
        subject = [_organisation(), _cn("intruder")]
        for name, san, says in (
            ("dns", x509.DNSName("CN=wms-sync,O=Store"), "DNS SAN 'CN=wms-sync,O=Store'"),
            ("uri", x509.UniformResourceIdentifier("CN=wms-sync,O=Store"), "URI SAN 'CN="),
            ("nul", x509.DNSName("wms-sync\x00.store.example"), "is not a host name"),
            ("space", x509.UniformResourceIdentifier("urn:x CN=wms-sync"), "not an absolute"),
        ):
            await refused(running, running.client(name, subject, [san]), says)
        token = running.stack.token(groups=["warehouse"])
        forged = running.client("forged", subject, [x509.DNSName("CN=wms-sync,O=Store")])
        async with running.stack.session.get(
            f"{running.base}/wms/stock", ssl=forged, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            body = await response.json()
            assert response.status == 401 and "is not a host name" in body["reason"], body
        assert running.stack.total_forwarded() == 0
        status, body, _ = await running.get(
            running.client("wms-sync", [_organisation(), _cn("wms-sync")], [_MAIL])
        )
        assert status == 200, body


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.sampled_from(["DNS", "URI"]), st.text(max_size=24))
def test_a_san_the_gateway_takes_never_spells_a_subject(kind: str, value: str) -> None:
    """Whatever a SAN holds, the principal the gateway takes from it has no `=`
    unless after a URI's scheme and `:`, while a subject's has one before any
    `:` (`CN=...`), and no control character: no SAN is some subject's
    principal. Else the certificate is refused."""
    try:
        principal = envoy_principal({"subjectAltName": ((kind, value),)})
    except CertificateRejected:
        return
    assert principal == value
    assert principal.isascii() and principal.isprintable() and " " not in principal
    if "=" in principal:
        assert kind == "URI" and 0 < principal.index(":") < principal.index("=")


async def test_a_ported_envoy_deny_on_protocol_or_destination_still_fires(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """request.http.protocol ("HTTP/1.0", "HTTP/1.1" as Envoy names them) and
    destination.address (the listener the request came in on): a deny on
    either fires; a request neither denies passes."""
    policy = tmp_path / "policy"
    policy.mkdir()
    port = free_port()
    (policy / "decision.rego").write_text(PORTED % ("spiffe://nobody/x", port))
    async with start_stack(aiohttp_server, tmp_path, policy=policy, gateway_port=port) as stack:
        token = stack.token(groups=["warehouse"])
        head = f"GET /wms/stock HTTP/1.0\r\nHost: {{host}}\r\nAuthorization: Bearer {token}\r\n"
        status, _, body = await raw_request(stack.url, head.encode())
        assert status == 403, body
        assert b"HTTP/1.0 is not allowed" in body
        response = await stack.get("/wms/stock", token)
        assert response.status == 200, await response.text()
        (_, event) = await stack.events(at_least=2)
        _holds_the_contract(event["input"])
        attributes = event["input"]["attributes"]
        assert attributes["request"]["http"]["protocol"] == "HTTP/1.1"
        assert attributes["destination"]["address"]["socketAddress"] == {
            "address": "127.0.0.1",
            "portValue": port,
        }
        (policy / "decision.rego").write_text(PORTED % ("spiffe://nobody/x", port + 1))
        await stack.gateway.policy.reload("test")
        response = await stack.get("/wms/stock", token)
        assert response.status == 403
        assert (await response.json())["reasons"] == ["not the public listener"]
        assert len(stack.forwarded("wms")) == 1


# Attribute values with what RFC 2253 escapes: its specials, a leading `#` or
# space, a trailing space, non-ASCII letters (each UTF-8 byte as \\XX).
_VALUES = st.text(alphabet=st.sampled_from(list('ab Z09#,+"\\<>;=-.é日')), min_size=1, max_size=12)
_ATTRIBUTES = st.sampled_from(
    [
        NameOID.COMMON_NAME,
        NameOID.ORGANIZATION_NAME,
        NameOID.ORGANIZATIONAL_UNIT_NAME,
        NameOID.LOCALITY_NAME,
        NameOID.STATE_OR_PROVINCE_NAME,
        NameOID.STREET_ADDRESS,
        NameOID.GIVEN_NAME,
        NameOID.SURNAME,
    ]
)


@settings(derandomize=True, max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(_ATTRIBUTES, _VALUES), min_size=1, max_size=2), min_size=1, max_size=4
    )
)
def test_a_certificate_subject_is_the_principal_openssl_prints_for_envoy(
    tmp_path_factory: pytest.TempPathFactory, rdns: list[list[tuple[x509.ObjectIdentifier, str]]]
) -> None:
    """Envoy prints a subject with OpenSSL's (BoringSSL's) RFC 2253 flags; a ported
    rule compares that string byte for byte, so the gateway's must be the same."""
    directory = tmp_path_factory.mktemp("subject")
    name = x509.Name(
        [
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(oid, value) for oid, value in dict(rdn).items()]
            )
            for rdn in rdns
        ]
    )
    make_cert(directory, "leaf", None, subject=name, sans=[x509.DNSName("leaf.example")])
    pem = directory / "leaf.pem"
    printed = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", str(pem)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    peer = ssl._ssl._test_decode_cert(str(pem))  # type: ignore[attr-defined]
    # Its DNS SAN would be the principal: the subject is what a certificate without one gives.
    assert envoy_principal({"subject": peer["subject"]}) == printed.strip().removeprefix("subject=")


def _known(oid: x509.ObjectIdentifier) -> bool:
    """Whether this OpenSSL has a name for the attribute: one it doesn't is
    printed as the hex of its DER value, its string type with it, which
    Python's ssl doesn't give (README "Decision contract")."""
    try:
        ssl._ASN1Object.fromname(oid.dotted_string)
    except ValueError:
        return False
    return True


def test_an_attribute_openssl_abbreviates_is_named_in_the_principal_as_envoy_prints_it(
    tmp_path: Path,
) -> None:
    """Every attribute a subject may have, by the short name OpenSSL prints it with
    (`jurisdictionC`, not `jurisdictionCountryName`: the gateway kept the long name
    of any attribute outside a hand-written list), so a ported rule naming an EV
    certificate's or an e-mail subject's principal compares the same string."""
    two_letters = {NameOID.COUNTRY_NAME, NameOID.JURISDICTION_COUNTRY_NAME}
    skipped = {NameOID.X500_UNIQUE_IDENTIFIER}  # a BIT STRING, not text
    oids = [
        oid
        for oid in vars(NameOID).values()
        if isinstance(oid, x509.ObjectIdentifier) and oid not in skipped and _known(oid)
    ]
    attributes = [
        x509.NameAttribute(oid, "US" if oid in two_letters else f"v{index}")
        for index, oid in enumerate(oids)
    ]
    name = x509.Name([x509.RelativeDistinguishedName([attribute]) for attribute in attributes])
    make_cert(tmp_path, "leaf", None, subject=name, sans=[_MAIL])
    pem = tmp_path / "leaf.pem"
    printed = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", str(pem)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    peer = ssl._ssl._test_decode_cert(str(pem))  # type: ignore[attr-defined]
    assert "jurisdictionC=US" in printed
    assert envoy_principal(peer) == printed.strip().removeprefix("subject=")


def test_subjects_of_ever_new_attribute_oids_do_not_grow_the_gateways_memory() -> None:
    """A CA that copies a request's subject signs attributes of any OID: each one
    OpenSSL has no name for is its dotted OID, and the short name looked up for
    it was kept for good, one entry per OID ever seen. Certificates of fresh
    OIDs (each a few hundred of them, on every request with a bearer token too)
    grew the process without bound; what is kept is bounded."""
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for batch in range(100):
            subject = tuple(((f"1.3.6.1.4.1.99999.{batch}.{index}", "x"),) for index in range(200))
            envoy_principal({"subject": subject})
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 300_000, f"{grown} bytes kept after 20,000 OIDs"


def test_policy_check_names_an_envoy_field_the_gateway_never_sets() -> None:
    """Each read of a field OPA-Envoy sets and the gateway doesn't (a body, a
    pseudo-header, contextExtensions) or a header name no input holds (upper
    case), at its file:line:col, with what to read instead; the fields the
    gateway does set (source.principal, protocol) pass. Warnings: the policy
    still loads."""
    result = portcullis("policy", "check", str(PORTED_FIXTURE))
    assert result.returncode == 0, result.stderr
    assert "4 never-set input warnings" in result.stdout
    rego = PORTED_FIXTURE / "decision.rego"
    warnings = result.stderr.strip().splitlines()
    expected = [
        (14, 9, 'input.attributes.request.http.headers[":authority"]', "request.http.host"),
        (16, 9, "input.parsed_body.amount", "with_request_body"),
        (18, 9, 'input.attributes.request.http.headers["X-Debug"]', "lower case"),
        (20, 9, "input.attributes.contextExtensions.tier", "input.route"),
    ]
    assert len(warnings) == len(expected), warnings
    for warning, (line, col, ref, hint) in zip(warnings, expected, strict=True):
        assert warning.startswith(f"{rego}:{line}:{col}: warning: reads {ref}, which the gateway")
        assert hint in warning and "never fires" in warning


async def test_the_gateway_warns_at_load_of_a_field_it_never_sets(
    aiohttp_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same warnings in the gateway's log when it loads the policy (and at
    every reload), where an operator who never ran `policy check` sees them."""
    with caplog.at_level(logging.WARNING, logger="portcullis.policy"):
        async with start_stack(aiohttp_server, tmp_path, policy=PORTED_FIXTURE):
            pass
    said = [r.getMessage() for r in caplog.records if "which the gateway never sets" in r.message]
    assert len(said) == 4, said
    assert any("input.parsed_body.amount" in line for line in said)


def test_a_ported_principal_deny_fires_for_a_client_that_hung_up_before_the_decision(
    tmp_path: Path,
) -> None:
    """The principal was read off the connection when the decision input was
    built: a client that closed its connection after sending (aiohttp runs the
    handler on, and the upstream still gets the request) had no principal, so
    a deny on it didn't fire. It is the identity's, taken with the certificate."""
    ca = make_cert(tmp_path, "store-ca", None, ca=True)
    make_cert(
        tmp_path, "blocked", ca, subject=x509.Name([_organisation()]),
        sans=[x509.UniformResourceIdentifier(WORKLOAD)],
    )  # fmt: skip
    peer = ssl._ssl._test_decode_cert(str(tmp_path / "blocked.pem"))  # type: ignore[attr-defined]
    identity = certificate_identity(peer, "mtls:CN=store-ca")
    request = make_mocked_request("GET", "/wms/stock")
    request.protocol.transport = None  # as aiohttp's connection_lost leaves it
    assert request.transport is None
    route = Route("wms", "http://127.0.0.1:1", "/wms/")
    document = decision_input(request, normalize("/wms/stock"), route, identity, "id")
    assert document["attributes"]["source"]["principal"] == WORKLOAD
