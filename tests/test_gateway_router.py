"""The gateway's router (gateway/router.py) answers every request target as
aiohttp's own router does on the same routes: the same page, the proxy for the
rest, the same no-route refusal. It finds a page by its exact path instead of
aiohttp's walk over every prefix; these tests hold it to the walk's answers, for
the gateway's real routes (with and without browser sign-in and its back-channel
logout), for targets an attacker bends (`%2F`, `%2e`, a trailing slash, case,
`//`, absolute and authority form), parsed by aiohttp's own request-line parser,
before the app starts and after. A route table it can't route as the walk would
(a second pattern, a sub-app, a domain, a static directory) is refused when the
app starts."""

from __future__ import annotations

from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.http_parser import HttpRequestParser
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_urldispatcher import UrlMappingMatchInfo
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from gateway.config import GatewayConfig, Issuer, SessionConfig, SignInConfig
from gateway.router import application
from gateway.screening.expect import decide_first
from gateway.server import build_app
from gateway.signin.session import write_key_file
from tests.test_shared_state import shared

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PURGE"]
# The gateway's own pages, and the segments a target bends them with.
PAGES = [
    "/",
    "/healthz",
    "/readyz",
    "/.well-known/portcullis/jwks.json",
    "/.portcullis/",
    "/.portcullis/callback",
    "/.portcullis/sign_in",
    "/.portcullis/sign_out",
    "/.portcullis/signed_out",
    "/.portcullis/backchannel_logout",
]
SEGMENTS = [
    *{segment for page in PAGES for segment in page.split("/")},
    *["HEALTHZ", "Healthz", "%68ealthz", "healthz%2F", "%2F", "%2f", "a%2Fb", "%2e", "%2E%2e"],
    *[".", "..", "%20", ";x", "wms", "%25", "%00", "~"],
]
TARGETS = [
    # Every page as is, with a trailing slash, doubled slashes, another case, a
    # query, a fragment, absolute-form, a percent-encoded slash or dot.
    *PAGES,
    *[page + "/" for page in PAGES],
    *["/" + page for page in PAGES],
    *[page.upper() for page in PAGES],
    *[page + "?a=1" for page in PAGES],
    *[page + "#f" for page in PAGES],
    *["http://gw" + page for page in PAGES],
    *[page.replace("/", "%2F") for page in PAGES],
    *[page.replace(".", "%2e") for page in PAGES],
    "//healthz",
    "/x/../healthz",
    "/%2e%2e/healthz",
    "/healthz/.",
    "/healthz;x",
    "/.portcullis",
    "/.portcullis//",
    # Targets with no path: aiohttp's walk tries nothing for them.
    "*",
    "gw:443",
    "http://gw",
    "http://gw?a",
]


def route_table(tmp_path: Path) -> Iterator[tuple[str, GatewayConfig]]:
    """The gateway's configurations whose own pages differ."""
    key = tmp_path / "session.key"
    write_key_file(key)
    sign_in = SignInConfig(issuer="http://127.0.0.1:9/", client_id="portcullis")
    session = SessionConfig(key_files=(key,), secure=False)
    yield "no sign-in", GatewayConfig(auth=False, base_dir=tmp_path)
    yield "sign-in", GatewayConfig(auth=False, base_dir=tmp_path, sign_in=sign_in, session=session)
    # Shared state (never connected to here) adds the back-channel logout page.
    issuer = Issuer("http://127.0.0.1:9", ("aud",), jwks_url="http://127.0.0.1:9/jwks.json")
    yield (
        "sign-in, back-channel logout",
        GatewayConfig(
            base_dir=tmp_path,
            issuers=(issuer,),
            sign_in=sign_in,
            session=session,
            shared_state=shared("redis://127.0.0.1:9"),
        ),
    )


def aiohttps(router: web.UrlDispatcher) -> web.UrlDispatcher:
    """aiohttp's own router over the same resources (frozen when `router`'s are)."""
    theirs = web.UrlDispatcher()
    for resource in router.resources():
        theirs.register_resource(resource)
    return theirs


def parsed(method: str, target: str) -> web.Request | None:
    """The request as the server would have it: aiohttp's parser reads the request
    line (None if it refuses it), as it does before routing."""
    parser = HttpRequestParser(mock.Mock(), mock.Mock(), 2**16)
    try:
        messages, _, _ = parser.feed_data(
            f"{method} {target} HTTP/1.1\r\nHost: gw\r\n\r\n".encode()
        )
    except Exception:
        return None
    if not messages:
        return None
    url: URL = messages[0][0].url
    return make_mocked_request(method, "/").clone(rel_url=url)


def done(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """A resolve's answer: routing awaits nothing that suspends."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("routing suspended")


def answer(router: web.UrlDispatcher, request: web.Request) -> tuple[object, ...]:
    match_info: UrlMappingMatchInfo = done(router.resolve(request))
    error = match_info.http_exception
    if error is None:
        resource = match_info.route.resource
        assert resource is not None
        return ("route", resource.canonical, match_info.route.method)
    allowed = getattr(error, "allowed_methods", set())
    return ("no route", error.status, frozenset(allowed))


class Routers:
    def __init__(self, tmp_path: Path) -> None:
        self.tables = []
        for name, config in route_table(tmp_path):
            before_start = build_app(config).router
            started = build_app(config).router
            started.freeze()
            self.tables.append((name, before_start, started, aiohttps(started)))

    def check(self, method: str, target: str) -> None:
        request = parsed(method, target)
        if request is None:
            return
        for name, before_start, started, theirs in self.tables:
            expected = answer(theirs, request)
            assert answer(started, request) == expected, (name, method, target)
            assert answer(before_start, request) == expected, (name, method, target, "unfrozen")
            # ...and a target no route takes keeps the gateway's Expect answer.
            match_info = done(started.resolve(request))
            if match_info.http_exception is not None:
                assert match_info.expect_handler is decide_first, target


@pytest.fixture(scope="module")
def routers(tmp_path_factory: pytest.TempPathFactory) -> Routers:
    return Routers(tmp_path_factory.mktemp("router"))


@pytest.mark.parametrize("method", METHODS)
def test_every_bent_form_of_a_gateway_page_routes_as_aiohttps_router_does(
    routers: Routers, method: str
) -> None:
    for target in TARGETS:
        routers.check(method, target)


def test_a_gateway_page_is_its_page_and_a_bent_one_is_proxied(routers: Routers) -> None:
    """What the differential agrees on, spelled out for the pages a bent target
    would reach: the exact path alone is the page; every other method of a GET page
    and every look-alike path goes to the proxy, where the policy judges it."""
    _, _, started, _ = routers.tables[-1]

    def routed(method: str, target: str) -> tuple[object, ...]:
        request = parsed(method, target)
        assert request is not None, target
        return answer(started, request)

    assert routed("GET", "/healthz") == ("route", "/healthz", "GET")
    assert routed("HEAD", "/healthz") == ("route", "/healthz", "HEAD")
    assert routed("GET", "http://gw/healthz") == ("route", "/healthz", "GET")
    assert routed("POST", "/.portcullis/backchannel_logout") == (
        "route",
        "/.portcullis/backchannel_logout",
        "POST",
    )
    assert routed("DELETE", "/.portcullis/sign_out") == ("route", "/.portcullis/sign_out", "*")
    for method, target in [
        ("POST", "/healthz"),
        ("OPTIONS", "/readyz"),
        ("GET", "/healthz/"),
        ("GET", "/HEALTHZ"),
        ("GET", "//healthz"),
        ("GET", "/.portcullis%2Fsign_in"),
        ("GET", "/.portcullis/backchannel_logout"),
    ]:
        assert routed(method, target) == ("route", "/{tail}", "*"), (method, target)
    for method, target in [("OPTIONS", "*"), ("CONNECT", "gw:443"), ("GET", "http://gw")]:
        assert routed(method, target) == ("no route", 404, frozenset()), (method, target)


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(
    method=st.sampled_from(METHODS),
    form=st.sampled_from(["", "http://gw", "HTTP://GW:80"]),
    leading=st.sampled_from(["/", "//"]),
    segments=st.lists(st.sampled_from(SEGMENTS), max_size=5),
    trailing=st.sampled_from(["", "/", "?q=/healthz", "#x"]),
)
def test_any_target_routes_as_aiohttps_router_does(
    routers: Routers, method: str, form: str, leading: str, segments: list[str], trailing: str
) -> None:
    routers.check(method, form + leading + "/".join(segments) + trailing)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    method=st.sampled_from(METHODS), target=st.text(alphabet="/.%2Fe5Ehlatz:*?#;~ ", max_size=24)
)
def test_any_text_as_a_target_routes_as_aiohttps_router_does(
    routers: Routers, method: str, target: str
) -> None:
    routers.check(method, target)


def test_no_route_is_added_once_the_gateway_starts(tmp_path: Path) -> None:
    """The exact pages are indexed when the app starts: one added later would never
    be found by its path, so aiohttp's refusal to add one must stand."""
    app = build_app(GatewayConfig(auth=False, base_dir=tmp_path))
    app.freeze()
    with pytest.raises(RuntimeError, match="frozen router"):
        app.router.add_get("/late", decide_first)


async def page(request: web.Request) -> web.Response:
    return web.Response()


def sub_app(*paths: str) -> web.Application:
    sub = web.Application()
    for path in paths:
        sub.router.add_get(path, page)
    return sub


# Route tables the router can't route as aiohttp does: a sub-app answers every
# path it is asked (its 404 included), so asked outside its prefix it took every
# proxied request; two patterns are tried in an order aiohttp's walk sets.
BEYOND = {
    "sub-app": lambda app: app.add_subapp("/sub", sub_app("/x")),
    "domain": lambda app: app.add_domain("gw", sub_app("/a")),
    "second pattern": lambda app: app.router.add_get("/a/{x}", page),
    "static": lambda app: app.router.add_static("/a", Path(__file__).parent),
}


@pytest.mark.parametrize("name", sorted(BEYOND))
def test_a_route_table_the_router_cant_route_as_aiohttp_is_refused_at_start(name: str) -> None:
    app = application()
    app.router.add_get("/healthz", page)
    BEYOND[name](app)
    app.router.add_route("*", "/{tail:[\\s\\S]*}", page)
    with pytest.raises(RuntimeError, match="plain pages and one pattern only"):
        app.freeze()
