"""An https sink behind a private CA (`tls: {ca_file, cert_file, key_file,
server_name}`, as the syslog sink spells it): verified against that CA with the
hostname checked, refused and retried (never dropped) when it doesn't verify,
picked up once the CA file is fixed; config errors name their key. The receiver
is a real HTTPS server (aiohttp) with a throwaway CA made here."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.audit.shipping.settings import SinkConfig, SinkTls, sink_from_json, sink_to_json
from gateway.audit.shipping.shipper import Shipper
from gateway.config import ConfigError, parse_config

RECORDS = 12


@dataclass
class Pki:
    """A CA, and a certificate it signed for ``localhost`` (DNS name only)."""

    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
    encipher_only=False, decipher_only=False,
)  # fmt: skip


def make_pki(directory: Path, label: str) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{label} CA"))
        .issuer_name(_name(f"{label} CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )  # fmt: skip
    return pki


@dataclass
class HttpsReceiver:
    """OPA's decision-log API (POST /logs, a gzip'd JSON array) over HTTPS."""

    port: int = 0
    batches: list[list[dict[str, Any]]] = field(default_factory=list)

    async def logs(self, request: web.Request) -> web.Response:
        self.batches.append(json.loads(gzip.decompress(await request.read())))
        return web.Response(status=204)

    def seqs(self) -> list[int]:
        return [event["seq"] for batch in self.batches for event in batch]


@contextlib.asynccontextmanager
async def serve_https(pki: Pki, client_ca: Path | None = None) -> AsyncIterator[HttpsReceiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    if client_ca is not None:  # mutual TLS: a client certificate this CA signed
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    receiver = HttpsReceiver()
    app = web.Application(handler_args={"auto_decompress": False})
    app.router.add_post("/logs", receiver.logs)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    receiver.port = runner.addresses[0][1]
    try:
        yield receiver
    finally:
        await runner.cleanup()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "corp", "corp")


@pytest.fixture
async def receiver(pki: Pki) -> AsyncIterator[HttpsReceiver]:
    async with serve_https(pki) as server:
        yield server


def decision_log(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "decisions.log"
    log.write_text("".join(json.dumps({"seq": seq, "decision_id": f"d{seq}"}) + "\n"
                           for seq in range(1, RECORDS + 1)))  # fmt: skip
    return log


def https_sink(url: str, tls: SinkTls) -> SinkConfig:
    return SinkConfig("splunk", "http", url=url, tls=tls, timeout=2.0, retry_initial=0.05,
                      retry_max=0.2, batch_max_events=5)  # fmt: skip


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


async def ship(config: SinkConfig, log: Path) -> Shipper:
    """The shipper of ``config``, started, until it acknowledged the whole log."""
    shipper = Shipper(config, log)
    shipper.start()
    try:
        await until(lambda: shipper.acknowledged == RECORDS)
    finally:
        await shipper.stop(1.0)
    return shipper


async def test_an_https_sink_ships_to_a_receiver_its_private_ca_signed(
    tmp_path: Path, pki: Pki, receiver: HttpsReceiver
) -> None:
    config = https_sink(f"https://localhost:{receiver.port}/logs", SinkTls(ca_file=pki.ca))
    shipper = await ship(config, decision_log(tmp_path))
    assert receiver.seqs() == list(range(1, RECORDS + 1))
    assert shipper.report()["failing"] == 0.0 and shipper.retried == 0


async def test_a_receiver_another_ca_signed_is_refused_retried_and_shipped_once_the_ca_is_fixed(
    tmp_path: Path, pki: Pki, receiver: HttpsReceiver
) -> None:
    """Trusting the wrong CA: nothing is sent (the handshake fails), the batch waits
    and is retried, `failing` is 1; the CA file replaced (a remounted Secret) is
    read again on the next attempt, and every record ships, in order."""
    wrong = make_pki(tmp_path / "other", "other")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(wrong.ca.read_bytes())
    config = https_sink(f"https://localhost:{receiver.port}/logs", SinkTls(ca_file=ca))
    shipper = Shipper(config, decision_log(tmp_path))
    shipper.start()
    try:
        await until(lambda: shipper.retried >= 10)
        report = shipper.report()
        assert report["failing"] == 1.0 and report["acknowledged"] == 0
        assert report["acked_seq"] == 0 and receiver.batches == []
        ca.write_bytes(pki.ca.read_bytes())
        await until(lambda: shipper.acknowledged == RECORDS)
        assert shipper.report()["failing"] == 0.0
    finally:
        await shipper.stop(1.0)
    assert receiver.seqs() == list(range(1, RECORDS + 1))


async def test_the_hostname_is_checked_against_the_url_or_server_name(
    tmp_path: Path, pki: Pki, receiver: HttpsReceiver
) -> None:
    """The certificate names `localhost` only: by IP address it is refused, with
    `server_name: localhost` accepted."""
    url = f"https://127.0.0.1:{receiver.port}/logs"
    shipper = Shipper(https_sink(url, SinkTls(ca_file=pki.ca)), decision_log(tmp_path))
    shipper.start()
    try:
        await until(lambda: shipper.retried >= 5)
        assert shipper.report()["failing"] == 1.0 and shipper.acknowledged == 0
    finally:
        await shipper.stop(0.1)
    assert receiver.batches == []
    named = https_sink(url, SinkTls(ca_file=pki.ca, server_name="localhost"))
    await ship(named, decision_log(tmp_path / "named"))
    assert receiver.seqs() == list(range(1, RECORDS + 1))


async def test_an_https_sink_presents_its_client_certificate(tmp_path: Path, pki: Pki) -> None:
    client = make_pki(tmp_path / "client", "client")
    async with serve_https(pki, client_ca=client.ca) as server:
        url = f"https://localhost:{server.port}/logs"
        without = Shipper(https_sink(url, SinkTls(ca_file=pki.ca)), decision_log(tmp_path))
        without.start()
        try:
            await until(lambda: without.retried >= 5)
            assert without.acknowledged == 0 and server.batches == []
        finally:
            await without.stop(0.1)
        tls = SinkTls(ca_file=pki.ca, cert_file=client.cert, key_file=client.key)
        await ship(https_sink(url, tls), decision_log(tmp_path / "mtls"))
        assert server.seqs() == list(range(1, RECORDS + 1))


# --- the config -----------------------------------------------------------------------------


def http_config(tmp_path: Path, **sink: Any) -> SinkConfig:
    item = {"name": "splunk", "kind": "http", "url": "https://splunk.example.com:8088/logs"}
    data = {"auth": False, "decision_log": {"path": "d.log", "sinks": [item | sink]}}
    (config,) = parse_config(data, tmp_path).decision_log.sinks
    return config


def test_an_http_sinks_tls_is_read_like_a_syslog_sinks(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "ca.pem").write_bytes(pki.ca.read_bytes())
    tls = {"ca_file": "ca.pem", "cert_file": str(pki.cert), "key_file": str(pki.key),
           "server_name": "splunk.internal"}  # fmt: skip
    config = http_config(tmp_path, tls=tls)
    assert config.tls == SinkTls(tmp_path / "ca.pem", pki.cert, pki.key, "splunk.internal")
    # As the gateway hands it to the shipping process.
    assert sink_from_json(json.loads(json.dumps(sink_to_json(config)))) == config
    assert http_config(tmp_path).tls is None  # the system CAs


@pytest.mark.parametrize(
    ("sink", "message"),
    [
        ({"tls": {"ca_file": "missing.pem"}}, r"sinks\[0\]\.tls\.ca_file: no such file .*missing"),
        ({"tls": {"ca_file": "garbage.pem"}},
         r"sinks\[0\]\.tls\.ca_file: .*garbage\.pem is not a PEM CA certificate"),
        ({"tls": {"ca_file": "garbage.pem"}, "url": "http://splunk:8088/logs"},
         r"sinks\[0\]\.tls: needs an https:// url"),
        ({"tls": {"cert_file": "garbage.pem"}}, r"cert_file and key_file go together"),
        ({"tls": {"ca": "garbage.pem"}}, r"sinks\[0\]\.tls\.ca: unknown key"),
        ({"tls": True}, r"sinks\[0\]\.tls: expected dict"),
    ],
    ids=["missing", "not-pem", "plain-http", "cert-without-key", "unknown-key", "bool"],
)  # fmt: skip
def test_an_http_sinks_tls_that_cant_work_is_refused_at_the_start(
    tmp_path: Path, sink: dict[str, Any], message: str
) -> None:
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=message):
        http_config(tmp_path, **sink)
