"""Whom a client certificate names. The gateway took the common name from a dict
of the subject's RDNs: a subject with two (`CN=wms-sync, CN=admin`, as a CA that
copies a CSR's subject signs it) was whichever came last, and one with none was
authenticated as no one (subject null: no lockout, no rate limit, `sub` null in
the assertion). A SPIFFE workload's certificate (its ID a URI SAN, no CN) could
not be used. Real TLS handshakes against the gateway; a policy that allows every
authenticated identity, so only the gateway stands between a refused
certificate and the backend."""

from __future__ import annotations

import contextlib
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.assertion import HEADER as ASSERTION_HEADER
from gateway.audit.chain import REFUSAL_PATH
from gateway.config import Listener, TlsConfig
from gateway.mtls.subject import CertificateRejected, certificate_subject
from tests.gateway_stack import ServerFactory, Stack, free_port, logged, start_stack
from tests.test_gateway_transport import make_cert

pytestmark = pytest.mark.timeout(60)
CA = "mtls:CN=store-ca"
WORKLOAD = "spiffe://store.example/ns/wms/sa/sync"
WORKLOAD = "spiffe://store.example/ns/wms/sa/sync"
# Allows any authenticated identity, and says whom it decided for.
POLICY = """package portcullis.gateway
import rego.v1
decision := {
\t"allow": input.identity.authenticated == true,
\t"reasons": [sprintf("decided for %v", [input.identity.subject])],
}
"""


def _cn(*names: str) -> x509.RelativeDistinguishedName:
    return x509.RelativeDistinguishedName(
        [x509.NameAttribute(NameOID.COMMON_NAME, name) for name in names]
    )


def _units(*units: str) -> x509.RelativeDistinguishedName:
    return x509.RelativeDistinguishedName(
        [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit) for unit in units]
    )


def _organisation() -> x509.RelativeDistinguishedName:
    return x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Store")])


@dataclass
class Gateway:
    stack: Stack
    base: str
    directory: Path
    ca: tuple[x509.Certificate, Any]

    def client(
        self,
        name: str,
        subject: list[x509.RelativeDistinguishedName],
        sans: list[x509.GeneralName] | None = None,
    ) -> ssl.SSLContext:
        """A client presenting a certificate of this subject and SANs, issued by store-ca."""
        make_cert(self.directory, name, self.ca, subject=x509.Name(subject), sans=sans)
        context = ssl.create_default_context(cafile=str(self.directory / "store-ca.pem"))
        context.load_cert_chain(self.directory / f"{name}.pem", self.directory / f"{name}.key")
        return context

    async def get(self, context: ssl.SSLContext) -> tuple[int, dict[str, Any], str]:
        """GET /wms/stock with this client's certificate: the status, the JSON body
        and the WWW-Authenticate header."""
        async with self.stack.session.get(f"{self.base}/wms/stock", ssl=context) as response:
            body = await response.json(content_type=None)
            return response.status, body, response.headers.get("WWW-Authenticate", "")


@contextlib.asynccontextmanager
async def gateway(
    aiohttp_server: ServerFactory, tmp_path: Path, policy_text: str = POLICY
) -> AsyncIterator[Gateway]:
    """A gateway whose TLS listener trusts store-ca, under the allow-any policy
    (or `policy_text`)."""
    ca = make_cert(tmp_path, "store-ca", None, ca=True)
    make_cert(tmp_path, "server", ca)
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "decision.rego").write_text(policy_text)
    port = free_port()
    tls = TlsConfig(tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "store-ca.pem")
    async with start_stack(
        aiohttp_server, tmp_path, policy=policy, gateway_port=port,
        listeners=(Listener("127.0.0.1", port, tls=tls),),
    ) as stack:  # fmt: skip
        yield Gateway(stack, f"https://localhost:{port}", tmp_path, ca)


async def refused(running: Gateway, context: ssl.SSLContext, says: str) -> dict[str, Any]:
    """The certificate is refused at the gateway: a 401 whose reason `says` so, its
    refusal in the decision log, and nothing upstream. The refusal's event."""
    status, body, challenge = await running.get(context)
    assert status == 401, body
    assert body["error"] == "invalid_client_certificate", body
    assert says in body["reason"] and CA in body["reason"], body
    assert challenge.startswith("Bearer"), challenge
    (event,) = await logged(running.stack, body["decision_id"])
    assert event["path"] == REFUSAL_PATH
    assert event["result"]["allow"] is False and event["result"]["http_status"] == 401
    assert event["result"]["reasons"] == [f"gateway.invalid_client_certificate: {body['reason']}"]
    assert event["input"]["identity"] == {"authenticated": False, "method": "none"}
    assert running.stack.total_forwarded() == 0
    return event


async def test_a_certificate_with_two_common_names_is_refused_not_read_as_either(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """`CN=wms-sync, CN=admin` in two RDNs, as a CA that copies a CSR's subject
    signs it: the gateway was "admin" (the last); in the other order it would be
    "wms-sync". Neither: refused as ambiguous, whichever comes first."""
    async with gateway(aiohttp_server, tmp_path) as running:
        for name, order in (
            ("admin-last", ("wms-sync", "admin")),
            ("admin-first", ("admin", "wms-sync")),
        ):
            client = running.client(name, [_organisation(), *(_cn(cn) for cn in order)])
            event = await refused(running, client, "subject is ambiguous: 2 common names")
            assert "'wms-sync'" in event["result"]["reasons"][0]


async def test_two_common_names_in_one_multi_valued_rdn_are_refused_not_read_as_either(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """`CN=wms-sync+CN=admin`, one RDN of two values (its DER order is the
    encoder's, not the requester's): refused as ambiguous too."""
    async with gateway(aiohttp_server, tmp_path) as running:
        client = running.client("multi-valued", [_cn("wms-sync", "admin")])
        await refused(running, client, "subject is ambiguous: 2 common names")


async def test_a_spiffe_workload_certificate_without_a_common_name_is_its_spiffe_id(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """An X.509-SVID: no CN, its SPIFFE ID the one URI SAN. Its subject is the ID,
    in the policy input (the policy decides for it), the decision log and the
    assertion the backend gets (with `sub_id` scoped by the CA). It was
    authenticated with subject null."""
    async with gateway(aiohttp_server, tmp_path) as running:
        sans = [x509.UniformResourceIdentifier(WORKLOAD), x509.DNSName("sync.wms.svc")]
        client = running.client("workload", [_organisation()], sans)
        status, body, _ = await running.get(client)
        assert status == 200, body
        (event,) = await running.stack.events()
        identity = event["input"]["identity"]
        assert (identity["method"], identity["subject"], identity["issuer"]) == (
            "mtls", WORKLOAD, CA,
        )  # fmt: skip
        assert event["result"]["reasons"] == [f"decided for {WORKLOAD}"]
        (forwarded,) = running.stack.forwarded("wms")
        claims = jwt.decode(
            forwarded.headers[ASSERTION_HEADER], options={"verify_signature": False}
        )
        assert claims["sub"] == WORKLOAD
        assert claims["sub_id"] == {"format": "iss_sub", "iss": CA, "sub": WORKLOAD}


async def test_a_spire_svid_with_a_dns_name_for_its_common_name_is_its_spiffe_id(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """SPIRE puts a workload's first DNS name in its SVID's CN: the gateway named
    the workload `sync.wms.svc`, a name the policy can't tell from another
    workload's (any workload registered with that DNS name gets it), where Envoy
    and Istio name it by its SPIFFE ID. The SVID's one URI SAN wins."""
    async with gateway(aiohttp_server, tmp_path) as running:
        sans = [x509.UniformResourceIdentifier(WORKLOAD), x509.DNSName("sync.wms.svc")]
        client = running.client("spire", [_organisation(), _cn("sync.wms.svc")], sans)
        status, body, _ = await running.get(client)
        assert status == 200, body
        (event,) = await running.stack.events()
        assert event["input"]["identity"]["subject"] == WORKLOAD


async def test_a_certificate_with_two_spiffe_ids_and_no_common_name_is_refused(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """Two SPIFFE IDs (an SVID has exactly one): which is the workload is the
    requester's pick. Refused, as naming no subject; it was authenticated as no one."""
    async with gateway(aiohttp_server, tmp_path) as running:
        sans = [
            x509.UniformResourceIdentifier(WORKLOAD),
            x509.UniformResourceIdentifier("spiffe://store.example/ns/pos/sa/admin"),
        ]
        client = running.client("two-ids", [_organisation()], sans)
        event = await refused(running, client, "names no subject")
        assert "2 URI SANs" in event["result"]["reasons"][0]


async def test_a_uri_san_that_is_not_one_spiffe_id_alone_is_no_subject(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """Without a CN only an X.509-SVID's ID is a subject: its one URI SAN, a SPIFFE
    ID. A SPIFFE ID beside another URI is not an SVID (which URI names the
    workload is then a reader's choice); an https URI is no SPIFFE ID."""
    async with gateway(aiohttp_server, tmp_path) as running:
        cases = {
            "beside-another": ([WORKLOAD, "https://store.example/admin"], "it has 2 URI SANs"),
            "https": (["https://store.example/wms"], "is not a SPIFFE ID"),
        }
        for name, (uris, says) in cases.items():
            sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
            client = running.client(name, [_organisation()], sans)
            event = await refused(running, client, "names no subject")
            assert says in event["result"]["reasons"][0], name


async def test_a_spiffe_id_beside_another_uri_san_is_refused_not_read_as_the_common_name(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The review: a certificate with a SPIFFE ID, a second URI SAN and a CN was
    the service its CN names. Issued as an X.509-SVID, it is one that X509-SVID
    5.2 has the validator refuse (exactly one URI SAN), and its CN is what SPIRE
    fills with a DNS name other workloads share, not its identity."""
    async with gateway(aiohttp_server, tmp_path) as running:
        cases = {
            "two-ids": [WORKLOAD, "spiffe://store.example/ns/pos/sa/admin"],
            "beside-https": [WORKLOAD, "https://store.example/admin"],
            "https-first": ["https://store.example/admin", WORKLOAD],
        }
        for name, uris in cases.items():
            sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
            client = running.client(name, [_organisation(), _cn("sync.wms.svc")], sans)
            event = await refused(running, client, "where an X.509-SVID has exactly one")
            assert f"it has {len(uris)} URI SANs" in event["result"]["reasons"][0], name


async def test_a_certificate_with_only_a_dns_name_and_no_common_name_is_refused(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """No CN, no URI SAN, a DNS name alone: no subject. It was authenticated with
    subject null (no lockout or rate limit keyed on it, `sub` null upstream)."""
    async with gateway(aiohttp_server, tmp_path) as running:
        client = running.client("dns-only", [_organisation()], [x509.DNSName("sync.example")])
        event = await refused(running, client, "names no subject")
        assert "no URI SAN" in event["result"]["reasons"][0]


async def test_a_certificate_whose_common_name_is_blank_is_refused(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """`CN= `: a name of nothing, refused as a token whose `sub` is blank is."""
    async with gateway(aiohttp_server, tmp_path) as running:
        client = running.client("blank", [_organisation(), _cn(" ")])
        await refused(running, client, "common name is blank")


async def test_a_common_name_with_a_control_character_is_refused_not_passed_on(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """`CN=admin\\0.wms-sync`, the null-prefix name a CA that checks a request's
    subject as a C string signs: the gateway took it whole and sent it on in the
    assertion, where a backend in C reads `admin`. A line break in one writes
    lines of its own into a text log. No CA names a service so: refused."""
    async with gateway(aiohttp_server, tmp_path) as running:
        for name, common_name in (("nul", "admin\x00.wms-sync"), ("newline", "wms-sync\nadmin")):
            attribute = x509.NameAttribute(NameOID.COMMON_NAME, common_name)
            client = running.client(name, [x509.RelativeDistinguishedName([attribute])])
            event = await refused(running, client, "has a control character")
            assert repr(common_name) in event["result"]["reasons"][0], name


async def test_a_common_name_shaped_like_a_spiffe_id_is_refused_not_taken_for_the_workload(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """`CN=spiffe://store.example/ns/wms/sa/sync`, no URI SAN: the gateway took
    the CN as the subject, the very string the workload's SVID from the same CA
    is, so a certificate whose common name its requester chose was that workload
    to the policy, the lockout and the backend. A common name is not a SPIFFE
    ID: refused, in any case of the scheme."""
    async with gateway(aiohttp_server, tmp_path) as running:
        for name, common_name in (("lower", WORKLOAD), ("upper", "SPIFFE://store.example/x")):
            client = running.client(
                name, [_organisation(), _cn(common_name)], [x509.DNSName("sync.wms.svc")]
            )
            event = await refused(running, client, "shaped like a SPIFFE ID")
            assert repr(common_name) in event["result"]["reasons"][0], name


# Allows a certificate of the stores unit, as a rule written for one OU reads it.
STORES_ONLY = """package portcullis.gateway
import rego.v1
default stores := false
stores if input.identity.client_cert.subject.organizationalUnitName == "stores"
decision := {"allow": stores, "reasons": ["decided by the certificate's unit"]}
"""


async def test_a_certificate_with_two_units_is_not_read_as_its_last_by_a_single_unit_rule(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """`OU=admin, OU=stores`, or one RDN of both, from a CA that copies a CSR's
    subject: `client_cert.subject` kept the last value, so a rule allowing
    `OU == "stores"` let in a certificate that is also admin (and, in the other
    order, a deny for `admin` missed it). An attribute the subject has twice is
    the list of its values there, which no string equals; `subject_values` has
    every attribute as a list, in the certificate's order, in the policy input
    and the decision log. One OU is its string, as before."""
    async with gateway(aiohttp_server, tmp_path, STORES_ONLY) as running:
        for name, units in (
            ("stores-last", [_units("admin"), _units("stores")]),
            ("stores-first", [_units("stores"), _units("admin")]),
            ("one-rdn", [_units("admin", "stores")]),
        ):
            client = running.client(name, [_cn("wms-sync"), *units])
            status, body, _ = await running.get(client)
            assert status == 403, (name, body)
            (event,) = await logged(running.stack, body["decision_id"])
            certificate = event["input"]["identity"]["client_cert"]
            assert sorted(certificate["subject"]["organizationalUnitName"]) == ["admin", "stores"]
            assert certificate["subject"]["commonName"] == "wms-sync"
            assert certificate["subject_values"]["commonName"] == ["wms-sync"]
            every_unit = certificate["subject_values"]["organizationalUnitName"]
            if name != "one-rdn":  # a SET's order is its DER encoding's, not the requester's
                assert every_unit == [unit.value for rdn in units for unit in rdn]
            assert sorted(every_unit) == ["admin", "stores"]
        client = running.client("stores", [_cn("wms-sync"), _units("stores")])
        status, body, _ = await running.get(client)
        assert status == 200, body
        assert running.stack.total_forwarded() == 1


async def test_the_trust_domains_own_spiffe_id_is_refused_not_taken_for_a_workload(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """`spiffe://store.example`, no path: the ID of the trust domain itself (its
    signing authority's, X509-SVID 3.2), which names every workload of it and
    none. X509-SVID 5.2 has a validator refuse a leaf whose ID has no path; the
    gateway took it for the subject, so a policy allowing a trust domain's IDs
    by prefix, or a lockout, saw one identity for all. Refused, with a common
    name beside it or without."""
    async with gateway(aiohttp_server, tmp_path) as running:
        root = [x509.UniformResourceIdentifier("spiffe://store.example")]
        for name, subject in (("alone", [_organisation()]), ("with-cn", [_cn("wms-sync")])):
            client = running.client(name, subject, root)
            event = await refused(running, client, "SPIFFE ID 'spiffe://store.example'")
            assert "it has no path" in event["result"]["reasons"][0], name


# SPIFFE IDs the spec forbids a workload (SPIFFE-ID 2.1-2.3, X509-SVID 3.1), and
# what the refusal says of each.
FORBIDDEN_IDS = {
    "trailing-slash": ("spiffe://store.example/ns/wms/", "empty segment"),
    "empty-segment": ("spiffe://store.example/ns//wms", "empty segment"),
    "dot-dot": ("spiffe://store.example/ns/wms/../pos", "a '..' segment"),
    "dot": ("spiffe://store.example/./wms", "a '.' segment"),
    "upper-trust-domain": ("spiffe://Store.example/wms", "trust domain 'Store.example'"),
    "port": ("spiffe://store.example:8443/wms", "trust domain 'store.example:8443'"),
    "userinfo": ("spiffe://admin@store.example/wms", "trust domain 'admin@store.example'"),
    "query": ("spiffe://store.example/wms?as=admin", "path segment 'wms?as=admin'"),
    "fragment": ("spiffe://store.example/wms#admin", "path segment 'wms#admin'"),
    "percent": ("spiffe://store.example/ns%2Fpos/wms", "path segment 'ns%2Fpos'"),
    "upper-scheme": ("SPIFFE://store.example/wms", "scheme is not a lower-case spiffe://"),
    "no-trust-domain": ("spiffe:///wms", "no trust domain"),
    "long": ("spiffe://store.example/" + "w" * 2026, "2049 bytes long"),
    "long-trust-domain": ("spiffe://" + "s" * 256 + "/wms", "trust domain is over 255 bytes"),
}


async def test_a_spiffe_id_the_spec_forbids_is_refused_not_read_as_the_common_name_beside_it(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """A URI SAN of the spiffe scheme that the SPIFFE-ID spec forbids (a trailing
    `/`, `..`, upper case, a port, a user, a query, percent-encoding, over 2048
    bytes): the gateway read the certificate as its common name instead, a
    certificate its CA issued as a workload's taken for a service named by
    whatever its CN says (SPIRE puts a DNS name there, which other workloads
    share). Refused, saying what is wrong with the ID; the longest IDs the spec
    allows still pass."""
    async with gateway(aiohttp_server, tmp_path) as running:
        for name, (uri, says) in FORBIDDEN_IDS.items():
            client = running.client(
                name, [_cn("sync.wms.svc")], [x509.UniformResourceIdentifier(uri)]
            )
            event = await refused(running, client, "is not a workload's")
            assert says in event["result"]["reasons"][0], name
        for name, uri in (
            ("longest", "spiffe://store.example/" + "w" * 2025),
            ("longest-trust-domain", "spiffe://" + "s" * 255 + "/wms"),
        ):
            sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
            status, body, _ = await running.get(running.client(name, [_organisation()], sans))
            assert status == 200, (name, body)


# The characters SPIFFE-ID 2.1 and 2.2 allow, and pieces of URIs near and far from them.
TRUST_DOMAIN_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
SEGMENT_CHARACTERS = TRUST_DOMAIN_CHARACTERS | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
URI_PIECES = st.sampled_from(
    [
        "spiffe://", "SPIFFE://", "spiffe:", "spiffe:/", "/", "//", ".", "..", "a", "Z", "0",
        "-", "_", ":", ":8443", "@", "%2F", "%41", "?", "?q", "#", "#f", "\\", " ", "\x00",
        "\u00e9", "store.example", "ns", "w" * 700, "s" * 128,
    ]
)  # fmt: skip
SPEC_IDS = st.builds(
    lambda trust_domain, segments: f"spiffe://{trust_domain}/{'/'.join(segments)}",
    st.text(alphabet=sorted(TRUST_DOMAIN_CHARACTERS), min_size=1, max_size=255),
    st.lists(
        st.text(alphabet=sorted(SEGMENT_CHARACTERS), min_size=1, max_size=60).filter(
            lambda segment: segment not in (".", "..")
        ),
        min_size=1,
        max_size=20,
    ),
).filter(lambda uri: len(uri) <= 2048)


# IDs the spec allows with a piece put in somewhere (or none), and strings of pieces.
URIS = st.one_of(
    st.builds(
        lambda uri, piece, at: uri[: at % (len(uri) + 1)] + piece + uri[at % (len(uri) + 1) :],
        SPEC_IDS,
        st.just("") | URI_PIECES,
        st.integers(min_value=0),
    ),
    st.tuples(
        st.sampled_from(["spiffe://", "SPIFFE://", "Spiffe://", "spiffe:", "https://"]),
        st.lists(URI_PIECES, max_size=10),
    ).map(lambda parts: parts[0] + "".join(parts[1])),
)


def spec_allows(uri: str) -> bool:
    """Whether the SPIFFE-ID spec (2, 2.1-2.3) and X509-SVID (3.1: a leaf's ID
    has a path) allow `uri` as a workload's ID, read from the spec, not from the
    gateway's code, and checked against the URI as urllib parses it."""
    scheme, separator, rest = uri.partition("://")
    trust_domain, slash, path = rest.partition("/")
    parsed = urllib.parse.urlsplit(uri)
    return (
        scheme == "spiffe"
        and separator == "://"
        and len(uri.encode()) <= 2048
        and 0 < len(trust_domain.encode()) <= 255
        and set(trust_domain) <= TRUST_DOMAIN_CHARACTERS
        and slash == "/"
        and all(
            segment not in ("", ".", "..") and set(segment) <= SEGMENT_CHARACTERS
            for segment in path.split("/")
        )
        and (parsed.scheme, parsed.netloc, parsed.path) == ("spiffe", trust_domain, "/" + path)
        and not parsed.query
        and not parsed.fragment
    )


@settings(derandomize=True, max_examples=800, deadline=None, database=None)
@given(uri=URIS, common_name=st.sampled_from([None, "sync.wms.svc"]))
def test_any_uri_san_the_gateway_takes_for_a_spiffe_id_is_one_the_spec_allows(
    uri: str, common_name: str | None
) -> None:
    """Whatever a certificate's one URI SAN (a CN beside it or not), the gateway
    takes it for the subject only when the spec allows it as a workload's SPIFFE
    ID; and a spiffe-scheme URI the spec forbids is refused, not passed over for
    the common name."""
    subject = ((("commonName", common_name),),) if common_name else ()
    peer = {"subject": subject, "subjectAltName": (("URI", uri),)}
    try:
        found = certificate_subject(peer)
    except CertificateRejected:
        return
    if found == uri:
        assert spec_allows(uri), uri
    else:
        assert found == common_name and not uri.lower().startswith("spiffe:"), uri


@settings(derandomize=True, max_examples=400, deadline=None, database=None)
@given(uri=SPEC_IDS)
def test_every_spiffe_id_the_spec_allows_a_workload_is_its_subject(uri: str) -> None:
    """The other way round: the gateway refuses no ID the spec allows (a trust
    domain of dots and dashes, `_`, upper case in the path, up to the limits)."""
    assert spec_allows(uri), uri
    assert certificate_subject({"subject": (), "subjectAltName": (("URI", uri),)}) == uri
