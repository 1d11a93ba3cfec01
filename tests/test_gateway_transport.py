"""Transport-level behaviour: TLS and client certificates, JWKS refresh limits,
and graceful shutdown that lets in-flight requests finish."""

from __future__ import annotations

import asyncio
import datetime
import json
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import Issuer
from gateway.demo import DevIssuer
from gateway.jwks import JwksCache
from tests.conftest import POLICIES, ROOT
from tests.gateway_stack import ServerFactory, free_port


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_cert(
    directory: Path,
    name: str,
    issuer: tuple[x509.Certificate, Any] | None,
    *,
    ca: bool = False,
    subject: x509.Name | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, Any]:
    """A certificate `name`.pem (and its key, `name`.key) issued by `issuer`, or
    self-signed; its subject CN=`name` unless `subject` is given, and a leaf's SANs
    DNS:localhost unless `sans` are."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject if subject is not None else _name(name))
        .issuer_name(issuer[0].subject if issuer else subject or _name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        # Key identifiers, as real CAs write them: OpenSSL picks an issuer of the
        # right name by them, so a CA and an intermediate of one name can't be mixed up.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(sans if sans is not None else [x509.DNSName("localhost")]),
            critical=False,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def start_gateway(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "portcullis", "gateway", "--config", str(config)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


async def wait_ready(url: str, process: subprocess.Popen[str], context: Any = None) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1]
            try:
                async with session.get(url, ssl=context) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


async def test_tls_listener_requires_a_client_certificate_when_configured(tmp_path: Path) -> None:
    ca = make_cert(tmp_path, "ca", None, ca=True)
    make_cert(tmp_path, "server", ca)
    make_cert(tmp_path, "client", ca)
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"listeners:\n  - {{address: 127.0.0.1, port: {port}, tls: {{cert: server.pem, "
        "key: server.key, client_ca: ca.pem, require_client_cert: true}}\n"
        f"auth: false\npolicy: {{source: {POLICIES}}}\n"
    )
    gateway = start_gateway(config)
    trusted = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with_cert.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    url = f"https://localhost:{port}/healthz"
    try:
        await wait_ready(url, gateway, with_cert)
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.get(url, ssl=trusted) as response:
                    await response.read()
            async with session.get(url, ssl=with_cert) as response:
                assert response.status == 200
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.communicate(timeout=30)


def test_tls_files_that_do_not_exist_are_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("listeners: [{port: 1, tls: {cert: nope.pem, key: nope.key}}]\nauth: false\n")
    result = subprocess.run(
        [sys.executable, "-m", "portcullis", "gateway", "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "listeners[0].tls.cert: no such file" in result.stderr


async def test_unknown_kids_refresh_the_jwks_once_per_interval(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    issuer = DevIssuer(tmp_path, "https://idp.example")
    hits: list[float] = []

    async def jwks(request: web.Request) -> web.Response:
        hits.append(time.monotonic())
        await asyncio.sleep(0.05)
        return web.json_response({"keys": [issuer.jwk]})

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    server = await aiohttp_server(app)
    config = Issuer(
        "https://idp.example", ("portcullis",), f"http://127.0.0.1:{server.port}/jwks.json"
    )
    async with aiohttp.ClientSession() as session:
        cache = JwksCache(config, session, min_refresh_interval=60)
        found = await asyncio.gather(*(cache.get(f"forged-{i}") for i in range(50)))
        assert found == [None] * 50
        assert len(hits) == 1  # concurrent misses shared one fetch
        for i in range(20):
            assert await cache.get(f"again-{i}") is None
        assert len(hits) == 1  # and later misses waited for the interval
        assert await cache.get(issuer.kid) is not None


async def test_graceful_shutdown_finishes_in_flight_requests(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.sleep(1.5)
        return web.Response(text="done")

    backend = web.Application()
    backend.router.add_get("/{tail:.*}", slow)
    upstream = await aiohttp_server(backend)
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"listeners: [{{address: 127.0.0.1, port: {port}}}]\nauth: false\n"
        f"policy: {{source: {POLICIES}}}\n"
        f"routes: [{{app: wms, upstream: 'http://127.0.0.1:{upstream.port}', "
        "path_prefix: /wms/}]\n"
    )
    gateway = start_gateway(config)
    try:
        await wait_ready(f"http://127.0.0.1:{port}/healthz", gateway)
        async with aiohttp.ClientSession() as session:
            in_flight = asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/wms/slow"))
            # In flight: the gateway forwarded it (a fixed 0.5 s could pass before
            # the request reached a gateway on a loaded machine: refused, not finished).
            await asyncio.wait_for(arrived.wait(), 10)
            gateway.send_signal(signal.SIGTERM)
            response = await in_flight
            assert response.status == 200
            assert await response.text() == "done"
    finally:
        if gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
        _, err = gateway.communicate(timeout=30)
    assert gateway.returncode == 0, err


async def test_client_certificate_identifies_a_service_to_the_policy(tmp_path: Path) -> None:
    ca = make_cert(tmp_path, "ca", None, ca=True)
    make_cert(tmp_path, "server", ca)
    make_cert(tmp_path, "scanner-bot", ca)
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"listeners:\n  - {{address: 127.0.0.1, port: {port}, tls: {{cert: server.pem, "
        "key: server.key, client_ca: ca.pem}}\n"
        f"policy: {{source: {POLICIES}}}\n"
        "issuers: [{issuer: 'https://idp.example', audiences: [portcullis], "
        "jwks_url: 'http://127.0.0.1:9/jwks.json'}]\n"
        "routes: [{app: wms, upstream: 'http://127.0.0.1:9', path_prefix: /wms/}]\n"
        "decision_log: {path: decisions.log}\n"
    )
    gateway = start_gateway(config)
    anonymous = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with_cert.load_cert_chain(tmp_path / "scanner-bot.pem", tmp_path / "scanner-bot.key")
    base = f"https://localhost:{port}"
    try:
        await wait_ready(f"{base}/healthz", gateway, anonymous)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/wms/stock", ssl=anonymous) as response:
                assert response.status == 401  # optional client cert: none, no token
            async with session.get(f"{base}/wms/stock", ssl=with_cert) as response:
                assert response.status == 403  # known service, but not in group warehouse
                assert (await response.json())["reasons"] == [
                    "requires MFA with one of: fido, hwk, mfa, otp, swk",
                    "requires membership in one of: warehouse",
                ]
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.communicate(timeout=30)
    events = [json.loads(line) for line in (tmp_path / "decisions.log").read_text().splitlines()]
    identities = [e["input"]["identity"] for e in events if "decision_id" in e]
    assert identities[0] == {"authenticated": False, "method": "none"}
    assert identities[1]["method"] == "mtls"
    assert identities[1]["issuer"] == "mtls:CN=ca"  # the CA that issued it (its scope)
    assert identities[1]["subject"] == "scanner-bot"
    assert identities[1]["client_cert"]["issuer"] == {"commonName": "ca"}


async def test_issuer_keys_found_through_oidc_discovery(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    issuer = DevIssuer(tmp_path, "")
    server = await aiohttp_server(issuer.app())
    issuer.issuer = f"http://127.0.0.1:{server.port}"
    config = Issuer(issuer.issuer, ("portcullis",), discovery=True)
    async with aiohttp.ClientSession() as session:
        cache = JwksCache(config, session)
        assert await cache.get(issuer.kid) is not None
