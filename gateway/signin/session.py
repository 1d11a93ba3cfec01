"""The browser session: verified claims in an AES-GCM-encrypted cookie, under a key ring."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.identity import Identity
from gateway.throttle import Throttle

log = logging.getLogger("portcullis.sign_in")

FORMAT = "v1"
NONCE_BYTES = 12
# Browsers keep at least 4096 bytes per cookie (name, value and attributes):
# stay well under it, and split a larger session over numbered cookies.
CHUNK_BYTES = 3800
# RFC 6265bis 5.6: a cookie whose name and value together pass this is ignored
# whole, not cut (Chromium's kMaxCookieNamePlusValueSize).
BROWSER_COOKIE_BYTES = 4096
MAX_CHUNKS = 4
# Request and response stash, read by the on_response_prepare hook.
COOKIE_CHANGES: web.RequestKey[list[tuple[str, str | None, dict[str, Any]]]] = web.RequestKey(
    "portcullis_cookie_changes", list
)


class SessionKeyError(Exception):
    """A session key file that can't be used; the message says how to fix it."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class KeyRing:
    """Several AES-GCM keys: the first encrypts, all decrypt.

    Rotation without signing everyone out: put a new key first, keep the old
    one listed until the longest session lifetime has passed, then drop it.
    Each sealed value names its key by a short fingerprint, so opening tries
    one key, not all of them.
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise SessionKeyError("no session keys")
        self._keys: dict[str, AESGCM] = {}
        self._newest = ""
        for index, key in enumerate(keys):
            if len(key) not in (16, 24, 32):
                raise SessionKeyError(
                    f"session key {index} is {len(key)} bytes; use 32 random bytes"
                )
            kid = _b64(hashlib.sha256(key).digest()[:6])
            self._keys.setdefault(kid, AESGCM(key))
            if index == 0:
                self._newest = kid

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> KeyRing:
        return cls([read_key_file(path) for path in paths])

    @staticmethod
    def generate() -> bytes:
        return AESGCM.generate_key(bit_length=256)

    def seal(self, purpose: str, plaintext: bytes) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self._newest].encrypt(nonce, plaintext, _aad(purpose))
        return f"{FORMAT}.{self._newest}.{_b64(nonce + sealed)}"

    def open(self, purpose: str, value: str) -> bytes | None:
        """The plaintext, or None when the value is malformed, tampered with,
        sealed for another purpose or under a key no longer in the ring."""
        parts = value.split(".")
        if len(parts) != 3 or parts[0] != FORMAT:
            return None
        key = self._keys.get(parts[1])
        if key is None:
            return None
        try:
            blob = _unb64(parts[2])
        except (binascii.Error, ValueError):
            return None
        if len(blob) < NONCE_BYTES + 16:
            return None
        try:
            return key.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(purpose))
        except InvalidTag:
            return None


def _aad(purpose: str) -> bytes:
    # Binds each value to what it is for: a pre-auth cookie can't pass as a session.
    return f"portcullis/{FORMAT}/{purpose}".encode()


def read_key_file(path: Path) -> bytes:
    """A key file holds base64 (standard or URL-safe) of 16, 24 or 32 random bytes."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError as error:
        raise SessionKeyError(
            f"{path}: no such session key file "
            f"(create one: head -c 32 /dev/urandom | base64 > {path})"
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise SessionKeyError(f"{path}: can't read the session key: {error}") from error
    try:
        key = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as error:
        raise SessionKeyError(f"{path}: not base64") from error
    if len(key) not in (16, 24, 32):
        raise SessionKeyError(
            f"{path}: holds {len(key)} bytes; a session key is 32 random bytes in base64 "
            f"(head -c 32 /dev/urandom | base64)"
        )
    return key


def write_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(base64.b64encode(KeyRing.generate()).decode() + "\n")


@dataclass(frozen=True)
class Session:
    """What a signed-in browser holds: only the claims policies use, and the
    refresh token. `expires_at` is the ID token's expiry: past it the session
    is refreshed or ends; `created_at` starts the absolute lifetime."""

    subject: str
    issuer: str
    expires_at: int
    created_at: int
    email: str | None = None
    groups: tuple[str, ...] = ()
    amr: tuple[str, ...] = ()
    acr: str | None = None
    auth_time: int | None = None
    refresh_token: str | None = field(default=None, repr=False)
    # The last step-up round: {"acr", "max_age", "at"}; stops a redirect loop
    # when the provider signs the user in without what was asked.
    step_up: dict[str, Any] | None = None
    # Random, set at sign-in and kept across refreshes: what sign-out revokes
    # server-side (gateway/shared/); the provider's own session id (ID token
    # `sid`) is what its back-channel logout names.
    session_id: str = ""
    provider_sid: str | None = None

    def identity(self, lifetime: int) -> Identity:
        return Identity(
            authenticated=True,
            method="session",
            subject=self.subject,
            email=self.email,
            groups=self.groups,
            amr=self.amr,
            acr=self.acr,
            auth_time=self.auth_time,
            issuer=self.issuer,
            expires_at=float(min(self.expires_at, self.created_at + lifetime)),
            issued_at=float(self.created_at),
            session_id=self.session_id or None,
            provider_sid=self.provider_sid,
        )

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "sub": self.subject,
                "iss": self.issuer,
                "exp": self.expires_at,
                "iat": self.created_at,
                "email": self.email,
                "groups": list(self.groups),
                "amr": list(self.amr),
                "acr": self.acr,
                "auth_time": self.auth_time,
                "rt": self.refresh_token,
                "su": self.step_up,
                "sid": self.session_id,
                "osid": self.provider_sid,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Session | None:
        try:
            raw = orjson.loads(data)
            return cls(
                subject=_str(raw["sub"]),
                issuer=_str(raw["iss"]),
                expires_at=_int(raw["exp"]),
                created_at=_int(raw["iat"]),
                email=_opt_str(raw.get("email")),
                groups=tuple(_str(g) for g in raw.get("groups") or ()),
                amr=tuple(_str(m) for m in raw.get("amr") or ()),
                acr=_opt_str(raw.get("acr")),
                auth_time=None if raw.get("auth_time") is None else _int(raw["auth_time"]),
                refresh_token=_opt_str(raw.get("rt")),
                step_up=raw.get("su") if isinstance(raw.get("su"), dict) else None,
                session_id=_str(raw.get("sid") or ""),
                provider_sid=_opt_str(raw.get("osid")),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("expected a number")
    return int(value)


class SessionTooLarge(Exception):
    """The session doesn't fit in MAX_CHUNKS cookies."""


# RFC 6265bis 4.1.3.2: a browser keeps a cookie so named only from a Set-Cookie
# with Secure, Path=/ and no Domain, from this very host: never one a sibling
# subdomain set with Domain=<the parent> (nor, being Secure, one from plain http).
HOST_PREFIX = "__Host-"


@dataclass(frozen=True)
class CookiePolicy:
    name: str = "portcullis_session"
    secure: bool = True
    lifetime: int = 43200

    @property
    def cookie_name(self) -> str:
        """The session cookie's name in the browser: ``name`` with the ``__Host-``
        prefix when the cookies are Secure, so that no other host of the site
        (evil.example.com beside gateway.example.com) can plant a session or a
        pre-auth cookie of someone else's in the browser."""
        if not self.secure or self.name.startswith(HOST_PREFIX):
            return self.name
        return HOST_PREFIX + self.name

    def attributes(self, path: str = "/", max_age: int | None = None) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "path": path,
            "httponly": True,
            "secure": self.secure,
            "samesite": "Lax",
        }
        if max_age is not None:
            attributes["max_age"] = max(0, max_age)
        return attributes


@dataclass(frozen=True)
class OwnCookies:
    """The gateway's cookies in a request's ``Cookie`` header: each one's value, and
    the names sent more than once with different values (``conflicting``: none of
    those is taken)."""

    values: dict[str, str]
    conflicting: frozenset[str]

    def names(self) -> set[str]:
        return set(self.values) | self.conflicting


# A cookie name (RFC 6265 4.1.1: an RFC 7230 token); the gateway's are all of them.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# The gateway's own cookies as this request sent them (read once per request).
OWN_COOKIES = web.RequestKey("portcullis_own_cookies", OwnCookies)


def read_own_cookies(
    headers: Iterable[str], owns: Callable[[str], bool], mark: str = ""
) -> OwnCookies:
    """The cookies ``owns`` names, from ``Cookie`` header values, read as RFC 6265
    5.4 writes them: pairs split at ``;`` alone, a name up to its first ``=``.
    (aiohttp's ``request.cookies`` also splits at whitespace, so an app's cookie
    ``a=1 portcullis_session=<another session>``, set by the app's answer or its
    scripts, read as the gateway's session: a session planted by whoever can set
    a cookie on the site.) A name sent twice with different values is a cookie
    planted beside ours (another path, a parent domain): neither is taken.

    ``mark`` is text every name ``owns`` names holds: only the pairs holding it
    are read, so an app's cookies (hundreds, which a client may send) cost a
    substring search each (read one by one, 1,000 cost 0.2-0.5 ms)."""
    values: dict[str, str] = {}
    conflicting: set[str] = set()
    for header in headers:
        if mark not in header:
            continue
        for pair in header.split(";"):
            if mark not in pair:
                continue
            name, _, value = pair.partition("=")
            name = name.strip(" \t")
            if not owns(name) or not _TOKEN.fullmatch(name):  # not one the gateway sets
                continue
            value = value.strip(" \t")
            if values.get(name, value) != value:
                conflicting.add(name)
            values[name] = value
    for name in conflicting:
        del values[name]
    return OwnCookies(values, frozenset(conflicting))


class SessionCookies:
    """Reads and writes the session cookie (chunked when large) and the short-lived
    pre-auth cookies, one per sign-in in flight, so tabs signing in at once don't
    overwrite each other's state."""

    def __init__(self, keys: KeyRing, policy: CookiePolicy) -> None:
        self.keys = keys
        self.policy = policy
        self.name = policy.cookie_name
        self.pre_auth_prefix = f"{self.name}_auth_"
        # A __Host- cookie must have Path=/; without the prefix the pre-auth
        # cookies stay on the gateway's own paths.
        self.pre_auth_path = "/" if self.name.startswith(HOST_PREFIX) else "/.portcullis/"
        self._bare = policy.name.removeprefix(HOST_PREFIX)  # what owns() compares
        self._said_conflict = Throttle(60.0)  # a client can send them every time

    @property
    def mark(self) -> str:
        """Text every name :meth:`owns` names holds (the session's bare name)."""
        return self._bare

    def owns(self, cookie_name: str) -> bool:
        """Whether a cookie is the gateway's own (never forwarded upstream, never
        set by an upstream): its names with and without the ``__Host-`` prefix (a
        cookie from before the prefix, or one planted without it, is read as no
        session but still never reaches a backend)."""
        name = cookie_name.removeprefix(HOST_PREFIX)
        return name == self._bare or name.startswith(f"{self._bare}_")

    def sent(self, request: web.Request) -> OwnCookies:
        """The gateway's cookies this request sent (see :func:`read_own_cookies`)."""
        found = request.get(OWN_COOKIES)
        if found is None:
            found = read_own_cookies(request.headers.getall("Cookie", ()), self.owns, self._bare)
            if found.conflicting and self._said_conflict.due():
                log.warning(
                    "cookies %s sent twice with different values (one planted beside the "
                    "gateway's, by another path or a parent domain?): none of them is taken "
                    "(said once a minute)",
                    sorted(found.conflicting)[:4],
                )  # fmt: skip
            request[OWN_COOKIES] = found
        return found

    def crowding(self, headers: Iterable[str], limit: int) -> str | None:
        """Why ``Cookie`` header values hold too many cookies named like the
        gateway's, or None if they fit. The gateway sets at most MAX_CHUNKS
        session cookies and flow.MAX_PENDING pre-auth ones; each pair holding the
        name is read one by one (:func:`read_own_cookies`), and each name is
        cleared one by one on sign-out. Counted in C: a pair is counted for each
        time it holds the name, in its value too."""
        count = sum(header.count(self._bare) for header in headers)
        if count > limit:
            return (
                f"{count} cookies named like the gateway's session cookie "
                f"({self._bare!r}, or holding that name); at most {limit}"
            )
        return None

    # --- the session ------------------------------------------------------------------

    def load(self, request: web.Request) -> Session | None:
        cookies = self.sent(request).values
        value = cookies.get(self.name)
        if value is None:
            return None
        for index in range(1, MAX_CHUNKS):
            chunk = cookies.get(f"{self.name}_{index}")
            if chunk is None:
                break
            value += chunk
        plaintext = self.keys.open("session", value)
        return None if plaintext is None else Session.from_bytes(plaintext)

    def save(self, request: web.Request, session: Session, now: float | None = None) -> None:
        value = self.keys.seal("session", session.to_bytes())
        chunks = [value[i : i + CHUNK_BYTES] for i in range(0, len(value), CHUNK_BYTES)]
        if len(chunks) > MAX_CHUNKS:
            raise SessionTooLarge(f"session is {len(value)} bytes sealed")
        max_age = session.created_at + self.policy.lifetime - int(now or time.time())
        attributes = self.policy.attributes(max_age=max_age)
        changes = pending_changes(request)
        for index, chunk in enumerate(chunks):
            name = self.name if index == 0 else f"{self.name}_{index}"
            changes.append((name, chunk, attributes))
        sent = self.sent(request).names()
        for index in range(len(chunks), MAX_CHUNKS):
            if f"{self.name}_{index}" in sent:
                changes.append((f"{self.name}_{index}", None, self.policy.attributes()))

    def clear(self, request: web.Request) -> None:
        changes = pending_changes(request)
        for name in sorted(self.sent(request).names()):
            if not name.startswith(self.pre_auth_prefix):
                changes.append((name, None, self.policy.attributes()))

    # --- pre-auth state ---------------------------------------------------------------

    def pre_auth_name(self, state: str) -> str:
        return self.pre_auth_prefix + hashlib.sha256(state.encode()).hexdigest()[:16]

    def pending_names(self, request: web.Request) -> list[str]:
        names = self.sent(request).names()
        return [name for name in names if name.startswith(self.pre_auth_prefix)]

    def save_pending(
        self, request: web.Request, state: str, data: dict[str, Any], ttl: int
    ) -> bool:
        """Set the pre-auth cookie of a sign-in; False, and nothing set, when it is
        one a browser would ignore (past BROWSER_COOKIE_BYTES): the callback would
        find no sign-in in flight."""
        name = self.pre_auth_name(state)
        value = self.keys.seal(f"pre-auth/{name}", orjson.dumps(data))
        if len(name) + len(value) > BROWSER_COOKIE_BYTES:
            return False
        attributes = self.policy.attributes(self.pre_auth_path, max_age=ttl)
        pending_changes(request).append((name, value, attributes))
        return True

    def load_pending(self, request: web.Request, state: str) -> dict[str, Any] | None:
        name = self.pre_auth_name(state)
        value = self.sent(request).values.get(name)
        if value is None:
            return None
        plaintext = self.keys.open(f"pre-auth/{name}", value)
        if plaintext is None:
            return None
        try:
            data = orjson.loads(plaintext)
        except orjson.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    def drop_pending(self, request: web.Request, names: Iterable[str]) -> None:
        attributes = self.policy.attributes(self.pre_auth_path)
        pending_changes(request).extend((name, None, attributes) for name in names)


def pending_changes(request: web.Request) -> list[tuple[str, str | None, dict[str, Any]]]:
    changes = request.get(COOKIE_CHANGES)
    if changes is None:
        changes = request[COOKIE_CHANGES] = []
    return changes


async def apply_cookie_changes(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp on_response_prepare hook: write what the request path stashed, also
    onto streamed upstream responses, before their headers go out. (The hook runs
    after aiohttp rendered `response.cookies`, so these are added as headers.)"""
    changes = request.get(COOKIE_CHANGES)
    if not changes:
        return
    for name, value, attributes in changes:
        response.headers.add("Set-Cookie", _set_cookie(name, value, attributes))
    # A shared cache must never keep a response that sets someone's session.
    response.headers["Cache-Control"] = "no-store"
    changes.clear()


def _set_cookie(name: str, value: str | None, attributes: dict[str, Any]) -> str:
    cookie: SimpleCookie = SimpleCookie()
    cookie[name] = value or ""
    morsel = cookie[name]
    morsel["path"] = attributes.get("path", "/")
    if value is None:
        morsel["max-age"] = "0"
        morsel["expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
    elif attributes.get("max_age") is not None:
        morsel["max-age"] = str(attributes["max_age"])
    if attributes.get("secure"):
        morsel["secure"] = True
    if attributes.get("httponly"):
        morsel["httponly"] = True
    if attributes.get("samesite"):
        morsel["samesite"] = attributes["samesite"]
    return morsel.OutputString()
