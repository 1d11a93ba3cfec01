"""An issuer's signing keys: fetched with aiohttp, cached, refreshed on an unknown kid."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt

from gateway.config import Issuer
from gateway.provider_errors import transport_error

log = logging.getLogger("portcullis.jwks")


class JwksCache:
    """Keys by kid for one issuer.

    A token with an unknown kid triggers a refresh, at most once per
    `min_refresh_interval` seconds (so a flood of forged kids can't turn the
    gateway into a load generator against the IdP), and concurrent misses
    share one fetch. Keys older than the issuer's `jwks_max_age` are fetched
    again in the background, so a key the issuer withdrew stops being trusted.
    When the endpoint is down the cached keys keep working.
    """

    def __init__(
        self,
        issuer: Issuer,
        session: aiohttp.ClientSession,
        *,
        min_refresh_interval: float = 30.0,
        on_refresh: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.issuer = issuer
        self._session = session
        self._keys: dict[str, jwt.PyJWK] = {}
        self._algorithms: dict[str, str] = {}
        self._jwks_url = issuer.jwks_url
        self._min_interval = min_refresh_interval
        self._last_attempt = float("-inf")
        self._fetched_at = float("-inf")  # monotonic time of the last good fetch
        self._inflight: asyncio.Task[None] | None = None
        self._on_refresh = on_refresh
        self.last_error: str | None = None

    def algorithm_of(self, kid: str) -> str | None:
        """The `alg` the JWKS declares for this key, if it declares one."""
        return self._algorithms.get(kid)

    async def get(self, kid: str) -> jwt.PyJWK | None:
        key = self.current(kid)
        if key is not None:
            return key
        if time.monotonic() - self._last_attempt >= self._min_interval or self._inflight:
            await self.refresh()
        return self._keys.get(kid)

    def current(self, kid: str) -> jwt.PyJWK | None:
        """The key for `kid` as the issuer last published it; when the keys are
        older than jwks_max_age a fetch starts in the background (at most once per
        `min_refresh_interval`, or per max age if shorter, while it fails)."""
        now = time.monotonic()
        max_age = self.issuer.jwks_max_age
        if (
            now - self._fetched_at >= max_age
            and now - self._last_attempt >= min(self._min_interval, max_age)
            and self._inflight is None
        ):
            self._start()
        return self._keys.get(kid)

    def _start(self) -> asyncio.Task[None]:
        if self._inflight is None:
            self._last_attempt = time.monotonic()
            task = asyncio.ensure_future(self._fetch())
            self._inflight = task

            def done(finished: asyncio.Task[None]) -> None:
                if self._inflight is finished:
                    self._inflight = None

            task.add_done_callback(done)
        return self._inflight

    async def refresh(self) -> None:
        await asyncio.shield(self._start())

    async def _fetch(self) -> None:
        try:
            if self._jwks_url is None:
                discovery = await self._get_json(
                    f"{self.issuer.issuer.rstrip('/')}/.well-known/openid-configuration"
                )
                uri = discovery.get("jwks_uri")
                if not isinstance(uri, str):
                    raise ValueError("discovery document has no jwks_uri")
                self._jwks_url = uri
            document = await self._get_json(self._jwks_url)
            keys, algorithms = self._parse(document)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            # A ValueError is one of ours below (its text the gateway's); aiohttp's
            # may quote the issuer's answer, so only their kind is told.
            self.last_error = str(error) if type(error) is ValueError else transport_error(error)
            log.warning("JWKS refresh for %s failed: %s", self.issuer.issuer, self.last_error)
            if self._on_refresh:
                self._on_refresh(self.issuer.issuer, False)
            return
        self._keys, self._algorithms = keys, algorithms
        self._fetched_at = time.monotonic()
        self.last_error = None
        if self._on_refresh:
            self._on_refresh(self.issuer.issuer, True)

    async def _get_json(self, url: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=5)
        async with self._session.get(url, timeout=timeout, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"{url} answered {response.status}")
            try:
                document = await response.json(content_type=None)
            except ValueError:  # a JSONDecodeError's message may quote the answer
                raise ValueError(f"{url} did not return JSON") from None
        if not isinstance(document, dict):
            raise ValueError(f"{url} did not return a JSON object")
        return document

    def _parse(self, document: dict[str, Any]) -> tuple[dict[str, jwt.PyJWK], dict[str, str]]:
        keys: dict[str, jwt.PyJWK] = {}
        algorithms: dict[str, str] = {}
        for entry in document.get("keys", []):
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                continue
            if entry.get("use", "sig") != "sig":
                continue
            try:
                keys[entry["kid"]] = jwt.PyJWK(entry)
                if isinstance(entry.get("alg"), str):
                    algorithms[entry["kid"]] = entry["alg"]
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as error:
                # PyJWK's messages can quote the whole key (a private part published
                # by mistake, too), so the key is named by its kid when that is a
                # plain short id, and the error by its kind.
                kid = entry["kid"]
                shown = repr(kid) if len(kid) <= 64 and kid.isprintable() else "(not shown)"
                log.warning("skipping JWKS key %s: %s", shown, type(error).__name__)
        if not keys:
            raise ValueError("JWKS has no usable signing keys")
        return keys, algorithms
