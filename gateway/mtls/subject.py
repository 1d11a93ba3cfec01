"""Whom a verified client certificate names: its subject and the identity that
gives, scoped by the CA that issued it (gateway/mtls/cas.py)."""

from __future__ import annotations

import functools
import re
import ssl
from typing import Any

from gateway.identity import Identity, show


def peer_certificate(transport: Any) -> dict[str, Any]:
    """The connection's verified client certificate as ssl's `getpeercert()` gives
    it; {} without one.

    Only a listener with `client_ca` asks for one, and the TLS handshake has
    already verified it against that CA by the time a request arrives."""
    if transport is None:
        return {}
    peer: dict[str, Any] | None = transport.get_extra_info("peercert")
    return peer or {}


def client_certificate(peer: dict[str, Any]) -> dict[str, Any]:
    """A verified client certificate (`peer_certificate`) as plain data, the
    `client_cert` of the decision input; {} without one.

    `subject` and `issuer` give each attribute of the name its value, as a
    string, where the name has it once; one it has more than once (`OU=stores,
    OU=admin`, or one RDN of both, `OU=stores+OU=admin`) is the list of its
    values, so a rule comparing it with one string matches neither: which value
    a dict of the RDNs keeps is their order, which a CA that copies a CSR's
    subject lets its requester choose. `subject_values` and `issuer_values`
    give every attribute as the list of its values, in the certificate's order
    (as Go's pkix.Name has OU and O), for a rule that must see each one."""
    if not peer:
        return {}
    subject = _attribute_values(peer.get("subject", ()))
    issuer = _attribute_values(peer.get("issuer", ()))
    return {
        "subject": _one_each(subject),
        "subject_values": subject,
        "issuer": _one_each(issuer),
        "issuer_values": issuer,
        "serial_number": peer.get("serialNumber"),
        "not_after": peer.get("notAfter"),
        "sans": [value for kind, value in peer.get("subjectAltName", ()) if kind in ("DNS", "URI")],
    }


def _attribute_values(rdns: Any) -> dict[str, list[str]]:
    """A distinguished name's attributes (ssl's RDN tuples), each with all its
    values in the order the certificate has them."""
    values: dict[str, list[str]] = {}
    for rdn in rdns:
        for key, value in rdn:
            values.setdefault(key, []).append(value)
    return values


def _one_each(values: dict[str, list[str]]) -> dict[str, str | list[str]]:
    """Each attribute's one value, or the list of them where there are more."""
    return {key: found[0] if len(found) == 1 else list(found) for key, found in values.items()}


class CertificateRejected(Exception):
    """A verified client certificate names no one subject; the message says why."""


# The SPIFFE-ID spec (2.1, 2.2): a trust domain of lower-case letters, digits,
# ".", "-" and "_" (no userinfo, port or upper case), path segments of letters,
# digits, ".", "-" and "_" (no percent-encoding, query or fragment).
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+\Z")
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._-]+\Z")
_SPIFFE_PREFIX = "spiffe://"
MAX_SPIFFE_ID_BYTES = 2048  # SPIFFE-ID 2.3
MAX_TRUST_DOMAIN_BYTES = 255  # SPIFFE-ID 2.3, RFC 3986's limit on a host
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def uri_sans(peer: dict[str, Any]) -> list[str]:
    """A certificate's (`peer_certificate`) URI SANs, in its order."""
    return [value for kind, value in peer.get("subjectAltName", ()) if kind == "URI"]


def has_spiffe_scheme(text: str) -> bool:
    """Whether ``text`` is of the spiffe scheme, in any case (a URI's scheme is
    case-insensitive, RFC 3986 3.1): a SPIFFE ID, or one spelled to pass for it."""
    return text[:7].lower() == "spiffe:"


def trust_domain_problem(name: str) -> str | None:
    """Why `name` is not a trust domain a SPIFFE ID may have (SPIFFE-ID 2.1, 2.3);
    None when it is one. Says what is wrong with "it"."""
    if not name:
        return "is empty"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_TRUST_DOMAIN_BYTES:
        return f"is over {MAX_TRUST_DOMAIN_BYTES} bytes long"
    if not _TRUST_DOMAIN.match(name):
        return (
            f"{show(name)} has a character other than a lower-case letter, a digit, "
            "'.', '-' or '_' (no port, user, query or upper case)"
        )
    return None


def spiffe_id_problem(uri: str) -> str | None:
    """Why `uri` is not the SPIFFE ID a workload's X.509-SVID may carry (the
    SPIFFE-ID spec, 2; X509-SVID 3.1 and 5.2); None when it is one."""
    if not uri.startswith(_SPIFFE_PREFIX):
        return "its scheme is not a lower-case spiffe://"
    if not uri.isascii():  # so its length in characters is its length in bytes
        return "it has a character that is not ASCII"
    if len(uri) > MAX_SPIFFE_ID_BYTES:
        return f"it is {len(uri)} bytes long, over the {MAX_SPIFFE_ID_BYTES} an ID may be"
    trust_domain, slash, path = uri[len(_SPIFFE_PREFIX) :].partition("/")
    if not trust_domain:
        return "it has no trust domain"
    problem = trust_domain_problem(trust_domain)
    if problem is not None:
        return f"its trust domain {problem}"
    if not slash:
        # The trust domain's own ID names its signing authority (X509-SVID 3.2),
        # which must not authenticate: every workload of the domain would be it.
        return "it has no path: it is the trust domain's own ID, which names no workload"
    for segment in path.split("/"):
        if not segment:
            return "its path has an empty segment ('//', or a trailing '/')"
        if segment in (".", ".."):
            return f"its path has a {show(segment)} segment"
        if not _PATH_SEGMENT.match(segment):
            return (
                f"its path segment {show(segment)} has a character other than a letter, a "
                "digit, '.', '-' or '_' (no percent-encoding, query or fragment)"
            )
    return None


def certificate_subject(peer: dict[str, Any]) -> str:
    """Whom a verified client certificate (`peer_certificate`) names: an
    X.509-SVID's SPIFFE ID (its URI SAN, when that is its only one and a
    `spiffe://` ID), whatever its CN says (SPIRE puts a DNS name there; Envoy
    and Istio take the ID as the workload's identity); else its common name.
    CertificateRejected otherwise, and for any URI SAN of the spiffe scheme
    that is not a workload's SPIFFE ID (`spiffe_id_problem`: the trust
    domain's own, `spiffe://store.example`, among them), whatever else the
    certificate names: X509-SVID 5.2 has a validator refuse it, and a SPIFFE
    ID beside another URI SAN (an SVID has one). Two common names, in two
    RDNs or one multi-valued RDN, are ambiguous: which one a reader takes is an
    encoding detail (a dict of the RDNs keeps the last), and a CA that copies a
    CSR's subject lets its requester add `CN=admin` to its own name. A common
    name with a control character is refused too, and one shaped like a SPIFFE
    ID (it would be that workload's subject). A certificate naming no one
    is no one to decide for, lock out or rate limit."""
    uris = uri_sans(peer)
    for uri in uris:
        problem = spiffe_id_problem(uri) if has_spiffe_scheme(uri) else None
        if problem is not None:
            # A SPIFFE ID the spec forbids (X509-SVID 5.2: the validator MUST refuse
            # it), not a name to fall back from to the common name beside it.
            raise CertificateRejected(
                f"client certificate's SPIFFE ID {show(uri)} is not a workload's: {problem}"
            )
    spiffe_ids = [uri for uri in uris if uri.startswith(_SPIFFE_PREFIX)]
    if spiffe_ids and len(uris) > 1:
        # Issued as an X.509-SVID, which has exactly one URI SAN (X509-SVID 5.2:
        # the validator MUST refuse more), not a name to fall back from to the
        # common name beside it (SPIRE's is a DNS name other workloads share).
        raise CertificateRejected(
            f"client certificate names no subject: it has {len(uris)} URI SANs, "
            f"{len(spiffe_ids)} of them SPIFFE IDs, where an X.509-SVID has exactly one"
        )
    if spiffe_ids:
        return str(spiffe_ids[0])
    common_names = [
        value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    if len(common_names) > 1:
        raise CertificateRejected(
            f"client certificate's subject is ambiguous: {len(common_names)} common names "
            f"({', '.join(show(name) for name in common_names[:4])}); it must name one"
        )
    if common_names:
        if not common_names[0].strip():
            raise CertificateRejected("client certificate's common name is blank: names no subject")
        if _CONTROL.search(common_names[0]):
            # `admin\0.wms-sync` (the null-prefix name a CA checking a C string
            # signs) is `admin` to a backend in C; a line break forges log lines.
            raise CertificateRejected(
                f"client certificate's common name {show(common_names[0])} has a control "
                "character (NUL, a line break): no service is named so"
            )
        if has_spiffe_scheme(common_names[0]):
            # Else it would be the subject the SVID of that ID from the same CA is:
            # a name its requester may have chosen taken for the workload.
            raise CertificateRejected(
                f"client certificate's common name {show(common_names[0])} is shaped like a "
                "SPIFFE ID, which only a URI SAN (an X.509-SVID without a common name) can be"
            )
        return str(common_names[0])
    if not uris:
        found = "it has no URI SAN"
    elif len(uris) > 1:
        found = f"it has {len(uris)} URI SANs"
    else:
        found = f"its URI SAN {show(uris[0])} is not a SPIFFE ID"
    raise CertificateRejected(
        f"client certificate names no subject: no common name, and no one SPIFFE ID ({found})"
    )


def certificate_identity(peer: dict[str, Any], issuer: str) -> Identity:
    """A service identified by its client certificate alone (no bearer token): its
    subject (`certificate_subject`; CertificateRejected if it names none or two),
    from `issuer`, the CA that issued it (gateway/mtls/cas.py), as a token's
    subject is from its `iss`."""
    try:
        subject = certificate_subject(peer)
        principal = envoy_principal(peer)
    except CertificateRejected as rejected:  # which CA signs such subjects, to fix it there
        raise CertificateRejected(f"{rejected}; issued by {issuer}") from None
    return Identity(
        authenticated=True,
        method="mtls",
        subject=subject,
        issuer=issuer,
        client_cert=client_certificate(peer),
        principal=principal,
    )


# Bounded: a subject's attribute names are the client's (a CA that copies a
# request's subject signs any OID), and each unknown OID is a name of its own.
@functools.lru_cache(maxsize=256)
def _short_name(long_name: str) -> str:
    """OpenSSL's short name (Envoy prints a subject with them, XN_FLAG_FN_SN) for
    the long name Python's ssl gives an attribute: `CN` for `commonName`,
    `jurisdictionC` for `jurisdictionCountryName`, from the object table of the
    OpenSSL that parsed the certificate. An attribute it doesn't know keeps its
    name (its OID, dotted)."""
    try:
        known = ssl._ASN1Object.fromname(long_name)
    except ValueError:
        return long_name
    # fromname also takes a short name: only the object whose long name this is.
    return known.shortname if known.longname == long_name else long_name


# RFC 2253 2.4: characters escaped with a backslash anywhere in a value.
_RFC2253_SPECIAL = frozenset(',+"\\<>;')


# RFC 5280 4.2.1.6: a URI SAN is an absolute URI (RFC 3986 3.1: a scheme, then
# ":"), a DNS SAN a host name (letters, digits, "-", "."; "_" and a leading "*."
# as real certificates have them), both ASCII without spaces or controls.
_URI_SAN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[\x21-\x7e]*\Z")
_DNS_SAN = re.compile(r"(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?\Z")


def envoy_principal(peer: dict[str, Any]) -> str | None:
    """What Envoy's ext_authz sets as `attributes.source.principal` for this
    verified client certificate (`peer_certificate`): its first URI SAN (a
    workload's SPIFFE ID), else its first DNS SAN, else its subject as OpenSSL
    prints it with XN_FLAG_RFC2253 (every attribute last first, an RDN's joined
    by `+`; short names; special characters, control characters and each byte
    of a non-ASCII one escaped). None where that is empty (a certificate with
    neither SAN nor subject): Envoy's "" is a field OPA-Envoy's JSON input omits.
    A ported OPA-Envoy rule compares this string.

    CertificateRejected for a URI SAN that is no absolute URI or a DNS SAN that
    is no host name (RFC 5280 forbids both; a CA that copies a request's SANs
    signs them): Envoy takes either as it is, so a SAN spelled
    `CN=wms-sync,O=Store` was the principal of the certificate with that
    subject, and `admin\0.evil` a name a backend in C reads as `admin`. Well
    formed, the three kinds never spell one another (a URI has a `:` before any
    `=`, a host name neither, a subject an `=`)."""
    sans = peer.get("subjectAltName", ())
    for kind, value in sans:
        if kind == "URI" and not _URI_SAN.match(value):
            raise CertificateRejected(
                f"client certificate's URI SAN {show(value)} is not an absolute URI "
                "(a scheme, ':', no spaces or control characters), which RFC 5280 requires"
            )
        if kind == "DNS" and not _DNS_SAN.match(value):
            raise CertificateRejected(
                f"client certificate's DNS SAN {show(value)} is not a host name (letters, "
                "digits, '-', '_' and '.', an A-label for a non-ASCII one), which RFC 5280 requires"
            )
    for wanted in ("URI", "DNS"):
        for kind, value in sans:
            if kind == wanted:
                return str(value)
    subject = ",".join(
        "+".join(f"{_short_name(key)}={_rfc2253_value(value)}" for key, value in reversed(rdn))
        for rdn in reversed(peer.get("subject", ()))
    )
    return subject or None


def _rfc2253_value(value: str) -> str:
    plain = value.isascii() and value.isprintable() and not _RFC2253_SPECIAL.intersection(value)
    if plain and not value.startswith(("#", " ")) and not value.endswith(" "):
        return value
    escaped = []
    for index, char in enumerate(value):
        if char in _RFC2253_SPECIAL or (char in "# " and index == 0):
            escaped.append("\\" + char)
        elif char == " " and index == len(value) - 1:
            escaped.append("\\ ")
        elif not char.isascii() or not char.isprintable():
            escaped.extend(f"\\{byte:02X}" for byte in char.encode("utf-8", "surrogateescape"))
        else:
            escaped.append(char)
    return "".join(escaped)
