"""A request's cookies cost the gateway about what their length does: reading
its own cookies passes over an app's (hundreds, which any client may send) in
C, and picks exactly the cookies it picked when it read every pair."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.signin.session import (
    _TOKEN,
    OWN_COOKIES,
    CookiePolicy,
    KeyRing,
    OwnCookies,
    SessionCookies,
)


def reference_read_own_cookies(headers: Iterable[str], owns: Callable[[str], bool]) -> OwnCookies:
    """read_own_cookies as it was, reading every pair of every header."""
    values: dict[str, str] = {}
    conflicting: set[str] = set()
    for header in headers:
        for pair in header.split(";"):
            name, _, value = pair.partition("=")
            name = name.strip(" \t")
            if not owns(name) or not _TOKEN.fullmatch(name):
                continue
            value = value.strip(" \t")
            if values.get(name, value) != value:
                conflicting.add(name)
            values[name] = value
    for name in conflicting:
        del values[name]
    return OwnCookies(values, frozenset(conflicting))


def cookies_of(policy: CookiePolicy) -> SessionCookies:
    return SessionCookies(KeyRing([KeyRing.generate()]), policy)


def request_with(headers: list[str]) -> Any:
    return make_mocked_request("GET", "/", headers=CIMultiDict(("Cookie", h) for h in headers))


POLICIES = (CookiePolicy(), CookiePolicy(name="sid", secure=False))
# Names with and without the __Host- prefix, chunks, pre-auth cookies, names that
# hold the session's name without being it, a value holding it, spaces and tabs.
FRAGMENTS = (
    "__Host-", "portcullis_session", "sid", "_1", "_auth_ab12", "x", "=", "v1", "=v2",
    " ", "\t", "é", "a", "portcullis_sessionx", "sidx", ",", '"',
)  # fmt: skip


def headers() -> st.SearchStrategy[list[str]]:
    pair = st.lists(st.sampled_from(FRAGMENTS), max_size=5).map("".join)
    header = st.lists(pair, max_size=8).map(";".join)
    return st.lists(header, min_size=1, max_size=3)


@settings(max_examples=1500, derandomize=True, database=None, deadline=None)
@given(sent=headers(), policy=st.sampled_from(POLICIES))
def test_the_gateway_picks_the_same_cookies_as_when_it_read_every_pair(
    sent: list[str], policy: CookiePolicy
) -> None:
    """Property: whatever Cookie headers a request carries, the gateway's cookies,
    their values and the names sent twice with different values are what reading
    every pair of every header gave."""
    cookies = cookies_of(policy)
    found = cookies.sent(request_with(sent))
    expected = reference_read_own_cookies(sent, cookies.owns)
    assert found == expected, sent


def cpu_ratio(heavy: Callable[[], Any], light: Callable[[], Any], rounds: int = 7) -> float:
    """The least, over rounds, of ``heavy``'s CPU time over ``light``'s, the two
    measured in turn, so a busy machine slows both alike."""

    def per_call(work: Callable[[], Any]) -> float:
        start = time.thread_time()
        for _ in range(20):
            work()
        return (time.thread_time() - start) / 20

    return min(per_call(heavy) / per_call(light) for _ in range(rounds))


# 1,000 app cookies may cost the gateway this many times one app cookie as long.
# Measured: after ~1.2x; before, when every pair was read, ~45x.
MAX_RATIO = 12.0


def test_attack_a_thousand_app_cookies_cost_the_session_read_what_their_length_does() -> None:
    cookies = cookies_of(CookiePolicy())
    many = "; ".join(f"c{index}=v" for index in range(1000))
    one = f"c={'v' * (len(many) - 2)}"

    def reading(header: str) -> Callable[[], Any]:
        request = request_with([header])
        return lambda: (request.pop(OWN_COOKIES, None), cookies.sent(request))

    assert cpu_ratio(reading(many), reading(one)) < MAX_RATIO
