"""Which CA may issue a SPIFFE trust domain's IDs: a listener's `spiffe_trust_domains`.

Every CA of `client_ca` can sign any URI SAN, so without a binding a partner's CA
issues `spiffe://store.example/...` as readily as the store's SPIRE does, and a rule
comparing `source.principal` (or `identity.subject`) with that ID takes the
partner's certificate for the store's workload. Envoy's SPIFFE validator binds each
trust domain to its own bundle for this reason; here each trust domain is bound to
the CAs (the identities' issuers, gateway/mtls/cas.py) that may issue its IDs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.identity import show
from gateway.mtls.subject import CertificateRejected, has_spiffe_scheme, uri_sans


def trust_domain(uri: str) -> str:
    """The trust domain a URI of the spiffe scheme (any case) names, lower-cased:
    what comes between `//` and the next `/`; "" for none."""
    rest = uri[len("spiffe:") :]
    if not rest.startswith("//"):
        return ""
    return rest[2:].partition("/")[0].lower()


@dataclass(frozen=True)
class TrustDomains:
    """Each bound trust domain and the issuer names of the CAs that may issue its
    IDs; empty: none bound, and any CA of client_ca may issue any ID."""

    bound: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def check(self, peer: dict[str, Any], issuer: str) -> None:
        """CertificateRejected for a certificate (`peer_certificate`) with a SPIFFE
        ID of a trust domain `issuer`, the CA that issued it, may not issue: one
        bound to other CAs, or, once any is bound, one bound to none (as Envoy's
        SPIFFE validator refuses an ID it has no bundle for). Every URI SAN of the
        spiffe scheme is checked, the one a policy reads as `source.principal`
        among them."""
        if not self.bound:
            return
        for uri in uri_sans(peer):
            if not has_spiffe_scheme(uri):
                continue
            domain = trust_domain(uri)
            allowed = self.bound.get(domain)
            if allowed is None:
                raise CertificateRejected(
                    f"client certificate's SPIFFE ID {show(uri)} is of trust domain "
                    f"{show(domain)}, which spiffe_trust_domains binds to no CA "
                    f"(it binds {', '.join(show(name) for name in sorted(self.bound))}); "
                    f"issued by {issuer}"
                )
            if issuer not in allowed:
                raise CertificateRejected(
                    f"client certificate's SPIFFE ID {show(uri)} is of trust domain "
                    f"{show(domain)}, whose IDs only {', '.join(sorted(allowed))} may issue; "
                    f"issued by {issuer}"
                )
