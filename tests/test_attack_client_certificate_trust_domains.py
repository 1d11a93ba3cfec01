"""A SPIFFE ID's trust domain is bound to the CAs that may issue its IDs. Any CA of
client_ca (here the store's SPIRE, `store-ca`, and a logistics partner's,
`partner-ca`) can sign any URI SAN: the partner's CA issued
`spiffe://store.example/ns/wms/sa/sync`, and a rule ported from OPA-Envoy that
allows that `source.principal` (or one on `identity.subject`) took the partner's
certificate for the store's workload. Envoy's SPIFFE validator binds each trust
domain to its own bundle; `spiffe_trust_domains` does so here. Real TLS
handshakes against the gateway, the ported rule the only other check."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from gateway.audit.chain import REFUSAL_PATH
from gateway.config import ConfigError, Listener, TlsConfig, client_cas, parse_config
from gateway.mtls.cas import ClientCas
from tests.gateway_stack import ServerFactory, Stack, free_port, logged, start_stack
from tests.test_attack_client_certificate_issuers import get_on
from tests.test_gateway_transport import make_cert

pytestmark = pytest.mark.timeout(60)
STORE = "mtls:CN=store-ca"
PARTNER = "mtls:CN=partner-ca"
WORKLOAD = "spiffe://store.example/ns/wms/sa/sync"
# As ported from OPA-Envoy: the one workload allowed is named by its SPIFFE ID.
PORTED = f"""package portcullis.gateway
import rego.v1
decision := {{
\t"allow": input.attributes.source.principal == "{WORKLOAD}",
\t"reasons": [sprintf("decided for %v", [input.attributes.source.principal])],
}}
"""
BINDING = (("store.example", "store-ca.pem"), ("partner.example", "partner-ca.pem"))


@dataclass
class Gateway:
    stack: Stack
    base: str
    directory: Path
    cas: dict[str, tuple[x509.Certificate, Any]]

    def client(self, name: str, ca: str, *uris: str) -> ssl.SSLContext:
        """A client presenting a certificate `ca` issued with these URI SANs."""
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in uris]
        make_cert(self.directory, name, self.cas[ca], sans=sans)
        context = ssl.create_default_context(cafile=str(self.directory / "store-ca.pem"))
        context.load_cert_chain(self.directory / f"{name}.pem", self.directory / f"{name}.key")
        return context

    async def get(
        self, context: ssl.SSLContext, token: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.stack.session.get(
            f"{self.base}/wms/stock", ssl=context, headers=headers
        ) as response:
            return response.status, await response.json(content_type=None)

    async def refused(self, context: ssl.SSLContext, says: str, token: str | None = None) -> None:
        """Refused at the gateway: a 401 saying so, logged as a refusal, nothing upstream."""
        before = self.stack.total_forwarded()
        status, body = await self.get(context, token)
        assert status == 401, body
        assert body["error"] == "invalid_client_certificate", body
        assert says in body["reason"], body
        (event,) = await logged(self.stack, body["decision_id"])
        assert event["path"] == REFUSAL_PATH
        assert event["result"]["reasons"] == [
            f"gateway.invalid_client_certificate: {body['reason']}"
        ]
        assert "principal" not in event["input"]["attributes"]["source"]
        assert self.stack.total_forwarded() == before


@contextlib.asynccontextmanager
async def gateway(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    binding: tuple[tuple[str, str], ...] = BINDING,
) -> AsyncIterator[Gateway]:
    """A TLS listener trusting both CAs, its trust domains bound as `binding` says,
    under the ported policy."""
    cas = {name: make_cert(tmp_path, name, None, ca=True) for name in ("store-ca", "partner-ca")}
    make_cert(tmp_path, "server", cas["store-ca"])
    (tmp_path / "client_ca.pem").write_bytes(
        (tmp_path / "store-ca.pem").read_bytes() + (tmp_path / "partner-ca.pem").read_bytes()
    )
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "decision.rego").write_text(PORTED)
    port = free_port()
    domains = tuple((domain, tmp_path / file) for domain, file in binding)
    tls = TlsConfig(
        tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "client_ca.pem",
        spiffe_trust_domains=domains,
    )  # fmt: skip
    async with start_stack(
        aiohttp_server, tmp_path, policy=policy, gateway_port=port,
        listeners=(Listener("127.0.0.1", port, tls=tls),),
    ) as stack:  # fmt: skip
        yield Gateway(stack, f"https://localhost:{port}", tmp_path, cas)


async def test_a_partner_cas_certificate_with_our_trust_domains_spiffe_id_is_refused(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The partner's CA issues the store workload's SPIFFE ID: refused (401,
    logged), never reaching the rule that allows that principal. The store's CA
    issuing it is the workload; the partner's CA its own trust domain's IDs."""
    async with gateway(aiohttp_server, tmp_path) as running:
        forged = running.client("forged", "partner-ca", WORKLOAD)
        await running.refused(forged, f"whose IDs only {STORE} may issue; issued by {PARTNER}")
        status, body = await running.get(running.client("ours", "store-ca", WORKLOAD))
        assert status == 200, body
        partner_id = "spiffe://partner.example/ns/tms/sa/sync"
        status, body = await running.get(running.client("theirs", "partner-ca", partner_id))
        assert (status, body["reasons"]) == (403, [f"decided for {partner_id}"]), body
        events = await running.stack.events(at_least=3)
        assert [event["input"]["identity"].get("issuer") for event in events[-2:]] == [
            STORE,
            PARTNER,
        ]


async def test_a_spiffe_id_of_a_trust_domain_no_ca_is_bound_to_is_refused(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """Once trust domains are bound, an ID of one bound to none is refused, from
    either CA (Envoy's SPIFFE validator has no bundle to verify it with), and so
    is one whose trust domain only differs in case from a bound one."""
    async with gateway(aiohttp_server, tmp_path) as running:
        elsewhere = "spiffe://elsewhere.example/ns/wms/sa/sync"
        for ca in ("store-ca", "partner-ca"):
            other = running.client(f"other-{ca}", ca, elsewhere)
            await running.refused(other, "trust domain 'elsewhere.example', which spiffe_trust")
        upper = running.client("upper", "partner-ca", "spiffe://STORE.example/ns/wms/sa/sync")
        await running.refused(upper, "'STORE.example'")


async def test_a_bearer_token_does_not_carry_a_certificate_of_another_cas_trust_domain(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """With a bearer token the token is the identity, but the certificate is still
    `source.principal`, which the ported rule allows: the partner's certificate
    with the store workload's ID is refused there too."""
    async with gateway(aiohttp_server, tmp_path) as running:
        token = running.stack.token(groups=["warehouse"])
        forged = running.client("forged", "partner-ca", WORKLOAD)
        await running.refused(forged, f"whose IDs only {STORE} may issue", token)
        # No subject is taken with a token: the trust domain is still compared in lower case.
        upper = running.client("upper", "partner-ca", WORKLOAD.replace("store", "STORE"))
        await running.refused(upper, f"whose IDs only {STORE} may issue", token)
        status, body = await running.get(running.client("ours", "store-ca", WORKLOAD), token)
        assert status == 200, body
        event = (await running.stack.events(at_least=3))[-1]
        assert event["input"]["identity"]["method"] == "bearer"
        assert event["input"]["attributes"]["source"]["principal"] == WORKLOAD


async def test_a_resumed_session_whose_ca_is_forgotten_gives_a_bearer_token_no_principal(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """A resumed TLS session keeps the certificate, not its chain: one an
    intermediate issued, forgotten since, has no CA the gateway can tell, so no
    trust domain can be checked. With a bearer token its SPIFFE ID was still
    `source.principal`: the partner's intermediate, refused on the full
    handshake, got the store workload's principal on the resumed one. It has
    none there (README: absent for a certificate whose CA can't be told)."""
    async with gateway(aiohttp_server, tmp_path) as running:
        intermediate = make_cert(tmp_path, "partner-sub", running.cas["partner-ca"], ca=True)
        running.cas["partner-sub"] = intermediate
        running.client("forged", "partner-sub", WORKLOAD)
        (tmp_path / "chain.pem").write_bytes(
            (tmp_path / "forged.pem").read_bytes() + (tmp_path / "partner-sub.pem").read_bytes()
        )
        context = ssl.create_default_context(cafile=str(tmp_path / "store-ca.pem"))
        context.load_cert_chain(tmp_path / "chain.pem", tmp_path / "forged.key")
        running.stack.gateway.client_cas = ClientCas(
            client_cas(running.stack.config.listeners), cache_size=0
        )
        port = int(running.base.rsplit(":", 1)[1])
        token = running.stack.token(groups=["warehouse"])
        session, _, status, body = await asyncio.to_thread(get_on, port, context, token=token)
        assert status == 401 and "only mtls:CN=store-ca may issue" in body["reason"], body
        resume = (port, context, session)
        _, resumed, status, body = await asyncio.to_thread(get_on, *resume, token=token)
        assert resumed, body
        assert status == 403, body
        (event,) = await logged(running.stack, body["decision_id"])
        assert "principal" not in event["input"]["attributes"]["source"]
        assert event["input"]["identity"]["method"] == "bearer"
        assert running.stack.total_forwarded() == 0


async def test_without_a_binding_any_ca_of_client_ca_may_issue_any_spiffe_id(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """As with Envoy's default validator and one trusted_ca bundle: the partner's
    certificate is the principal it names, and only `identity.issuer` tells the
    CAs apart (README "Client certificates are scoped by their CA")."""
    async with gateway(aiohttp_server, tmp_path, binding=()) as running:
        status, body = await running.get(running.client("forged", "partner-ca", WORKLOAD))
        assert status == 200, body
        (event,) = await running.stack.events()
        assert event["input"]["identity"]["issuer"] == PARTNER


def _config(tmp_path: Path, *tls: dict[str, Any]) -> None:
    listeners = [{"port": 8443 + index, "tls": item} for index, item in enumerate(tls)]
    parse_config({"listeners": listeners, "auth": False}, tmp_path)


def test_spiffe_trust_domains_that_would_bind_nothing_are_refused_at_load(tmp_path: Path) -> None:
    """A name no SPIFFE ID can have, a file without a CA, a CA the listener does
    not trust, a listener without client_ca, and one domain bound to different
    CAs on two listeners: each a ConfigError naming the key, never a binding
    that silently holds nothing."""
    for name in ("store-ca", "partner-ca", "server"):
        make_cert(tmp_path, name, None, ca=name != "server")
    (tmp_path / "empty.pem").write_text("")
    base = {"cert": "server.pem", "key": "server.key", "client_ca": "store-ca.pem"}
    for domains, says in (
        ({"Store.example": "store-ca.pem"}, "'Store.example' is not a trust domain"),
        ({"store.example:8443": "store-ca.pem"}, "is not a trust domain"),
        ({"store.example": "missing.pem"}, "store.example: no such file"),
        ({"store.example": "empty.pem"}, "no PEM certificate"),
        ({"store.example": "partner-ca.pem"}, "holds CN=partner-ca, which this listener's"),
        ({"store.example": ["store-ca.pem"]}, "must be the path of a file"),
    ):
        with pytest.raises(ConfigError, match=r"listeners\[0\]\.tls\.spiffe_trust_domains") as err:
            _config(tmp_path, {**base, "spiffe_trust_domains": domains})
        assert says in str(err.value), err.value
    no_ca = {"cert": "server.pem", "key": "server.key"}
    with pytest.raises(ConfigError, match="spiffe_trust_domains: needs client_ca"):
        _config(tmp_path, {**no_ca, "spiffe_trust_domains": {"store.example": "store-ca.pem"}})
    both = tmp_path / "both.pem"
    both.write_bytes(
        (tmp_path / "store-ca.pem").read_bytes() + (tmp_path / "partner-ca.pem").read_bytes()
    )
    with pytest.raises(ConfigError, match=r"listeners\[1\].*bind it to the same CAs"):
        _config(
            tmp_path,
            {
                **base,
                "client_ca": "both.pem",
                "spiffe_trust_domains": {"store.example": "store-ca.pem"},
            },
            {
                **base,
                "client_ca": "both.pem",
                "spiffe_trust_domains": {"store.example": "both.pem"},
            },
        )
    _config(tmp_path, {**base, "spiffe_trust_domains": {"store.example": "store-ca.pem"}})


def test_a_binding_a_partner_ca_named_like_ours_would_pass_is_refused_at_load(
    tmp_path: Path,
) -> None:
    """The binding is by issuer name (a certificate's scope, gateway/mtls/cas.py).
    A partner names its CA `CN=store-ca` too: client_ca holds both, and the
    partner's certificates, scoped `mtls:CN=store-ca`, passed the binding of
    store.example to store-ca.pem and were the store's workload (a 200 for the
    ported rule). Refused at load, naming the way out; a CA renewed under its
    name with both keys in the bound file still loads."""
    make_cert(tmp_path, "server", None)
    make_cert(tmp_path, "store-ca", None, ca=True)
    same_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "store-ca")])
    make_cert(tmp_path, "partner-ca", None, ca=True, subject=same_name)
    both = (tmp_path / "store-ca.pem").read_bytes() + (tmp_path / "partner-ca.pem").read_bytes()
    (tmp_path / "client_ca.pem").write_bytes(both)
    base = {"cert": "server.pem", "key": "server.key", "client_ca": "client_ca.pem"}
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, {**base, "spiffe_trust_domains": {"store.example": "store-ca.pem"}})
    assert str(err.value).startswith(
        "listeners[0].tls.spiffe_trust_domains.store.example: client_ca holds another CA "
        "named CN=store-ca (another key) that "
    ), err.value
    # Only on another listener: the scope, and so the binding, is one on all of them.
    with pytest.raises(ConfigError, match="client_ca holds another CA named CN=store-ca"):
        _config(
            tmp_path,
            {
                **base,
                "client_ca": "store-ca.pem",
                "spiffe_trust_domains": {"store.example": "store-ca.pem"},
            },
            {**base, "client_ca": "partner-ca.pem"},
        )
    _config(tmp_path, {**base, "spiffe_trust_domains": {"store.example": "client_ca.pem"}})
