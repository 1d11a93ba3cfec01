"""The lockout's Origin rule and the policy's are one rule: a deny is left
uncounted as another host's page (gateway/shared/third_party.py) only when the
policy refuses that request by its Origin too (decision.rego from_another_site,
origin_host), and every Origin a browser can send (`null`, scheme://host[:port])
is judged alike by both. Where they differ, on values no browser sends (no
scheme, an empty host, two Origins), the deny counts: fail closed."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.identity import Identity
from gateway.shared.third_party import CROSS_ORIGIN, another_sites_request
from policy_engine import load_policy_set
from policy_engine.embedded import new_engine
from tests.conftest import POLICIES

SESSION = Identity(authenticated=True, method="session", subject="alice", groups=("warehouse",))
BROWSER_ORIGIN = re.compile(r"null|[a-z][a-z0-9+.-]*://[^/]+")
_hosts = st.sampled_from(["gw.example", "gw.example:8443", "GW.example", "shop.gw.example", ""])
_schemes = st.sampled_from(["https", "http", "HTTPS", "chrome-extension", ""])
_origins = st.one_of(
    st.sampled_from(["null", "", "https://", "gw.example", "https://gw.example/"]),
    st.builds(lambda s, h: f"{s}://{h}", _schemes, _hosts),
    st.text(alphabet=":/ .,nulgwexamp0-9", max_size=24),
)


@pytest.fixture(scope="module")
def engine() -> Any:
    return new_engine(load_policy_set(POLICIES))


def refused_by_origin(engine: Any, host: str, origins: list[str]) -> bool:
    engine.set_input(
        {
            "attributes": {
                "request": {
                    "http": {
                        "method": "POST",
                        "host": host,
                        "headers": {"origin": ",".join(origins)} if origins else {},
                    }
                }
            },
            "route": {"app": "wms"},
            "identity": SESSION.to_input(),
        }
    )
    found = engine.eval_query("data.portcullis.gateway.from_another_site")["result"]
    return bool(found) and found[0]["expressions"][0]["value"] is True


@settings(max_examples=400, derandomize=True, deadline=None, database=None)
@given(host=_hosts.filter(bool), origins=st.lists(_origins, min_size=1, max_size=2))
def test_an_origin_deny_is_uncounted_only_when_the_policy_refuses_it_by_origin(
    engine: Any, host: str, origins: list[str]
) -> None:
    headers = CIMultiDict([("Host", host), *(("Origin", origin) for origin in origins)])
    request = make_mocked_request("POST", "/wms/stock", headers=headers)
    uncounted = another_sites_request(request, SESSION) == CROSS_ORIGIN
    by_policy = refused_by_origin(engine, request.host, origins)
    assert by_policy or not uncounted, (host, origins)
    if len(origins) == 1 and BROWSER_ORIGIN.fullmatch(origins[0]):
        assert uncounted == by_policy, (host, origins)
