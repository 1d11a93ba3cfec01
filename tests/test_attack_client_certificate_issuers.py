"""A client certificate's common name is unique only within the CA that issued it.
A listener's client_ca may hold several CAs (here ours, `store-ca`, and a logistics
partner's, `partner-ca`); the shared state kept every certificate identity under
one issuer, `mtls`, so the partner's "wms-sync" was our "wms-sync": it shared its
lockout, denies, rate limit and concurrency slots, and the policy could not tell
them apart. Real TLS handshakes against the gateway, a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.audit.chain import NOT_COUNTED_LABEL as NOT_COUNTED
from gateway.config import ConfigError, Listener, TlsConfig, client_cas, parse_config
from gateway.mtls.cas import CLIENT_CERTIFICATE_ISSUER, ClientCas, names_of_several_keys
from gateway.server import Gateway
from gateway.shared.settings import Lockout, RateLimit, RateLimits, SharedStateConfig
from tests.gateway_stack import ServerFactory, Stack, free_port, logged, start_stack
from tests.redis_server import redis_server, redis_url
from tests.test_attack_lockout import settled
from tests.test_attack_shared_state_issuers import session_command
from tests.test_gateway_transport import make_cert
from tests.test_shared_state import admin, shared, wait_for, well_inside_a_window

__all__ = ["redis_server", "redis_url"]  # fixtures

pytestmark = pytest.mark.timeout(60)
OURS = "mtls:CN=store-ca"
PARTNERS = "mtls:CN=partner-ca"
LOCKOUT = Lockout(after_denies=2, window=900, duration=1800)


@dataclass
class Pki:
    """Our CA and the partner's, both in client_ca.pem, each with a "wms-sync"."""

    directory: Path

    def client(self, chain: Path, key: Path) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.directory / "store" / "store-ca.pem"))
        context.load_cert_chain(chain, key)
        return context

    @property
    def ours(self) -> ssl.SSLContext:
        store = self.directory / "store"
        return self.client(store / "wms-sync.pem", store / "wms-sync.key")

    @property
    def partners(self) -> ssl.SSLContext:
        partner = self.directory / "partner"
        return self.client(partner / "wms-sync.pem", partner / "wms-sync.key")


def pki(directory: Path) -> Pki:
    for name in ("store", "partner"):
        (directory / name).mkdir()
    store_ca = make_cert(directory / "store", "store-ca", None, ca=True)
    partner_ca = make_cert(directory / "partner", "partner-ca", None, ca=True)
    make_cert(directory, "server", store_ca)
    make_cert(directory / "store", "wms-sync", store_ca)
    make_cert(directory / "partner", "wms-sync", partner_ca)
    (directory / "client_ca.pem").write_bytes(
        (directory / "store" / "store-ca.pem").read_bytes()
        + (directory / "partner" / "partner-ca.pem").read_bytes()
    )
    return Pki(directory)


@contextlib.asynccontextmanager
async def mtls_stack(
    aiohttp_server: ServerFactory, tmp_path: Path, state: SharedStateConfig
) -> AsyncIterator[tuple[Stack, Pki, str]]:
    certificates = pki(tmp_path)
    port = free_port()
    tls = TlsConfig(tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "client_ca.pem")
    async with start_stack(
        aiohttp_server, tmp_path, gateway_port=port, shared_state=state,
        listeners=(Listener("127.0.0.1", port, tls=tls),),
    ) as stack:  # fmt: skip
        yield stack, certificates, f"https://localhost:{port}"


async def get(stack: Stack, url: str, context: ssl.SSLContext) -> tuple[int, dict[str, Any]]:
    async with stack.session.get(url, ssl=context) as response:
        body = await response.json(content_type=None)
        return response.status, body if isinstance(body, dict) else {}


async def locked_out(stack: Stack, url: str, context: ssl.SSLContext) -> bool:
    status, body = await get(stack, url, context)
    return status == 403 and body.get("error") == "locked_out"


async def test_a_lockout_of_a_partner_cas_service_does_not_lock_out_ours_of_the_same_name(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """The partner's wms-sync, denied twice, is locked out; ours, never denied, was
    locked out with it (any CA in client_ca could lock out every other CA's
    services by issuing certificates with their names)."""
    async with mtls_stack(aiohttp_server, tmp_path, shared(redis_url, lockout=LOCKOUT)) as (
        stack, certificates, base,
    ):  # fmt: skip
        url = f"{base}/wms/stock"
        for _ in range(2):
            assert (await get(stack, url, certificates.partners))[0] == 403
        await wait_for(lambda: locked_out(stack, url, certificates.partners))
        status, body = await get(stack, url, certificates.ours)
        assert status == 403 and "error" not in body, body  # the policy's deny, no lockout
        # The refusal says how to lift it, for the partner's wms-sync.
        status, body = await get(stack, url, certificates.partners)
        assert f"--user wms-sync --issuer {PARTNERS}" in body["reason"], body


async def test_denies_of_a_partner_cas_service_do_not_count_toward_ours(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """One deny for each wms-sync made two for "wms-sync": a lockout after two locked
    both out, though neither was denied twice."""
    async with mtls_stack(aiohttp_server, tmp_path, shared(redis_url, lockout=LOCKOUT)) as (
        stack, certificates, base,
    ):  # fmt: skip
        url = f"{base}/wms/stock"
        for context in (certificates.partners, certificates.ours):
            assert (await get(stack, url, context))[0] == 403

        async def counted() -> bool:
            counted = 'portcullis_shared_state_writes_total{kind="deny",result="ok"} 2.0'
            return counted in stack.gateway.metrics.render().decode()

        await wait_for(counted)
        for context in (certificates.partners, certificates.ours):
            status, body = await get(stack, url, context)
            assert status == 403 and "error" not in body, body


async def test_another_sites_page_cannot_lock_out_a_browser_holding_a_client_certificate(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """A browser with a client certificate installed presents it to any page's
    request, and the policy now refuses another site's writes on it: two such
    POSTs, each a deny, locked the certificate's holder out of every app. A
    deny whose browser says another site made it (Sec-Fetch-Site) is logged,
    labelled, and not counted, as for the session cookie; a service's (no
    Fetch Metadata) still counts."""
    async with mtls_stack(aiohttp_server, tmp_path, shared(redis_url, lockout=LOCKOUT)) as (
        stack, certificates, base,
    ):  # fmt: skip
        url = f"{base}/wms/orders"
        for site in ("cross-site", "same-site", "cross-site"):
            headers = {"Sec-Fetch-Site": site}
            async with stack.session.post(url, ssl=certificates.ours, headers=headers) as answer:
                assert answer.status == 403, await answer.text()
        await settled(stack)
        assert not await locked_out(stack, url, certificates.ours)
        labelled = [e for e in await stack.events(at_least=3) if NOT_COUNTED in e["labels"]]
        sites = [e["labels"][NOT_COUNTED] for e in labelled]
        assert sites == ["cross-site", "same-site", "cross-site"], sites
        for _ in range(2):  # the service itself, denied: counts
            assert (await get(stack, url, certificates.ours))[0] == 403
        await wait_for(lambda: locked_out(stack, url, certificates.ours))


async def test_a_rate_limit_bucket_is_not_shared_with_a_partner_cas_service(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """The per-identity limit counted both wms-syncs in one bucket: the partner's
    could spend all of ours (a denial of service on our own service)."""
    limits = RateLimits(identity=RateLimit(3, 60), source_ip=RateLimit(1000, 60))
    async with mtls_stack(aiohttp_server, tmp_path, shared(redis_url, rate_limits=limits)) as (
        stack, certificates, base,
    ):  # fmt: skip
        await well_inside_a_window(60)
        url = f"{base}/wms/stock"
        statuses = [(await get(stack, url, certificates.partners))[0] for _ in range(4)]
        assert statuses == [403, 403, 403, 429], statuses
        assert (await get(stack, url, certificates.ours))[0] == 403


async def test_the_policy_input_tells_the_two_cas_services_apart(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """input.identity said subject "wms-sync", issuer null for both: a policy had
    to dig into client_cert to tell ours from the partner's. Its issuer is now the
    CA's name, as the admin commands take it."""
    async with mtls_stack(aiohttp_server, tmp_path, shared(redis_url)) as (
        stack, certificates, base,
    ):  # fmt: skip
        ids = []
        for context in (certificates.ours, certificates.partners):
            status, body = await get(stack, f"{base}/wms/stock", context)
            assert status == 403, body
            ids.append(body["decision_id"])
        events = {e["decision_id"]: e for e in await logged(stack, *ids)}
        identities = [events[i]["input"]["identity"] for i in ids]
        assert [(i["method"], i["subject"], i["issuer"]) for i in identities] == [
            ("mtls", "wms-sync", OURS),
            ("mtls", "wms-sync", PARTNERS),
        ]
        assert stack.gateway.shared is not None
        assert stack.gateway.shared.issuers[-2:] == (OURS, PARTNERS)


async def test_an_intermediate_named_like_our_ca_does_not_take_our_services_names(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """The partner's CA signs an intermediate it names "store-ca", like ours, and
    the client sends it with its certificate: the handshake verifies it (it chains
    to the partner's root), and the certificate's issuer field says "store-ca". Its
    identity is the partner's, the CA of client_ca the chain reaches, never the
    name a certificate gives its issuer; its denies do not lock out our wms-sync."""
    async with mtls_stack(aiohttp_server, tmp_path, shared(redis_url, lockout=LOCKOUT)) as (
        stack, certificates, base,
    ):  # fmt: skip
        spoofed = _spoofing_client(tmp_path, certificates)
        url = f"{base}/wms/stock"
        status, body = await get(stack, url, spoofed)
        assert status == 403, body
        (event,) = await logged(stack, body["decision_id"])
        identity = event["input"]["identity"]
        assert identity["client_cert"]["issuer"] == {"commonName": "store-ca"}
        assert identity["issuer"] == PARTNERS, identity
        assert (await get(stack, url, spoofed))[0] == 403
        await wait_for(lambda: locked_out(stack, url, spoofed))
        status, body = await get(stack, url, certificates.ours)
        assert status == 403 and "error" not in body, body


def _spoofing_client(directory: Path, certificates: Pki) -> ssl.SSLContext:
    """The partner's wms-sync, issued by an intermediate the partner's CA signed and
    named "store-ca", like ours; the client sends the intermediate with it."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    partner, spoof = directory / "partner", directory / "spoof"
    spoof.mkdir(exist_ok=True)
    partner_ca = (
        x509.load_pem_x509_certificate((partner / "partner-ca.pem").read_bytes()),
        load_pem_private_key((partner / "partner-ca.key").read_bytes(), None),
    )
    intermediate = make_cert(spoof, "store-ca", partner_ca, ca=True)
    make_cert(spoof, "wms-sync", intermediate)
    (spoof / "chain.pem").write_bytes(
        (spoof / "wms-sync.pem").read_bytes() + (spoof / "store-ca.pem").read_bytes()
    )
    return certificates.client(spoof / "chain.pem", spoof / "wms-sync.key")


def _resumed_get(port: int, context: ssl.SSLContext) -> tuple[bool, int, dict[str, Any]]:
    """Two connections, the second resuming the first's TLS session (which keeps the
    client's certificate, not its chain): (resumed, the second's status and body)."""
    session, _, _, _ = get_on(port, context)
    _, resumed, status, body = get_on(port, context, session)
    return resumed, status, body


async def test_a_resumed_tls_session_keeps_the_ca_of_its_certificate(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """A resumed TLS session has no verified chain to read the CA from: the
    certificate is found as this process scoped it at the full handshake, or, once
    forgotten, by the signature of the CA of client_ca that issued it. One an
    intermediate issued is then no identity at all, never one unscoped."""
    async with mtls_stack(aiohttp_server, tmp_path, shared(redis_url)) as (
        stack, certificates, base,
    ):  # fmt: skip
        port = int(base.rsplit(":", 1)[1])
        spoofed = _spoofing_client(tmp_path, certificates)
        for cache_size in (10_000, 0):  # remembered, then never remembered
            stack.gateway.client_cas = ClientCas(
                client_cas(stack.config.listeners), cache_size=cache_size
            )
            for context in (certificates.partners, spoofed):
                resumed, status, body = await asyncio.to_thread(_resumed_get, port, context)
                assert resumed, body
                (event,) = await logged(stack, body["decision_id"])
                identity = event["input"]["identity"]
                if cache_size == 0 and context is spoofed:
                    assert status == 401 and identity["authenticated"] is False, identity
                else:
                    assert status == 403 and identity["issuer"] == PARTNERS, identity


def _cross_certified(directory: Path, certified: tuple[Any, Any], issuer: tuple[Any, Any]) -> Path:
    """`certified`'s CA certificate again, its subject and key, signed by `issuer`: a
    cross-certificate, as a partner's root issues for a CA it federates with."""
    certificate, key = certified
    now = datetime.datetime.now(datetime.UTC)
    cross = (
        x509.CertificateBuilder()
        .subject_name(certificate.subject)
        .issuer_name(issuer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
        .sign(issuer[1], hashes.SHA256())
    )
    path = directory / "cross-certified.pem"
    path.write_bytes(cross.public_bytes(serialization.Encoding.PEM))
    return path


def get_on(
    port: int,
    context: ssl.SSLContext,
    session: ssl.SSLSession | None = None,
    *,
    token: str | None = None,
) -> tuple[ssl.SSLSession, bool, int, dict[str, Any]]:
    """One request (with this bearer token, if any) on a connection of its own,
    resuming `session` if given: (the TLS session, whether it was resumed, the
    answer's status and body)."""
    raw = socket.create_connection(("localhost", port), timeout=10)
    with context.wrap_socket(raw, server_hostname="localhost", session=session) as conn:
        authorization = f"Authorization: Bearer {token}\r\n" if token else ""
        conn.sendall(
            b"GET /wms/stock HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            + f"{authorization}\r\n".encode()
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert conn.session is not None
        return conn.session, conn.session_reused, int(head.split(b" ", 2)[1]), json.loads(body)


def signer(directory: Path, name: str) -> tuple[x509.Certificate, Any]:
    """A CA make_cert wrote, as make_cert takes an issuer: its certificate and key."""
    return (
        x509.load_pem_x509_certificate((directory / f"{name}.pem").read_bytes()),
        load_pem_private_key((directory / f"{name}.key").read_bytes(), None),
    )


@contextlib.asynccontextmanager
async def internal_and_partner_facing(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> AsyncIterator[tuple[Stack, int, int]]:
    """A gateway with two TLS listeners: the internal one trusting store-ca alone,
    the partner-facing one partner-ca alone (pki's CAs). Yields the stack and the
    two ports."""
    internal, facing = free_port(), free_port()
    server = (tmp_path / "server.pem", tmp_path / "server.key")
    listeners = (
        Listener("127.0.0.1", internal, tls=TlsConfig(*server, tmp_path / "store/store-ca.pem")),
        Listener("127.0.0.1", facing, tls=TlsConfig(*server, tmp_path / "partner/partner-ca.pem")),
    )
    async with start_stack(
        aiohttp_server, tmp_path, gateway_port=internal, shared_state=shared(redis_url),
        listeners=listeners,
    ) as stack:  # fmt: skip
        yield stack, internal, facing


async def test_a_connection_is_scoped_by_a_ca_its_own_listener_trusts_not_by_another_listeners(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """Our wms-sync's issuing CA, "store-devices" (under store-ca), is cross-certified
    by the partner's root. The internal listener trusts store-ca alone; the
    partner-facing one, partner-ca alone. On the partner's listener the chain the
    handshake verified ends at partner-ca, the only CA it trusts: the identity is
    the partner's scope, whatever the same certificate was on the other listener
    before (a per-process cache by certificate answered every later handshake,
    full or resumed, on any listener, with the CA of the first: a connection was
    scoped by a CA its listener does not trust, and by which listener the service
    happened to reach first)."""
    certificates = pki(tmp_path)
    store, partner = tmp_path / "store", tmp_path / "partner"
    store_ca, partner_ca = signer(store, "store-ca"), signer(partner, "partner-ca")
    devices = make_cert(store, "store-devices", store_ca, ca=True)
    make_cert(store, "wms-sync", devices)  # issued by store-devices, not store-ca
    by_partner = _cross_certified(store, devices, partner_ca)
    leaf = (store / "wms-sync.pem").read_bytes()
    (store / "via-store.pem").write_bytes(leaf + (store / "store-devices.pem").read_bytes())
    (store / "via-partner.pem").write_bytes(leaf + by_partner.read_bytes())
    via_store = certificates.client(store / "via-store.pem", store / "wms-sync.key")
    via_partner = certificates.client(store / "via-partner.pem", store / "wms-sync.key")
    async with internal_and_partner_facing(aiohttp_server, tmp_path, redis_url) as (
        stack,
        internal,
        facing,
    ):

        async def issuer_on(
            port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None
        ) -> tuple[ssl.SSLSession, bool, str | None]:
            tls, resumed, _, body = await asyncio.to_thread(get_on, port, context, session)
            (event,) = await logged(stack, body["decision_id"])
            return tls, resumed, event["input"]["identity"].get("issuer")

        inside, _, issuer = await issuer_on(internal, via_store)
        assert issuer == OURS
        _, _, issuer = await issuer_on(facing, via_partner)
        assert issuer == PARTNERS, "scoped by a CA the partner-facing listener does not trust"
        _, resumed, issuer = await issuer_on(internal, via_store, inside)
        assert resumed and issuer == OURS, "a resumed session scoped by the other listener"
        _, _, issuer = await issuer_on(internal, via_store)
        assert issuer == OURS


async def test_a_forgotten_resumed_session_is_not_scoped_by_a_ca_its_listener_does_not_trust(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """store-ca is cross-certified by the partner's root; the partner-facing listener
    trusts partner-ca alone, the internal one store-ca. A service store-ca issued
    sends the cross-certificate with its own to the partner-facing listener: the
    handshake verifies it to partner-ca, the partner's scope. Its resumed session,
    once the process forgot the certificate, was checked against the signature of
    every listener's CAs: store-ca signed it, so the same connection path was
    suddenly mtls:CN=store-ca, a CA that listener does not trust. Only the
    listener's own CAs may vouch for it; none signed it, so it is no identity, as
    for a certificate an intermediate issued."""
    certificates = pki(tmp_path)
    store, partner = tmp_path / "store", tmp_path / "partner"
    store_ca, partner_ca = signer(store, "store-ca"), signer(partner, "partner-ca")
    make_cert(store, "till-7", store_ca)
    by_partner = _cross_certified(store, store_ca, partner_ca)
    (store / "via-partner.pem").write_bytes(
        (store / "till-7.pem").read_bytes() + by_partner.read_bytes()
    )
    via_partner = certificates.client(store / "via-partner.pem", store / "till-7.key")
    async with internal_and_partner_facing(aiohttp_server, tmp_path, redis_url) as (
        stack,
        _,
        facing,
    ):
        session, _, _, body = await asyncio.to_thread(get_on, facing, via_partner)
        (event,) = await logged(stack, body["decision_id"])
        assert event["input"]["identity"]["issuer"] == PARTNERS
        stack.gateway.client_cas = ClientCas(client_cas(stack.config.listeners), cache_size=0)
        _, resumed, _, body = await asyncio.to_thread(get_on, facing, via_partner, session)
        assert resumed, body
        (event,) = await logged(stack, body["decision_id"])
        identity = event["input"]["identity"]
        assert identity.get("issuer") != OURS, "scoped by a CA the listener does not trust"
        assert identity["authenticated"] is False, identity


async def test_admin_commands_name_a_certificates_ca_and_unlock_only_its_service(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """Unlock takes the CA's name (`mtls` alone is no longer one: it named every
    CA's services at once); unlocking the partner's wms-sync leaves ours locked out.
    A revoke under a CA's name is refused as under `mtls` before it: a certificate
    has no session or token to revoke."""
    async with (
        mtls_stack(aiohttp_server, tmp_path, shared(redis_url, lockout=LOCKOUT)) as (
            stack, certificates, base,
        ),
        admin(stack.gateway) as api,
    ):  # fmt: skip
        url = f"{base}/wms/stock"
        for context in (certificates.ours, certificates.partners):
            for _ in range(2):
                await get(stack, url, context)
            await wait_for(lambda context=context: locked_out(stack, url, context))
        answer = await api.post("/sessions/unlock", json={"user": "wms-sync", "issuer": "mtls"})
        body = await answer.json()
        assert answer.status == 400 and body["error"] == "unknown_issuer", body
        assert OURS in body["issuers"] and PARTNERS in body["issuers"], body
        answer = await api.post("/sessions/unlock", json={"user": "wms-sync", "issuer": PARTNERS})
        assert answer.status == 200 and (await answer.json())["was_locked"], await answer.text()
        status, body = await get(stack, url, certificates.partners)
        assert status == 403 and "error" not in body, body
        assert await locked_out(stack, url, certificates.ours)
        answer = await api.post("/sessions/revoke", json={"user": "wms-sync", "issuer": OURS})
        body = await answer.json()
        assert answer.status == 400 and body["error"] == "not_revocable", body
        # The command line takes the same name.
        result = await session_command(
            stack, tmp_path, redis_url, "client_ca.pem", "unlock", "--user", "wms-sync",
            "--issuer", OURS,
        )  # fmt: skip
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert result.stdout.strip() == f"unlocked wms-sync ({OURS})", result.stdout
        status, body = await get(stack, url, certificates.ours)
        assert status == 403 and "error" not in body, body


async def test_a_certificate_lockout_from_before_cas_were_named_holds_under_every_ca(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """A lockout written under `mtls` alone can't say which CA's wms-sync earned it:
    it holds for wms-sync under every CA until it expires (fail closed), and an
    unlock under one CA's name, with two trusted, says it is still there."""
    async with (
        mtls_stack(aiohttp_server, tmp_path, shared(redis_url, lockout=LOCKOUT)) as (
            stack, certificates, base,
        ),
        admin(stack.gateway) as api,
    ):  # fmt: skip
        assert stack.gateway.shared is not None
        key = stack.gateway.shared.keys.user_lockout(CLIENT_CERTIFICATE_ISSUER, "wms-sync")
        async with redis.asyncio.from_url(redis_url) as r:
            await r.set(key, '{"at": 1, "reason": "10 denies", "by": "gateway"}', ex=600)
        url = f"{base}/wms/stock"
        for context in (certificates.ours, certificates.partners):
            assert await locked_out(stack, url, context)
        answer = await api.post("/sessions/unlock", json={"user": "wms-sync", "issuer": OURS})
        body = await answer.json()
        assert answer.status == 200 and "still_locked_until" in body, body
        assert await locked_out(stack, url, certificates.ours)


def test_a_ca_renewed_under_its_name_with_a_new_key_is_one_issuer_and_said_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A CA renewed with a new key under its old name (AD CS does this) is trusted
    as both while the old key's certificates last: one CA, whose services keep
    one scope; the gateway starts, and says so in a warning naming it (two
    organisations' CAs of one name would be one scope too)."""
    pki(tmp_path)
    renewed = tmp_path / "renewed"
    renewed.mkdir()
    make_cert(renewed, "store-ca", None, ca=True)
    listener = {"tls": {"cert": "server.pem", "key": "server.key", "client_ca": "client_ca.pem"}}
    other = {"port": 8444, "tls": {"cert": "server.pem", "key": "server.key",
                                   "client_ca": "renewed/store-ca.pem"}}  # fmt: skip
    config = parse_config({"listeners": [listener, other], "auth": False}, tmp_path)
    cas = client_cas(config.listeners)
    assert [ca.issuer for ca in cas] == [OURS, PARTNERS, OURS]
    assert names_of_several_keys(cas) == [OURS]
    with caplog.at_level(logging.WARNING, logger="portcullis.gateway"):
        Gateway(config)
    [warning] = [r.getMessage() for r in caplog.records if "several keys" in r.getMessage()]
    assert repr(OURS) in warning
    # The same CA twice is one CA, and nothing to say.
    other["tls"]["client_ca"] = "store/store-ca.pem"  # type: ignore[index]
    config = parse_config({"listeners": [listener, other], "auth": False}, tmp_path)
    assert [ca.issuer for ca in client_cas(config.listeners)] == [OURS, PARTNERS]
    assert names_of_several_keys(client_cas(config.listeners)) == []


def test_a_token_issuer_may_not_take_a_cas_name(tmp_path: Path) -> None:
    """Keyed `mtls:<CA>`, a token issuer of that name would share its services' state."""
    for name in (OURS, "mtls:CN=store-ca/"):
        data = {"issuers": [{"issuer": name, "audiences": ["a"], "discovery": True}]}
        with pytest.raises(ConfigError, match=r"^issuers\[0\]\.issuer: .* client-certificate"):
            parse_config(data, tmp_path)
