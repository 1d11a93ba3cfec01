"""Headers refused before routing (gateway/screening/headers.py): bytes that are not
UTF-8 never blank a decision-log record or become "policy evaluation failed", and
a Host that is not a host[:port] never reaches a backend's X-Forwarded-Host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.audit.chain import REFUSAL_PATH
from gateway.audit.reader import verify_log
from gateway.audit.writer import DecisionLog
from gateway.screening.headers import bad_host
from tests.gateway_stack import Stack, raw_request

WAREHOUSE = {"groups": ["warehouse"], "amr": ["pwd", "otp"]}


@pytest.mark.parametrize(
    ("target", "extra", "name"),
    [
        (b"/wms/admin/users", b"X-Probe: \xe9\r\n", "X-Probe"),
        (b"/nothing-here", b"X-Probe: \xe9\r\n", "X-Probe"),
        (b"/wms/%2e%2e/pos/refunds", b"X-Probe: \xe9\r\n", "X-Probe"),
        (b"/wms/stock", b"X-Latin-1: caf\xe9 cr\xe8me\r\n", "X-Latin-1"),
    ],
)
async def test_non_utf8_header_is_a_logged_400_not_a_blank_record(
    stack: Stack, target: bytes, extra: bytes, name: str
) -> None:
    """The pen test: one `\\xe9` byte turned the record into {"unserialisable": ...}
    (no path, subject, address or outcome) and an allowed request into a 403."""
    token = stack.token("alice", **WAREHOUSE).encode()
    status, _, body = await raw_request(
        stack.url,
        b"GET " + target + b" HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer " + token
        + b"\r\n" + extra,
    )  # fmt: skip
    assert status == 400, body
    assert json.loads(body)["error"] == "bad_header"
    assert stack.total_forwarded() == 0
    (event,) = await stack.events()
    assert event["path"] == REFUSAL_PATH
    assert event["result"]["reasons"][0].startswith(f"gateway.bad_header: header '{name}'")
    http = event["input"]["attributes"]["request"]["http"]
    assert http["path"] == target.decode()
    assert "\ufffd" in http["headers"][name.lower()]
    assert event["input"]["attributes"]["source"]["address"]["socketAddress"]["address"]
    assert b"unserialisable" not in stack.log_path.read_bytes()


async def test_non_utf8_host_is_a_logged_400(stack: Stack) -> None:
    status, _, body = await raw_request(stack.url, b"GET /wms/stock HTTP/1.1\r\nHost: \xe9vil\r\n")
    assert status == 400, body
    (event,) = await stack.events()
    assert event["result"]["reasons"][0].startswith("gateway.bad_header: header 'Host'")
    assert event["input"]["attributes"]["request"]["http"]["host"] == "\ufffdvil"


async def test_decision_log_keeps_a_record_with_undecodable_text(tmp_path: Path) -> None:
    """Defence in depth: whatever reaches the writer with lone surrogates is written
    whole (escaped), never replaced by {"unserialisable"}, and the chain verifies."""
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "d.jsonl"
    key = ec.generate_private_key(ec.SECP256R1())
    log = DecisionLog(path, key, key_id="k")
    await log.start()
    given = {"attributes": {"request": {"http": {"path": "/wms/x", "headers": {"x": "\udce9"}}}}}
    log.record(decision_id="d-1", input=given, result={"allow": False}, revision="r", metrics={})
    await log.close()
    (line,) = [raw for raw in path.read_bytes().splitlines() if b'"decision_id"' in raw]
    event = json.loads(line)
    assert event["input"]["attributes"]["request"]["http"]["path"] == "/wms/x"
    assert event["input"]["attributes"]["request"]["http"]["headers"]["x"] == "\udce9"
    assert event["result"] == {"allow": False}
    assert verify_log([path], {"k": key.public_key()}).complete


@pytest.mark.parametrize(
    "host",
    [b"evil.example/<x>\"", b"", b"a b", b"[zz]", b"gw:99999", b"gw:80x", b"x'y", b"a%2fb"],
)  # fmt: skip
async def test_malformed_host_is_refused_before_routing(stack: Stack, host: bytes) -> None:
    """The pen test: `Host: evil.example/<x>"` reached a backend as X-Forwarded-Host
    on a 200, and an empty Host as ''."""
    token = stack.token("alice", **WAREHOUSE).encode()
    status, _, body = await raw_request(
        stack.url,
        b"GET /wms/stock HTTP/1.1\r\nHost: "
        + host
        + b"\r\nAuthorization: Bearer "
        + token
        + b"\r\n",
    )
    assert status == 400, body
    assert json.loads(body)["error"] == "bad_host"
    assert stack.total_forwarded() == 0
    (event,) = await stack.events()
    assert event["result"]["reasons"][0].startswith("gateway.bad_host: ")


@pytest.mark.parametrize("host", ["gw", "gw.example.com:8443", "127.0.0.1", "[::1]:80", "a_b"])
async def test_valid_host_reaches_the_backend_as_x_forwarded_host(stack: Stack, host: str) -> None:
    response = await stack.get(
        "/wms/stock", stack.token("alice", **WAREHOUSE), headers={"Host": host}
    )
    assert response.status == 200
    assert (await response.json())["headers"]["X-Forwarded-Host"] == host


def test_host_syntax() -> None:
    assert bad_host("[fe80::1%25eth0]") is not None  # a zone id names the client's interface
    assert bad_host("[v1.fe]:80") is None  # IPvFuture
    assert bad_host("a" * 300) is not None
    assert bad_host("gw:") is None  # RFC 3986: port = *DIGIT
