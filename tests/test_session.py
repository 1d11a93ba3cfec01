"""The session cookie's crypto and shape, and the sign-in config, on their own."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, parse_config
from gateway.signin.flow import safe_return_to
from gateway.signin.session import (
    COOKIE_CHANGES,
    CookiePolicy,
    KeyRing,
    Session,
    SessionCookies,
    SessionKeyError,
    SessionTooLarge,
    apply_cookie_changes,
    read_key_file,
    read_own_cookies,
    write_key_file,
)


def ring(*keys: bytes) -> KeyRing:
    return KeyRing(list(keys) or [KeyRing.generate()])


def test_sealed_value_opens_only_for_its_purpose() -> None:
    keys = ring()
    sealed = keys.seal("session", b"alice")
    assert keys.open("session", sealed) == b"alice"
    assert keys.open("pre-auth/x", sealed) is None, "a pre-auth cookie can't pass as a session"
    assert b"alice" not in base64.urlsafe_b64decode(sealed.split(".")[2] + "==")


def test_every_bit_flip_is_refused() -> None:
    keys = ring()
    sealed = keys.seal("session", b'{"sub":"alice"}')
    prefix, kid, blob = sealed.split(".")
    raw = bytearray(base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4)))
    for index in range(len(raw)):
        raw[index] ^= 1
        forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
        assert keys.open("session", f"{prefix}.{kid}.{forged}") is None
        raw[index] ^= 1


def test_key_ring_rotation() -> None:
    old, new = KeyRing.generate(), KeyRing.generate()
    by_old = ring(old).seal("session", b"x")
    rotated = ring(new, old)
    assert rotated.open("session", by_old) == b"x"
    by_new = rotated.seal("session", b"y")
    assert ring(new).open("session", by_new) == b"y"
    assert ring(old).open("session", by_new) is None
    assert ring(new).open("session", by_old) is None


@pytest.mark.parametrize(
    "value", ["", "v1", "v1..", "v1.AAAA.AAAA", "v2.x.y", "v1.x.y.z", "v1.x.!!!", "v1.x." + "A" * 9]
)
def test_malformed_values_are_refused(value: str) -> None:
    assert ring().open("session", value) is None


def test_key_files(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_key_file(path)
    assert len(read_key_file(path)) == 32
    assert path.stat().st_mode & 0o077 == 0
    (tmp_path / "short").write_text(base64.b64encode(b"x" * 10).decode())
    with pytest.raises(SessionKeyError, match="holds 10 bytes; a session key is 32 random bytes"):
        read_key_file(tmp_path / "short")
    with pytest.raises(SessionKeyError, match="head -c 32 /dev/urandom"):
        read_key_file(tmp_path / "missing")
    (tmp_path / "urlsafe").write_text(base64.urlsafe_b64encode(b"\xff" * 32).decode().rstrip("="))
    assert read_key_file(tmp_path / "urlsafe") == b"\xff" * 32


def test_session_round_trip_and_garbage() -> None:
    session = Session("alice", "https://idp", 2, 1, "a@x", ("g",), ("pwd", "otp"), "mfa", 1, "rt")
    assert Session.from_bytes(session.to_bytes()) == session
    for garbage in (b"", b"[]", b'{"sub": 1}', b'{"sub":"a","iss":"i","exp":"x","iat":1}'):
        assert Session.from_bytes(garbage) is None


def request_with(cookies: dict[str, str]) -> web.Request:
    header = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return make_mocked_request("GET", "/", headers={"Cookie": header} if header else {})


OURS = CookiePolicy().cookie_name  # __Host-portcullis_session
_NAMES = st.one_of(
    st.sampled_from([OURS, f"{OURS}_1", f"{OURS}_auth_ab12", "a", "wms_cart", f"x{OURS}"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=";="),
            min_size=1, max_size=8),
)  # fmt: skip
# What a browser keeps in a value: anything but ";" and control characters, no
# whitespace at either end (Chromium keeps "1 portcullis_session=x" whole).
_VALUES = st.lists(
    st.sampled_from([" ", ",", "=", '"', "\\", "1", "v1.abc", f"{OURS}=evil", f"{OURS}_1=x", "é"]),
    max_size=6,
).map(lambda parts: "".join(parts).strip(" "))


@settings(max_examples=400, derandomize=True, deadline=None)
@given(jar=st.lists(st.tuples(_NAMES, _VALUES), max_size=6))
def test_the_gateway_reads_only_the_cookies_the_browser_holds_under_its_names(
    jar: list[tuple[str, str]],
) -> None:
    """Whatever cookies the browser holds (set by an app, its scripts, a parent
    domain), in whatever order it sends them: the gateway's cookies are read
    only from cookies that bear their names, never out of another cookie's value
    (``a=1 portcullis_session=<mallory's>``), and a name sent twice with different
    values is taken from neither."""
    header = "; ".join(f"{name}={value}" for name, value in jar)
    cookies = SessionCookies(ring(), CookiePolicy())
    found = read_own_cookies([header], cookies.owns)
    held: dict[str, set[str]] = {}
    for name, value in jar:
        if cookies.owns(name):
            held.setdefault(name, set()).add(value)
    assert found.values == {name: next(iter(v)) for name, v in held.items() if len(v) == 1}
    assert found.conflicting == {name for name, v in held.items() if len(v) > 1}


async def test_a_session_cookie_sent_twice_with_different_values_is_no_session() -> None:
    """Alice's session and one planted beside it (another path, a parent domain's):
    the order a browser sends them in says nothing about which is hers."""
    cookies = SessionCookies(ring(), CookiePolicy())
    now = int(time.time())
    sealed = {}
    for user in ("alice", "mallory"):
        request = request_with({})
        cookies.save(request, Session(user, "https://idp", now + 60, now))
        sealed[user] = request[COOKIE_CHANGES][0][1]
    alone = make_mocked_request("GET", "/", headers={"Cookie": f"{OURS}={sealed['alice']}"})
    assert (session := cookies.load(alone)) is not None and session.subject == "alice"
    for first, second in (("alice", "mallory"), ("mallory", "alice")):
        header = f"{OURS}={sealed[first]}; {OURS}={sealed[second]}"
        assert cookies.load(make_mocked_request("GET", "/", headers={"Cookie": header})) is None
    same = f"{OURS}={sealed['alice']}; {OURS}={sealed['alice']}"
    assert cookies.load(make_mocked_request("GET", "/", headers={"Cookie": same})) is not None


async def test_large_session_is_chunked_and_read_back() -> None:
    cookies = SessionCookies(ring(), CookiePolicy())
    groups = tuple(f"group-{i:04d}-with-a-long-name" for i in range(200))
    session = Session(
        "alice", "https://idp", int(time.time()) + 60, int(time.time()), groups=groups
    )
    request = request_with({})
    cookies.save(request, session)
    written = {name: value for name, value, _ in request[COOKIE_CHANGES]}
    assert len(written) > 1 and all(len(v or "") <= 3800 for v in written.values())
    assert set(written) == {OURS} | {f"{OURS}_{i}" for i in range(1, len(written))}
    loaded = cookies.load(request_with({k: v or "" for k, v in written.items()}))
    assert loaded == session
    # A smaller session later clears the chunks it no longer needs.
    small = request_with({k: v or "" for k, v in written.items()})
    cookies.save(small, Session("alice", "https://idp", session.expires_at, session.created_at))
    cleared = [name for name, value, _ in small[COOKIE_CHANGES] if value is None]
    assert sorted(cleared) == sorted(n for n in written if n != OURS)
    with pytest.raises(SessionTooLarge):
        cookies.save(request_with({}), Session("a", "i", 1, 1, groups=groups * 4))


async def test_cookie_attributes() -> None:
    cookies = SessionCookies(ring(), CookiePolicy(lifetime=3600))
    request = request_with({})
    now = int(time.time())
    cookies.save(request, Session("alice", "https://idp", now + 60, now))
    response = web.Response()
    await apply_cookie_changes(request, response)
    (header,) = response.headers.getall("Set-Cookie")
    for attribute in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=3600"):
        assert attribute in header
    assert response.headers["Cache-Control"] == "no-store"


async def test_every_cookie_the_gateway_sets_is_one_no_sibling_host_can_plant() -> None:
    """Secure cookies are named ``__Host-...`` (a browser takes such a cookie only
    from this host, never from evil.example.com's ``Domain=example.com``): the
    session, its chunks, the pre-auth cookies and their deletions, each with
    what the prefix asks of it (Secure, Path=/, no Domain) or the browser drops it."""
    cookies = SessionCookies(ring(), CookiePolicy())
    now = int(time.time())
    groups = tuple(f"group-{i:04d}-with-a-long-name" for i in range(200))
    sent = {f"{OURS}_3": "old-chunk", "portcullis_session": "from-before-the-prefix"}
    request = request_with(sent)
    cookies.save(request, Session("alice", "https://idp", now + 60, now, groups=groups))
    cookies.save_pending(request, "state", {"state": "state"}, 600)
    cookies.drop_pending(request, [cookies.pre_auth_name("other")])
    cookies.clear(request)
    response = web.Response()
    await apply_cookie_changes(request, response)
    headers = response.headers.getall("Set-Cookie")
    names = {header.partition("=")[0] for header in headers}
    assert {OURS, f"{OURS}_1", f"{OURS}_3", cookies.pre_auth_name("state")} <= names
    for header in headers:
        if header.startswith("portcullis_session="):
            continue  # the old cookie, deleted
        assert header.startswith("__Host-portcullis_session"), header
        attributes = [a.strip().lower() for a in header.split(";")[1:]]
        assert "secure" in attributes and "path=/" in attributes, header
        assert not any(a.startswith("domain") for a in attributes), header
    plain = SessionCookies(ring(), CookiePolicy(secure=False))  # no TLS: no prefix possible
    assert plain.name == "portcullis_session" and plain.pre_auth_path == "/.portcullis/"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/wms/", "/wms/"),
        ("/pos/refunds/7?x=1", "/pos/refunds/7?x=1"),
        ("https://gw.example/wms/", "/wms/"),
        ("https://GW.example/wms/", "/wms/"),
        ("https://gw.example.evil/wms/", None),
        ("https://user@gw.example/wms/", None),
        ("//evil.example", None),
        ("/\\evil.example", None),
        ("/%5cevil.example", None),
        ("/%2f/evil.example", None),
        ("%2F%2Fevil.example", None),
        ("/%25252F%25252Fevil.example", None),
        ("https:/evil.example", None),
        ("/.portcullis/sign_out", None),
        ("wms/", None),
        ("", None),
        (None, None),
    ],
)
def test_safe_return_to(value: str | None, expected: str | None) -> None:
    assert safe_return_to(value, "gw.example") == expected


def config_with(tmp_path: Path, **sign_in: object) -> dict[str, object]:
    key = tmp_path / "session.key"
    write_key_file(key)
    return {
        "sign_in": {"issuer": "https://idp.example", "client_id": "gw", **sign_in},
        "session": {"key_files": [str(key)]},
    }


def test_sign_in_config(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    config = parse_config(config_with(tmp_path, client_secret_file="secret"), tmp_path)
    assert config.sign_in is not None and config.sign_in.client_secret == "s3cret"
    assert config.session.secure is True and config.issuers == ()
    public = parse_config(config_with(tmp_path), tmp_path)
    assert public.sign_in is not None and public.sign_in.client_secret is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"session": {}}, "session.key_files: required with sign_in"),
        ({"session": {"key_files": ["nope.key"]}}, "session.key_files[0]: no such file"),
        ({"sign_in": {"issuer": "idp", "client_id": "gw"}}, "sign_in.issuer: must be an http"),
        (
            {"sign_in": {"issuer": "https://i", "client_id": "gw", "scopes": ["email"]}},
            "sign_in.scopes: must include openid",
        ),
        (
            {"sign_in": {"issuer": "https://i", "client_id": "gw", "algorithms": ["HS256"]}},
            "sign_in.algorithms[0]: 'HS256' not allowed",
        ),
        (
            {"sign_in": {"issuer": "https://i", "client_id": "gw", "cliend_id": "x"}},
            "sign_in.cliend_id: unknown key",
        ),
    ],
)
def test_sign_in_config_errors_name_the_key(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    data = {**config_with(tmp_path), **change}
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(data, tmp_path)


@pytest.mark.parametrize(
    ("cookie_name", "secure", "message"),
    [
        ("jéton", True, "ASCII letters, digits"),  # never read back (ASCII tokens only)
        ("__Host-", True, "names no cookie past its prefix"),  # every `_...` cookie ours
        ("__Host-__", True, "names no cookie past its prefix"),
        ("__host-gw", True, "a cookie prefix is written '__Host-'"),
        ("__Secure-gw", True, "a cookie prefix is written '__Host-'"),
        ("__Host-gw", False, "needs session.secure: true"),  # no browser would set it
    ],
)
def test_a_session_cookie_name_no_browser_sets_or_the_gateway_reads_back_is_refused(
    tmp_path: Path, cookie_name: str, secure: bool, message: str
) -> None:
    """The review: `cookie_name: __Host-` was accepted, and its bare name, empty,
    made every cookie starting with `_` the gateway's (and each request with a
    Cookie header a 400 for crowding); `jéton` passed `isalnum` and was never
    read back; `__Host-gw` without Secure is a cookie no browser sets."""
    data = config_with(tmp_path)
    data["session"] = {**data["session"], "cookie_name": cookie_name, "secure": secure}  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(data, tmp_path)
    data["session"] = {**data["session"], "cookie_name": "__Host-gw", "secure": True}  # type: ignore[dict-item]
    assert parse_config(data, tmp_path).session.cookie_name == "__Host-gw"


def test_pending_sign_ins_and_a_whole_session_fit_in_the_request_header_budget() -> None:
    """Pre-auth cookies go with every request (Path=/): a browser holding the most
    sign-ins in flight, each at a browser's 4096-byte cookie limit, plus a session
    in every chunk, still sends a Cookie header the gateway takes (else each
    request is a 431 until they expire: sign-ins started on someone's behalf,
    by links or a sibling site, would lock them out for 10 minutes)."""
    from gateway.config import LimitsConfig
    from gateway.signin.flow import MAX_PENDING
    from gateway.signin.session import CHUNK_BYTES, MAX_CHUNKS

    name = CookiePolicy().cookie_name
    session = sum(len(f"{name}_{i}=") + CHUNK_BYTES + 2 for i in range(MAX_CHUNKS))
    pending = MAX_PENDING * (4096 + 2)
    other_headers = 2048  # Host, Accept, User-Agent, and the app's own cookies
    assert session + pending + other_headers < LimitsConfig().max_request_header_bytes
