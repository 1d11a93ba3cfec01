"""The policy and the upstream see the same path: fragments, path parameters,
double encoding and look-alike segments are refused (and logged), and for any
request target the bytes an upstream receives are exactly the path the logged
decision judged, read the same by a backend that decodes it twice."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from unittest import mock
from urllib.parse import parse_qs, unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.chain import REDACTED
from gateway.config import Route
from gateway.screening import paths
from gateway.screening.paths import NormalizedPath, PathRejected, normalize
from tests.gateway_stack import ServerFactory, Stack, start_stack

STORE = {"groups": ["store"], "amr": ["pwd", "otp"]}
WAREHOUSE = {"groups": ["warehouse"], "amr": ["pwd", "otp"]}


async def raw_request(stack: Stack, target: bytes, *, extra: bytes = b"") -> tuple[int, bytes]:
    """Send one request with the target exactly as given; (status, whole answer)."""
    port = int(stack.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n" + extra + b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, answer


def bearer(token: str) -> bytes:
    return f"Authorization: Bearer {token}\r\n".encode()


# --- fragments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/pos/refunds#x/1"),
        ("POST", "/pos/refunds#"),
        ("GET", "/wms/admin#/users"),
        ("DELETE", "/wms/admin#"),
        ("GET", "/pos/refunds?x=1#frag"),
    ],
)
async def test_fragment_in_request_target_is_refused(
    stack: Stack, method: str, target: str
) -> None:
    token = stack.token("bob", groups=["store", "warehouse"], amr=["pwd", "otp"])
    port = int(stack.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"{method} {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"fragment" in answer
    assert stack.total_forwarded() == 0
    (event,) = await stack.events()
    assert event["path"] == "gateway"
    assert event["result"]["allow"] is False
    assert event["result"]["http_status"] == 400
    assert event["result"]["reasons"][0].startswith("gateway.path_rejected: '#'")
    assert event["input"]["attributes"]["request"]["http"]["path"] == target
    assert event["input"]["attributes"]["request"]["http"]["method"] == method


async def test_fragment_on_a_websocket_upgrade_is_refused(stack: Stack) -> None:
    token = stack.token("bob", **WAREHOUSE)
    status, _ = await raw_request(
        stack,
        b"/wms/admin#ws",
        extra=bearer(token)
        + b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    )
    assert status == 400
    assert stack.total_forwarded() == 0


async def test_fragment_from_a_browser_session_is_refused_not_redirected(stack: Stack) -> None:
    status, answer = await raw_request(
        stack,
        b"/pos/refunds#1",
        extra=b"Accept: text/html\r\nCookie: portcullis_session=anything\r\n",
    )
    assert status == 400
    assert b"Location:" not in answer
    assert stack.total_forwarded() == 0


# --- path parameters and look-alike segments --------------------------------------------


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/wms/admin;x=1/users", "path parameters"),
        ("/wms/x/..;/admin/users", "'..'"),
        ("/wms/admin%3b/users", "encoded ';'"),
        ("/wms/admin%3B/users", "encoded ';'"),
        ("/wms/admin./users", "ends in '.'"),
        ("/wms/admin%2e/users", "ends in '.'"),
        ("/wms/admin%20/users", "whitespace"),
        ("/wms/admin%C2%A0/users", "whitespace"),
        ("/wms/;/admin/users", "empty segment"),
    ],
)
async def test_matrix_param_segment_is_refused(stack: Stack, target: str, why: str) -> None:
    """A warehouse token without wms-admin: Tomcat/Jetty/Spring would drop the
    parameters and IIS the trailing dot or space, and serve /wms/admin/users."""
    status, answer = await raw_request(
        stack, target.encode(), extra=bearer(stack.token("carol", **WAREHOUSE))
    )
    assert status == 400, answer[:300]
    assert why.encode() in answer
    assert stack.total_forwarded() == 0
    (event,) = await stack.events()
    assert event["path"] == "gateway"
    assert event["result"]["reasons"][0].startswith("gateway.path_rejected")


@pytest.mark.parametrize(
    ("target", "token_claims", "why"),
    [
        ("/pos/refund%C5%BF/1", STORE, "U+017F"),  # long s: Java upper-cases it to S
        ("/wms/adm%C4%B1n/users", WAREHOUSE, "U+0131"),  # dotless i: ADMIN
        ("/wms/%E2%84%AAey", WAREHOUSE, "U+212A"),  # Kelvin sign: k
        ("/wms/%EF%BD%81dmin/users", WAREHOUSE, "U+FF41"),  # fullwidth a (NFKC)
        ("/wms/admin%EF%BC%8E/users", WAREHOUSE, "U+FF0E"),  # fullwidth full stop
        ("/wms/%EF%AC%81les", WAREHOUSE, "U+FB01"),  # fi ligature
        ("/wms/admin%E2%80%8B/users", WAREHOUSE, "U+200B"),  # zero-width space
        ("/pos/refunds%E2%81%A0/1", STORE, "U+2060"),  # word joiner
        ("/wms/%20admin/users", WAREHOUSE, "starts with whitespace"),
    ],
)
async def test_unicode_case_folding_look_alike_segment_is_refused(
    stack: Stack, target: str, token_claims: dict[str, list[str]], why: str
) -> None:
    """A backend comparing case-insensitively with Unicode case folding or NFKC
    (Java equalsIgnoreCase, /iu regexes) would serve refunds or admin; the policy's
    lower() would not see them."""
    status, answer = await raw_request(
        stack, target.encode(), extra=bearer(stack.token("bob", **token_claims))
    )
    assert status == 400, answer[:300]
    assert why.encode() in answer
    assert stack.total_forwarded() == 0
    (event,) = await stack.events()
    assert event["result"]["reasons"][0].startswith("gateway.path_rejected")


async def test_ordinary_non_ascii_segments_still_pass(stack: Stack) -> None:
    token = stack.token("dave", **WAREHOUSE)
    for target in (
        "/wms/caf%C3%A9",
        "/wms/%E6%97%A5%E6%9C%AC",
        "/wms/%E2%82%AC",
        "/wms/%C3%89t%C3%A9",
    ):
        status, answer = await raw_request(stack, target.encode(), extra=bearer(token))
        assert status == 200, (target, answer[:300])
    assert len(stack.forwarded("wms")) == 4


# --- double encoding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "token_claims"),
    [
        ("/pos/%2572efunds/1", STORE),  # the pen test: `%72`, then `r`
        ("/pos/%2572%2545FUNDS/1", STORE),
        ("/pos/%25%37%32efunds/1", STORE),  # the digits encoded too: sent on as %2572
        ("/pos/%252572efunds/1", STORE),  # three decodes
        ("/pos/%25u0072efunds/1", STORE),  # IIS and .NET's %uXXXX
        ("/wms/%2561dmin/users", WAREHOUSE),
        ("/wms/adm%2569n/users", WAREHOUSE),
        ("/wms/x/%252e%252e/admin/users", WAREHOUSE),  # `..` on the second decode
        ("/wms/x/%252E%252E%252Fadmin/users", WAREHOUSE),
        ("/wms/admin%252fusers", WAREHOUSE),
        ("/wms/admin%253b/users", WAREHOUSE),
    ],
)
async def test_double_encoded_path_is_refused(
    stack: Stack, target: str, token_claims: dict[str, list[str]]
) -> None:
    """A backend that decodes twice (or a proxy and a backend that each decode once)
    reads /pos/refunds/1 or /wms/admin/users; the policy read `%72efunds` and
    `%61dmin` and let a token without the refund MFA or wms-admin through."""
    status, answer = await raw_request(
        stack, target.encode(), extra=bearer(stack.token("bob", **token_claims))
    )
    assert status == 400, answer[:300]
    assert b"double percent-encoding" in answer
    assert stack.total_forwarded() == 0
    (event,) = await stack.events()
    assert event["result"]["reasons"][0].startswith("gateway.path_rejected: double")


async def test_a_literal_percent_sign_still_passes(stack: Stack) -> None:
    """`%25` not followed by hex digits is a `%` however often it is decoded."""
    token = stack.token("dave", **WAREHOUSE)
    for target in ("/wms/100%25", "/wms/50%25off", "/wms/%25zz", "/wms/%25%25", "/wms/a%25-b"):
        status, answer = await raw_request(stack, target.encode(), extra=bearer(token))
        assert status == 200, (target, answer[:300])
    events = await stack.events(at_least=5)
    assert [event["input"]["parsed_path"][1] for event in events] == [
        "100%", "50%off", "%zz", "%%", "a%-b",
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def params_allowed_stack(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> AsyncIterator[Stack]:
    """The demo stack with `path_params: allow` on the wms route."""
    async with start_stack(aiohttp_server, tmp_path) as stack:
        stack.gateway.route_table.routes = [
            replace(route, allow_path_params=True) if route.app == "wms" else route
            for route in stack.gateway.route_table.routes
        ]
        yield stack


async def test_path_params_opt_in_forwards_the_original_and_shows_the_policy_stripped_segments(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with params_allowed_stack(aiohttp_server, tmp_path) as stack:
        response = await stack.get("/wms/stock;jsessionid=ABC?sku=1", stack.token("d", **WAREHOUSE))
        assert response.status == 200
        assert (await response.json())["path"] == "/wms/stock;jsessionid=ABC?sku=1"
        (event,) = await stack.events()
        assert event["input"]["parsed_path"] == ["wms", "stock"]
        # The upstream gets the session id; the log never does (a secret path parameter).
        assert event["input"]["attributes"]["request"]["http"]["path"] == (
            f"/wms/stock;jsessionid={REDACTED}?sku=1"
        )


async def test_path_params_opt_in_still_holds_admin_paths_to_the_admin_rule(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with params_allowed_stack(aiohttp_server, tmp_path) as stack:
        token = stack.token("carol", **WAREHOUSE)
        denied = await stack.get("/wms/admin;x=1/users", token)
        assert denied.status == 403
        for target in ("/wms/x/..;/admin/users", "/wms/admin.;x=1/users", "/wms/;x/admin"):
            status, _ = await raw_request(stack, target.encode(), extra=bearer(token))
            assert status == 400, target
        assert stack.total_forwarded() == 0


def test_path_params_setting_is_validated(tmp_path: Path) -> None:
    from gateway.config import ConfigError, load_config

    config = tmp_path / "gateway.yaml"
    config.write_text(
        "routes:\n  - {app: wms, upstream: 'http://127.0.0.1:1', path_params: sometimes}\n"
    )
    with pytest.raises(ConfigError, match=r"routes\[0\]\.path_params: must be 'refuse' or 'allow'"):
        load_config(config)


# --- the property: what the upstream gets is what the policy judged ----------------------


@dataclass
class RawUpstream:
    """A backend as a bare socket server, recording each request target byte for byte
    (an aiohttp backend would parse and normalise it before a test could look)."""

    targets: dict[str, bytes] = field(default_factory=dict)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.split(b"\r\n")
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(b":") for line in lines if line)
                }
                length = int(headers.get(b"content-length", b"0"))
                if length:
                    await reader.readexactly(length)
                request_id = headers.get(b"x-request-id", b"").decode()
                self.targets[request_id] = request_line.split(b" ")[1]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()


# Pieces a real path is made of, and pieces an attacker mixes in; the safe ones
# twice as likely, so about half the sample reaches an upstream.
SAFE = ["a", "admin", "users", "stock", "/", "%41", "%7e", "~", "%c3%a9", "%E2%82%AC", "+", "!"]
HOSTILE = [
    ".", "..", ";", ";x=1", "#", "?", "&", "=", "%", "%2", "%2e", "%2E", "%2f", "%2F", "%5c",
    "%3b", "%3B", "%23", "%3f", "%25", "%00", "%09", "%20", "%C0%AE", "%c0%ae", "%E0%80%AE",
    "%C3", "%ff", "%F0%9F%98%80", "%E2%80%AE", "%C2%A0", "\u00e9", "\u202e", "\\", "\t",
    "*", "'", "$",
    # Double encoding: `%72` (`r`), `.`, `/`, `;`, `A` and `%uXXXX` on a second decode,
    # the digits themselves encoded, and a literal `%`.
    "%2572", "%252e", "%252F", "%253b", "%2541", "%25u0041", "%25%36%31", "%25zz",
    # Look-alikes of ASCII under case folding or NFKC, and invisible characters: long
    # s, dotless i, Kelvin sign, fullwidth a and '.', the fi ligature, sharp s, the
    # zero-width space and joiner, the soft hyphen, word joiner.
    "%C5%BF", "%C4%B1", "%E2%84%AA", "%EF%BD%81", "%EF%BC%8E", "%EF%AC%81", "%C3%9F",
    "%E2%80%8B", "%E2%80%8D", "%C2%AD", "%E2%81%A0",
]  # fmt: skip
PIECE = st.one_of(st.sampled_from(SAFE), st.sampled_from(SAFE), st.sampled_from(HOSTILE))
TARGETS = st.builds(
    lambda prefix, parts: prefix + "".join(parts),
    st.sampled_from(["/wms/", "/wms/", "/analytics/", "/analytics/", "/wms", "/", ""]),
    st.lists(PIECE, max_size=6),
)


def generated_targets(count: int) -> list[str]:
    """A fixed, bounded sample of request targets from the strategy (derandomized)."""
    targets: list[str] = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None)
    @given(TARGETS)
    def collect(target: str) -> None:
        targets.append(target)

    collect()
    return list(dict.fromkeys(targets))


def lenient(segment: str) -> str:
    """A segment as a case-insensitive backend compares it: Java's Unicode case
    folding, NFKC (fullwidth letters, ligatures), invisible characters dropped."""
    folded = unicodedata.normalize("NFKC", segment.casefold())
    return "".join(c for c in folded if unicodedata.category(c) != "Cf")


def decode_twice(raw: bytes) -> str:
    """A segment as a backend that percent-decodes twice reads it (a proxy and a
    backend each decoding once, or a framework decoding what its server decoded);
    `%uXXXX` too on the second, as IIS and .NET's UrlDecode do."""
    once = unquote_to_bytes(raw)
    twice = re.sub(
        rb"%u([0-9A-Fa-f]{4})", lambda m: chr(int(m[1], 16)).encode(), unquote_to_bytes(once)
    )
    return twice.decode("utf-8", "replace")


def upstream_segments(target: bytes) -> list[str]:
    """How a lenient backend reads the path it got: Tomcat and Spring drop `;params`
    and resolve `.` and `..`, IIS trims dots and spaces, the comparison folds
    case and compatibility forms (`lenient`), and it decodes twice."""
    path = target.split(b"?", 1)[0]
    segments: list[str] = []
    for raw in path[1:].split(b"/"):
        decoded = decode_twice(raw.split(b";", 1)[0])
        segment = lenient(decoded).rstrip(". \t\u00a0").lstrip(" \t\u00a0")
        if segment == ".." and segments:
            segments.pop()
        elif segment not in (".", ".."):
            segments.append(segment)
    return segments


async def test_upstream_receives_exactly_the_path_the_policy_judged(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    upstream = RawUpstream()
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    routes = (
        Route("wms", upstream_url, "/wms/"),
        Route("analytics", upstream_url, "/analytics/", allow_path_params=True),
    )
    targets = generated_targets(400)
    assert len(targets) > 250
    statuses: dict[str, int] = {}
    async with server, start_stack(aiohttp_server, tmp_path, routes=routes) as stack:
        token = stack.token("erin", groups=["warehouse", "wms-admin", "analyst"], amr=["otp"])
        for number, target in zip(itertools.count(), targets, strict=False):
            request_id = f"probe-{number}"
            status, answer = await raw_request(
                stack,
                target.encode("utf-8"),
                extra=bearer(token) + f"X-Request-Id: {request_id}\r\n".encode(),
            )
            assert status < 500, (target, answer[:300])
            statuses[request_id] = status
            if status >= 400:
                assert request_id not in upstream.targets, target
        events = await stack.events(at_least=len(targets))
    forwarded = {rid for rid, status in statuses.items() if status == 200}
    assert forwarded == set(upstream.targets)
    assert 50 < len(forwarded) < len(targets)  # the sample exercises both outcomes
    judged = {
        event["input"]["attributes"]["request"]["http"]["id"]: event["input"]
        for event in events
        if event["result"]["allow"]
    }
    for request_id in forwarded:
        received = upstream.targets[request_id]
        decision = judged[request_id]
        assert received.decode("ascii") == decision["attributes"]["request"]["http"]["path"]
        # The policy compares lower-cased segments; a lenient backend must read the same.
        policy_reads = [segment.lower() for segment in decision["parsed_path"]]
        assert upstream_segments(received) == policy_reads, received


@settings(max_examples=3000, derandomize=True, database=None, deadline=None)
@given(TARGETS)
def test_no_accepted_path_reads_differently_when_decoded_twice(target: str) -> None:
    """What the policy judged is the path decoded once; a second decode must change
    nothing, or a backend that decodes twice reads another path."""
    try:
        path = normalize(target).path
    except PathRejected:
        return
    once = unquote_to_bytes(path)
    assert unquote_to_bytes(once) == once, target
    assert not re.search(rb"%[uU][0-9A-Fa-f]{4}", once), target


def test_every_control_character_and_space_in_a_target_is_refused_by_the_gateway_too() -> None:
    """aiohttp's parser refuses them first; the gateway's own check stands if it
    ever lets one through, at every place in the target, the query included."""
    for code in [*range(0x21), 0x7F]:
        for target in (f"{chr(code)}/wms/", f"/wms/a{chr(code)}b", f"/wms/?q={chr(code)}"):
            with pytest.raises(PathRejected, match="control character or space"):
                normalize(target)
    normalize("/wms/!$&'()*+,;=:@-._~?q=!$&'()*+,;=:@/?")  # what RFC 3986 allows passes


def refused_as_a_loop_over_its_characters_did(target: str) -> bool:
    """The check as it was before 80fd61a made it one regex search."""
    return any(ord(c) < 0x21 or c == "\x7f" for c in target)


def outcome(target: str) -> NormalizedPath | str:
    try:
        return normalize(target)
    except PathRejected as refusal:
        return str(refusal)


def test_the_control_character_search_refuses_exactly_the_characters_the_loop_did() -> None:
    """Every code point, alone: a one-character class searched anywhere in a
    target refuses it exactly when one of its characters is refused."""
    for code in range(0x110000):
        char = chr(code)
        assert (paths._CONTROL_OR_SPACE.search(char) is not None) == (
            refused_as_a_loop_over_its_characters_did(char)
        ), hex(code)


@settings(max_examples=800, derandomize=True, database=None, deadline=None)
@given(
    st.one_of(
        # One character anywhere in a target that passes: the edges of the range
        # (0x20, 0x21, 0x7e, 0x7f, 0x80) alone decide.
        st.builds(
            lambda target, char, at: target[:at] + char + target[at:],
            TARGETS,
            st.one_of(st.sampled_from("\x00\x1f !~\x7f\x80"), st.characters(max_codepoint=0x100)),
            st.integers(0, 40),
        ),
        st.text(st.characters(max_codepoint=0x80), max_size=40).map(lambda text: "/wms/" + text),
        st.text(max_size=40),
    )
)
def test_any_target_normalizes_as_with_the_loop_over_its_characters(target: str) -> None:
    """The same answer, page or refusal (and which), whatever the target holds."""
    loop = mock.Mock()
    loop.search.side_effect = lambda text: refused_as_a_loop_over_its_characters_did(text) or None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paths, "_CONTROL_OR_SPACE", loop)
        expected = outcome(target)
    assert outcome(target) == expected, target


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(st.text(alphabet="ab=&+%20;-._~!$'()*,:@/?", max_size=40))
def test_parsed_query_is_what_parse_qs_makes_of_any_query(query: str) -> None:
    """The policy's parsed_query skips parse_qs when nothing needs decoding (it
    costs 4x the split): the same answer for every query, `%` and `+` included."""
    try:
        path = normalize("/wms/stock?" + query)
    except PathRejected:
        return
    assert path.parsed_query() == parse_qs(path.query, keep_blank_values=True)
