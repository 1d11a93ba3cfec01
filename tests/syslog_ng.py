"""A real syslog-ng (Debian's syslog-ng-core) on loopback for the shipping tests: an
RFC 5424 TCP source and a TLS source (a throwaway CA and server certificate made
with `cryptography`), each writing the messages it receives to a file."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import complete_lines
from tests.gateway_stack import free_port

SYSLOG_NG = shutil.which("syslog-ng") or "/usr/sbin/syslog-ng"

CONFIG = """@version: 3.38
options {{ log-msg-size(1048576); flush-lines(0); stats-freq(0); }};
source s_tcp {{ syslog(ip("127.0.0.1") port({tcp_port}) transport("tcp") max-connections(10)); }};
source s_tls {{ syslog(ip("127.0.0.1") port({tls_port}) transport("tls")
    tls(key-file("{dir}/server.key") cert-file("{dir}/server.pem") peer-verify(optional-untrusted))
    max-connections(10)); }};
destination d_tcp {{ file("{dir}/tcp.out" template("$MSGID $SDATA $MSG\\n")); }};
destination d_tls {{ file("{dir}/tls.out" template("$MSGID $SDATA $MSG\\n")); }};
log {{ source(s_tcp); destination(d_tcp); }};
log {{ source(s_tls); destination(d_tls); }};
"""


def make_ca(directory: Path, host: str = "127.0.0.1") -> Path:
    """A CA and a server certificate for ``host``; returns the CA's PEM path."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "portcullis test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return directory / "ca.pem"


@dataclass
class SyslogNg:
    directory: Path
    tcp_port: int
    tls_port: int
    ca: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "syslog-ng.conf"
        conf.write_text(
            CONFIG.format(dir=self.directory, tcp_port=self.tcp_port, tls_port=self.tls_port)
        )
        self.process = subprocess.Popen(
            [SYSLOG_NG, "-F", "--no-caps", "-f", str(conf), "-R", str(self.directory / "persist"),
             "-p", str(self.directory / "pid"), "-c", str(self.directory / "ctl")],
            stdout=subprocess.DEVNULL, stderr=open(self.directory / "stderr.log", "ab"),  # noqa: SIM115
        )  # fmt: skip
        deadline = time.monotonic() + 10
        for port in (self.tcp_port, self.tls_port):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError(
                            "syslog-ng did not start: "
                            + (self.directory / "stderr.log").read_text()[-2000:]
                        ) from None
                    time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)

    def messages(self, source: str = "tcp") -> list[tuple[str, dict[str, Any]]]:
        """(MSGID, JSON body) of every message written by the ``tcp`` or ``tls`` source."""
        path = self.directory / f"{source}.out"
        if not path.exists():
            return []
        found = []
        for line in complete_lines(path.read_text(encoding="utf-8")):
            msgid, _, rest = line.partition(" ")
            start = rest.find("{")
            found.append((msgid, json.loads(rest[start:].lstrip("\ufeff"))))
        return found

    async def written(
        self, source: str, ids: list[str], timeout: float = 10.0
    ) -> list[tuple[str, dict[str, Any]]]:
        """:meth:`messages`, once every decision id in ``ids`` is among them (or the
        timeout). A batch counts as shipped once syslog-ng's kernel acknowledged
        it: syslog-ng itself reads and writes it out later, on a loaded machine
        seconds later, so reading its file at once can miss the last messages."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(source)
            if set(ids) <= {_decision_id(body) for _, body in found} or (
                time.monotonic() > deadline
            ):
                return found
            await asyncio.sleep(0.05)


def _decision_id(body: dict[str, Any]) -> Any:
    """The decision id in an OCSF (metadata.uid) or ECS (event.id) message."""
    return body.get("metadata", {}).get("uid") or body.get("event", {}).get("id")


def start_syslog_ng(directory: Path) -> SyslogNg:
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory)
    server = SyslogNg(directory, free_port(), free_port(), ca)
    server.start()
    return server


def installed() -> bool:
    return os.access(SYSLOG_NG, os.X_OK)
