"""HTTP Strict Transport Security (RFC 6797) on every answer a browser gets over
HTTPS: the gateway's own pages, refusals and the apps' answers alike.

Without it, a network attacker on a store's Wi-Fi can answer a user's first
`http://` visit with a page of their own on the gateway's host: its Origin then
names the gateway's host, which the policy's cross-site write rule takes for the
gateway's own pages when the browser sends no Sec-Fetch-Site (Go's
CrossOriginProtection ignores the scheme too, and asks for HSTS). The header is
the gateway's, as the host is: an app's own (`max-age=0` would switch it off
for every app on the host) is replaced. Browsers ignore it over plain HTTP
(RFC 6797 8.1), so it is sent only when the browser's scheme is https: the
connection's, or `sign_in.external_url`'s behind a proxy that ends TLS.
`includeSubDomains` is not sent: the gateway speaks for its own host, not its
siblings (Pomerium's default sends it; add it at the Ingress if wanted)."""

from __future__ import annotations

from aiohttp import web

HEADER = "Strict-Transport-Security"


class TransportSecurity:
    """The gateway's Strict-Transport-Security: its value, and on which answers it
    goes (those a browser gets over HTTPS)."""

    def __init__(self, max_age: int, browser_scheme: str | None) -> None:
        self.value = f"max-age={max_age}"
        self.browser_scheme = browser_scheme

    def over(self, scheme: str) -> str | None:
        """The header's value for an answer on a connection of this scheme, or None."""
        return self.value if (self.browser_scheme or scheme) == "https" else None

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """aiohttp's signal for every answer the app gives: set (or replace) the header."""
        if (value := self.over(request.scheme)) is not None:
            response.headers[HEADER] = value
