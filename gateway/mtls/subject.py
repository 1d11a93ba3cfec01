"""Whom a verified client certificate names: its subject and the identity that
gives, scoped by the CA that issued it (gateway/mtls/cas.py)."""

from __future__ import annotations

import re
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


# A SPIFFE ID (the SPIFFE-ID spec, 2): a lower-case trust domain, then path
# segments of letters, digits, ".", "-" and "_", none empty, "." or "..".
_SPIFFE_ID = re.compile(r"spiffe://[a-z0-9._-]+(?:/(?!\.\.?(?:/|\Z))[A-Za-z0-9._-]+)*\Z")
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def certificate_subject(peer: dict[str, Any]) -> str:
    """Whom a verified client certificate (`peer_certificate`) names: an
    X.509-SVID's SPIFFE ID (its URI SAN, when that is its only one and a
    `spiffe://` ID), whatever its CN says (SPIRE puts a DNS name there; Envoy
    and Istio take the ID as the workload's identity); else its common name.
    CertificateRejected otherwise. Two common names, in two
    RDNs or one multi-valued RDN, are ambiguous: which one a reader takes is an
    encoding detail (a dict of the RDNs keeps the last), and a CA that copies a
    CSR's subject lets its requester add `CN=admin` to its own name. A common
    name with a control character is refused too, and one shaped like a SPIFFE
    ID (it would be that workload's subject). A certificate naming no one
    is no one to decide for, lock out or rate limit."""
    uris = [value for kind, value in peer.get("subjectAltName", ()) if kind == "URI"]
    if len(uris) == 1 and _SPIFFE_ID.match(uris[0]):
        return str(uris[0])
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
        if common_names[0][:7].lower() == "spiffe:":
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
    except CertificateRejected as rejected:  # which CA signs such subjects, to fix it there
        raise CertificateRejected(f"{rejected}; issued by {issuer}") from None
    return Identity(
        authenticated=True,
        method="mtls",
        subject=subject,
        issuer=issuer,
        client_cert=client_certificate(peer),
    )
