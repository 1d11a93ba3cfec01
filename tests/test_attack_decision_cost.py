"""One request's decision runs on the event loop: an input that makes it slow
stalls every other request of the process. What a client sends, or what its own
issuer-signed token carries, must cost about what a typical decision costs.

Timings are CPU time (time.thread_time) of EmbeddedEngine.evaluate_sync on the
gateway's own engine (build_engine: the compiled VM, an allow confirmed on the
interpreter), taken interleaved with the typical decision they are compared to,
so a busy machine slows both alike."""

from __future__ import annotations

import base64
import dataclasses
import json
import statistics
import time
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.config import Route
from gateway.identity import MAX_TOKEN_BYTES, Identity
from gateway.policy.decision import DECISION_REF, decision_input
from gateway.policy.reload import build_engine
from gateway.screening.paths import normalize
from policy_engine import EmbeddedEngine
from tests.conftest import POLICIES

WMS = Route("wms", "http://127.0.0.1:9101", "/wms/")
# A warehouse picker signed in with OTP a minute ago: allowed on /wms/.
PICKER = Identity(
    authenticated=True,
    method="bearer",
    subject="picker-1",
    groups=("warehouse",),
    amr=("pwd", "otp"),
    acr="mfa",
    auth_time=int(time.time()) - 60,
    issuer="https://idp.example",
)
# A decision this many times a typical one's CPU is one client's lever on all others.
# (The longest claim lists a token holds cost 0.8-2x; a policy that loops over them
# in the VM cost 4-5.5x, and ~2,500 values ran it past the VM's instruction limit
# onto the interpreter, 8-12x.)
MAX_RATIO = 3.0


def fill_token(claim: str, item: str, last: str | None = None) -> list[str]:
    """The longest list of ``item`` (then ``last``) an RS256 bearer token the
    gateway takes (MAX_TOKEN_BYTES) can carry as ``claim``. Short values: the
    count of values, not their length, is what a loop costs."""
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","kid":"key-1","typ":"JWT"}')
    signature_chars = 342  # 256 bytes, base64url
    others = {"iss": "https://idp.example", "sub": "picker-1", "aud": "portcullis",
              "exp": 2000000000, "iat": 1900000000, "auth_time": 1900000000}  # fmt: skip

    def field_size(values: list[str]) -> int:
        payload = json.dumps({**others, claim: values}, separators=(",", ":")).encode()
        token = len(header) + 1 + len(base64.urlsafe_b64encode(payload)) + 1 + signature_chars
        return token

    tail = [last] if last is not None else []
    count = (MAX_TOKEN_BYTES * 3 // 4) // (len(item) + 3)
    while field_size([item] * count + tail) > MAX_TOKEN_BYTES:
        count -= 1
    return [item] * count + tail


def picker_input(identity: Identity, path: str = "/wms/orders/42") -> dict[str, Any]:
    request = make_mocked_request("GET", path, headers={"Host": "gw.example"})
    return decision_input(request, normalize(path), WMS, identity, "request-1")


def cpu_ratio(engine: EmbeddedEngine, document: dict[str, Any], rounds: int = 40) -> float:
    """Median CPU time of deciding ``document`` over that of the picker's typical
    decision (an allow), the two measured in turn."""
    typical = picker_input(PICKER)
    heavy, light = [], []
    for _ in range(rounds):
        for sample, doc in ((light, typical), (heavy, document)):
            started = time.thread_time()
            engine.evaluate_sync(DECISION_REF, doc)
            sample.append(time.thread_time() - started)
    return statistics.median(heavy) / statistics.median(light)


@pytest.fixture(scope="module")
def engine() -> EmbeddedEngine:
    built = build_engine(str(POLICIES), timeout_ms=10_000)
    assert isinstance(built, EmbeddedEngine)
    return built


@pytest.mark.parametrize(
    ("path", "claims", "allow"),
    [
        # No MFA method among them: a deny that reads every value.
        ("/wms/orders/42", {"amr": tuple(fill_token("amr", "a")), "acr": None}, False),
        # The app's group last, not the admin override's: both checks read them all.
        ("/wms/admin/users", {"groups": tuple(fill_token("groups", "g", "warehouse"))}, False),
        # The app's group last: an allow, confirmed on the interpreter.
        ("/wms/orders/42", {"groups": tuple(fill_token("groups", "g", "warehouse"))}, True),
    ],
    ids=["amr-without-mfa", "groups-on-admin-override", "groups-member-last"],
)
def test_attack_token_claim_lists_as_long_as_a_token_holds_cost_a_typical_decision(
    engine: EmbeddedEngine, path: str, claims: dict[str, Any], allow: bool
) -> None:
    identity = dataclasses.replace(PICKER, **claims)
    document = picker_input(identity, path)
    assert engine.evaluate_sync(DECISION_REF, document)["allow"] is allow
    ratio = cpu_ratio(engine, document)
    count = len(identity.groups) + len(identity.amr)
    assert ratio < MAX_RATIO, f"{count} claim values: {ratio:.1f}x the CPU of a typical decision"
