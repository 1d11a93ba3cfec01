"""Which trusted CA issued a client certificate: the issuer an mTLS identity is scoped by.

A listener's `client_ca` may hold several CAs (the company's device CA, a partner's),
and a certificate's common name is only unique within the CA that issued it, as a
token's `sub` is within its `iss`. The scope is the first CA of the verified chain,
from the certificate up, that a `client_ca` file holds (the CA that signed it, or
the root an intermediate the client sent chains to), named `mtls:` and its subject
in RFC 4514 form (`mtls:CN=Store Devices CA,O=Example`). Never the certificate's
own issuer field: whoever runs a trusted CA can name an intermediate like another
CA, and then its certificates would carry that CA's name.
"""

from __future__ import annotations

import _ssl
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

CLIENT_CERTIFICATE_ISSUER = "mtls"
SCOPE_PREFIX = CLIENT_CERTIFICATE_ISSUER + ":"


def is_certificate_issuer(name: str) -> bool:
    """A name of client-certificate identities (a CA's scope, or `mtls` alone, the one
    name they all shared before they were scoped), which no token issuer may take."""
    return name == CLIENT_CERTIFICATE_ISSUER or name.startswith(SCOPE_PREFIX)


@dataclass(frozen=True)
class ClientCa:
    """A CA a `client_ca` file holds, and the issuer name of the identities it issues."""

    issuer: str  # "mtls:" + the CA's subject, RFC 4514
    certificate: x509.Certificate
    der: bytes


def _key(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_client_cas(files: Iterable[Path]) -> tuple[ClientCa, ...]:
    """The CAs of every `client_ca` file. ValueError for a file without one."""
    cas: dict[bytes, ClientCa] = {}
    for file in dict.fromkeys(files):
        try:
            certificates = x509.load_pem_x509_certificates(file.read_bytes())
        except (OSError, ValueError) as error:
            raise ValueError(f"{file}: no PEM certificate could be read ({error})") from None
        for certificate in certificates:
            issuer = SCOPE_PREFIX + certificate.subject.rfc4514_string()
            der = certificate.public_bytes(serialization.Encoding.DER)
            cas.setdefault(der, ClientCa(issuer, certificate, der))
    return tuple(cas.values())


def names_of_several_keys(cas: Iterable[ClientCa]) -> list[str]:
    """The CA names that several keys hold. Their certificates are one scope: a CA
    renewed with a new key under its old name (Active Directory Certificate
    Services does this) is trusted as both until the old one's certificates
    expire, and is one CA. Two organisations' CAs that happen to share a name
    would be one too, which the gateway can't tell from a renewal: it says so."""
    keys: dict[str, set[bytes]] = {}
    for ca in cas:
        keys.setdefault(ca.issuer, set()).add(_key(ca.certificate))
    return [issuer for issuer, held in keys.items() if len(held) > 1]


def verified_chain(ssl_object: Any) -> list[bytes]:
    """The chain OpenSSL verified for the peer, leaf first, as DER; [] for a resumed
    TLS session (OpenSSL keeps only the peer's certificate in it). Public from Python
    3.13; the method it wraps is in _ssl since 3.10."""
    public = getattr(ssl_object, "get_verified_chain", None)
    if public is not None:
        return [bytes(der) for der in public() or ()]
    inner = getattr(ssl_object, "_sslobj", None)
    chain = inner.get_verified_chain() if inner is not None else None
    return [certificate.public_bytes(_ssl.ENCODING_DER) for certificate in chain or ()]


class ClientCas:
    """The issuer names of client certificates: from each full handshake's chain, and
    for a resumed session as its listener last found it."""

    def __init__(self, cas: tuple[ClientCa, ...], *, cache_size: int = 10_000) -> None:
        self._by_der = {ca.der: ca for ca in cas}
        self._cas = cas
        # (listener's SSL context, certificate DER) -> its issuer name, for a resumed
        # session, which has no chain: it is one this listener of this process
        # verified (session tickets and the session cache are per SSL context), so
        # its certificate is mostly found here. Per listener: the same certificate
        # may reach another listener by another chain (a cross-certified CA), to a
        # CA only that one trusts.
        self._cache: OrderedDict[tuple[Any, bytes], str] = OrderedDict()
        self._cache_size = cache_size

    def issuer(self, transport: Any) -> str | None:
        """The issuer name of the connection's verified client certificate; None when
        no trusted CA can be shown to have issued it (refused: fail closed)."""
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is None:
            return None
        leaf = ssl_object.getpeercert(binary_form=True)
        if not leaf:
            return None
        remembered = (ssl_object.context, leaf)
        chain = verified_chain(ssl_object)
        if chain:
            # A full handshake: its own chain says, never what the certificate was on
            # an earlier connection (another chain, another listener's CAs).
            found = self._in_chain(chain)
        else:
            found = self._cache.get(remembered)
            if found is not None:
                self._cache.move_to_end(remembered)
                return found
            found = self._signer(leaf, ssl_object.context)
        if found is None:
            return None
        self._cache[remembered] = found
        self._cache.move_to_end(remembered)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return found

    def _in_chain(self, chain: list[bytes]) -> str | None:
        for der in chain[1:]:
            ca = self._by_der.get(der)
            if ca is not None:
                return ca.issuer
        return None

    def _signer(self, leaf: bytes, context: Any) -> str | None:
        """Without the chain (a resumed session this process no longer remembers): the
        CA of the listener's own client_ca (`context`, its SSL context) that signed the
        certificate itself, its signature checked here. One issued by an intermediate
        the client sent is not found, nor is a CA only another listener trusts: there
        the handshake verified the certificate by another chain (a CA of ours
        cross-certified by the partner-ca the listener trusts), to another scope."""
        try:
            certificate = x509.load_der_x509_certificate(leaf)
        except ValueError:
            return None
        trusted = set(context.get_ca_certs(binary_form=True))
        for ca in self._cas:
            if ca.der not in trusted:
                continue
            try:
                certificate.verify_directly_issued_by(ca.certificate)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return ca.issuer
        return None
