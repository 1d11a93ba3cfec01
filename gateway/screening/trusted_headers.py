"""Request headers a backend may trust for identity, client address, method or path:
never taken from a client, unless a route allow-lists one (`forward_headers`).

CGI, WSGI and PHP servers read `X_Remote_User` and `X-Remote-User` as the same
variable (HTTP_X_REMOTE_USER), so names are compared with `_` folded to `-`, and
an underscore spelling of a stripped or gateway-set header is always stripped.
"""

from __future__ import annotations

# RFC 9110 7.6.1 hop-by-hop fields: for one connection, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# What the gateway itself says about the request (who sent it, from where, for
# which host, with which assertion): a client's value is always dropped.
GATEWAY_OWNED = frozenset({"forwarded", "host", "x-real-ip"})
GATEWAY_OWNED_PREFIXES = ("x-portcullis-", "x-forwarded-")
# The client certificate as a TLS-terminating front hands it on (the certificate, its
# subject and issuer DNs, serial, fingerprint, whether it verified): a backend behind
# one authenticates the user by them, so a client's own would be a forged mTLS login.
# Envoy's X-Forwarded-Client-Cert and Traefik's X-Forwarded-Tls-Client-Cert* are
# among the gateway's own X-Forwarded-*.
CLIENT_CERTIFICATE = frozenset(
    {
        "client-cert",  # RFC 9440
        "client-cert-chain",
        "x-arr-clientcert",  # IIS ARR, Azure App Service
        "x-client-verify",
        "x-client-dn",
        "x-client-s-dn",
        "x-client-i-dn",
        "x-ssl",  # the "was it TLS" flag HAProxy setups send beside X-SSL-Client-*
    }
)
CLIENT_CERTIFICATE_PREFIXES = (
    "x-ssl-",  # nginx and HAProxy setups: X-SSL-Client-Cert, -Verify, -S-DN, X-SSL-Cert
    "ssl-client-",  # ingress-nginx, Apache mod_ssl's SSL_CLIENT_*, Tomcat's SSLValve
    "x-client-cert",  # X-Client-Cert, -Certificate; Google Cloud LB's X-Client-Cert-*
    "x-tls-client-",
    "x-amzn-mtls-",  # AWS ALB mutual TLS: X-Amzn-Mtls-Clientcert-*
    "cf-cert-",  # Cloudflare's TLS client auth headers: -verified, -subject-dn, ...
    "cf-client-cert-",
)
# Headers that auth proxies, load balancers and rewrite modules set for a backend,
# which backends then believe: the user (oauth2-proxy, Apache/IIS REMOTE_USER,
# Grafana's auth proxy, Azure App Service, IAP, ALB), the client address, the
# original URL (IIS URL Rewrite, Symfony, Laravel) and the method (Rails, Express
# method-override, ASP.NET), and the client certificate (above). A route that needs
# one lists it in `forward_headers`.
# A forward-auth proxy sends its whole set (user, groups, email, name): a backend
# that moved from behind one may authorize on any of them, so each set is here
# whole. Credentials a client itself sends to a backend (X-Auth-Token, X-Api-Key,
# X-Access-Token, Cf-Access-Client-Id/-Secret) are not identity claims and pass.
BACKEND_TRUSTED = CLIENT_CERTIFICATE | frozenset(
    {
        "x-original-url",
        "x-rewrite-url",
        "x-original-uri",
        "x-original-host",
        "x-original-method",
        "x-remote-user",
        "x-remote-group",
        "x-remote-email",
        "x-remote-uid",
        "x-authenticated-user",
        "x-user",
        "x-email",
        "x-http-method-override",
        "x-method-override",
        "x-http-method",
        "true-client-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        # Kubernetes' authenticating-proxy and impersonation headers.
        "impersonate-user",
        "impersonate-group",
        "impersonate-uid",
        # Kong, Apisix and other API gateways' consumer and user headers.
        "x-authenticated-userid",
        "x-authenticated-scope",
        "x-consumer-username",
        "x-consumer-id",
        "x-consumer-custom-id",
        "x-consumer-groups",
        "x-userinfo",
        "x-id-token",
        "x-auth-user",
        "x-proxy-user",
        # Authelia's (and Tinyauth's) forward-auth set.
        "remote-user",
        "remote-groups",
        "remote-email",
        "remote-name",
        # Keycloak Gatekeeper / Louketo proxy (X-Auth-Token is left: a common
        # client credential, and Gatekeeper's is a token a backend verifies).
        "x-auth-userid",
        "x-auth-username",
        "x-auth-subject",
        "x-auth-email",
        "x-auth-groups",
        "x-auth-roles",
        "x-auth-audience",
        "x-auth-expiresin",
        # Signed assertions and user headers of access proxies: Cloudflare Access,
        # Google IAP, Teleport; caddy-security's claim headers.
        "cf-access-authenticated-user-email",
        "cf-access-jwt-assertion",
        "x-goog-iap-jwt-assertion",
        "teleport-jwt-assertion",
        "x-token-subject",
        # Tailscale Serve's user and grants.
        "tailscale-app-capabilities",
        # The original path and host as other proxies pass them on.
        "x-envoy-original-path",
        "x-host",
        "x-http-host-override",
        # The client address as CDNs and load balancers pass it on.
        "cf-connecting-ip",
        "client-ip",
        "x-originating-ip",
        "x-remote-addr",
        "x-remote-ip",
    }
)
BACKEND_TRUSTED_PREFIXES = (
    *CLIENT_CERTIFICATE_PREFIXES,
    "x-auth-request-",  # oauth2-proxy (its X-Forwarded-* set is the gateway's own)
    "x-ms-client-principal",  # Azure App Service authentication
    "x-ms-token-",  # the same, the provider's tokens
    "x-goog-authenticated-user-",  # Google IAP
    "x-amzn-oidc-",  # AWS ALB
    "x-amzn-ava-",  # AWS Verified Access
    "x-remote-extra-",  # Kubernetes' authenticating proxy
    "impersonate-extra-",
    "x-webauth-",  # Grafana's auth proxy: -user, -email, -name, -groups, -role
    "x-authentik-",  # authentik
    "x-pomerium-",  # Pomerium: -jwt-assertion, -claim-*
    "x-vouch-",  # Vouch Proxy: -user, -idp-claims-*
    "tailscale-user-",  # Tailscale Serve: -login, -name, -profile-pic
    "x-token-user-",  # caddy-security: -name, -email, -roles
    "oidc-claim-",  # Apache mod_auth_openidc (OIDC_CLAIM_*)
)


def fold(name: str) -> str:
    """The name as a CGI/WSGI server reads it: lower case, `_` as `-`."""
    lower = name.lower()
    return lower.replace("_", "-") if "_" in lower else lower


def backend_trusted(folded: str) -> bool:
    return folded in BACKEND_TRUSTED or folded.startswith(BACKEND_TRUSTED_PREFIXES)


def gateway_owned(folded: str) -> bool:
    return (
        folded in GATEWAY_OWNED or folded in HOP_BY_HOP or folded.startswith(GATEWAY_OWNED_PREFIXES)
    )


def allow_list_problem(name: str) -> str | None:
    """Why `name` can't be in a route's `forward_headers`, or None if it can."""
    folded = fold(name)
    if folded != name.lower():
        return "use the '-' spelling: '_' spellings of these headers are always stripped"
    if gateway_owned(folded):
        return "set by the gateway (or hop-by-hop): a client's value is never forwarded"
    if not backend_trusted(folded):
        return "not stripped by the gateway, so there is nothing to allow"
    return None
