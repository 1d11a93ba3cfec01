"""The gateway's configuration file: parsed, validated, and refused with the key path."""

from __future__ import annotations

import difflib
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from gateway.audit.redaction import (
    DEFAULT_MASKED_HEADERS,
    DEFAULT_MASKED_QUERY_PARAMS,
    DEFAULT_MAX_HEADER_CHARS,
    DEFAULT_MAX_HEADER_VALUE_CHARS,
    parse_pointer,
)
from gateway.mtls.cas import (
    SCOPE_PREFIX,
    ClientCa,
    is_certificate_issuer,
    load_client_cas,
)
from gateway.screening.headers import bad_host, host_name
from gateway.screening.trusted_headers import allow_list_problem

if TYPE_CHECKING:
    from gateway.audit.shipping.settings import SinkConfig
    from gateway.mtls.trust_domains import TrustDomains
    from gateway.shared.settings import SharedStateConfig

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class ConfigError(Exception):
    """A configuration problem, named by its key path: `routes[1].upstream: ...`."""


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None
    require_client_cert: bool = False
    # (trust domain, CA file): the CAs that may issue the trust domain's SPIFFE IDs.
    spiffe_trust_domains: tuple[tuple[str, Path], ...] = ()


@dataclass(frozen=True)
class Listener:
    address: str = "127.0.0.1"
    port: int = 8080
    tls: TlsConfig | None = None


@dataclass(frozen=True)
class Route:
    app: str
    upstream: str
    path_prefix: str = "/"
    host: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 30.0
    pass_authorization: bool = False
    # `path_params: allow`: `;params` in segments reach the upstream (e.g. `;jsessionid`);
    # the policy sees the segments without them. Default: refused with a 400.
    allow_path_params: bool = False
    # None: the gateway-wide `limits` default (a big upload route raises them).
    body_idle_timeout: float | None = None
    body_timeout: float | None = None
    # Lower-case names of headers backends trust (gateway/screening/trusted_headers.py) that
    # this route takes from clients anyway, e.g. x-http-method-override.
    forward_headers: frozenset[str] = frozenset()


def issuer_name(issuer: str) -> str:
    """An issuer as the shared state names it (its keys, its admin commands): without
    a trailing slash. Sessions carry sign_in.issuer read without one; a provider's
    tokens (its logout tokens, or its access tokens under `issuers`) may keep it
    (Auth0's do): one provider, one name, so a revocation it asks for reaches what
    it issued. A CA's name (`mtls:<its subject>`, gateway/mtls/cas.py) is kept
    whole: a subject may end in a slash, and no other CA's name may be made of it."""
    if is_certificate_issuer(issuer):
        return issuer
    return issuer.rstrip("/")


def client_cas(listeners: Iterable[Listener]) -> tuple[ClientCa, ...]:
    """The CAs of every listener's `client_ca`: the issuers of mTLS identities."""
    files = [item.tls.client_ca for item in listeners if item.tls and item.tls.client_ca]
    try:
        return load_client_cas(files)
    except ValueError as error:
        raise ConfigError(f"listeners: tls.client_ca: {error}") from None


def user_name(issuer: str, subject: str) -> str:
    """One user: an issuer and a subject (OIDC Core 5.7: `sub` is unique only
    within its issuer), as the gateway keys what it keeps per user (the shared
    state, concurrency slots). The issuer (issuer_name's) is length-prefixed: it
    is a URL, colons and all, so no issuer or subject, whatever it holds, can end
    early or start late and name another pair."""
    issuer = issuer_name(issuer)
    return f"{len(issuer)}:{issuer}:{subject}"


@dataclass(frozen=True)
class Issuer:
    issuer: str
    audiences: tuple[str, ...]
    jwks_url: str | None = None
    discovery: bool = False
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    groups_claim: str = "groups"
    leeway: float = 30.0
    # A token whose exp is further ahead than this is refused (a stolen long-lived
    # token is a standing credential).
    max_token_lifetime: float = 86400.0
    # Clients (azp) trusted to present a token with several audiences (OIDC Core
    # 3.1.3.7); empty means the issuer's own audiences.
    authorized_parties: tuple[str, ...] = ()
    # Keys are fetched again once older than this: a key the issuer withdrew (it
    # leaked) stops being trusted, and so do tokens verified with it.
    jwks_max_age: float = 300.0

    @property
    def trusted_parties(self) -> tuple[str, ...]:
        return self.authorized_parties or self.audiences


@dataclass(frozen=True)
class PolicyConfig:
    source: str = "policies"
    timeout_ms: float = 250.0
    watch: bool = True
    poll_interval: float = 1.0
    # A candidate evaluated beside the live policy, never enforced (gateway/policy/shadow.py).
    shadow: str | None = None


@dataclass(frozen=True)
class AssertionConfig:
    key_file: Path | None = None
    issuer: str = "portcullis"
    ttl: int = 60


@dataclass(frozen=True)
class DecisionLogConfig:
    path: Path | None = None
    sign_interval: float = 10.0
    # What one event may hold (gateway/audit/redaction.py): masked header names (or
    # /input/... pointers) and query parameters; header values cut at this many
    # characters; header names and values of one event at most this many in all.
    mask_headers: tuple[str, ...] = DEFAULT_MASKED_HEADERS
    mask_query_params: tuple[str, ...] = DEFAULT_MASKED_QUERY_PARAMS
    max_header_value_chars: int = DEFAULT_MAX_HEADER_VALUE_CHARS
    max_header_chars: int = DEFAULT_MAX_HEADER_CHARS
    # sync: a response waits until its event is fsync'd (group commit); async: the
    # background writer; None (default): sync for routes of apps classified pci.
    durability: str | None = None
    durability_timeout: float = 5.0  # sync: no durable event by then -> 503, not forwarded
    sinks: tuple[SinkConfig, ...] = ()  # gateway/audit/shipping/settings.py
    # The shipping process's nice value (0-19; it also runs SCHED_BATCH when > 0):
    # background work whose backlog is the durable file yields the CPU to requests.
    shipping_nice: int = 10
    # The log's name in its chain signatures (README "Anchoring"); None: log_name().
    name: str | None = None

    def log_name(self) -> str:
        """What the chain signatures call this log: ``name``, else the host's name
        and the log's file name (a pod's name in Kubernetes; each worker's own file)."""
        if self.name is not None:
            return self.name
        file = self.path.name if self.path is not None else "-"
        return f"{socket.gethostname()}:{file}"


@dataclass(frozen=True)
class SignInConfig:
    """Browser sign-in with an OpenID provider (authorization code + PKCE)."""

    issuer: str
    client_id: str
    client_secret: str | None = None  # None: a public client
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    external_url: str | None = None  # default: the scheme and host the browser used
    groups_claim: str = "groups"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: float = 30.0


@dataclass(frozen=True)
class SessionConfig:
    key_files: tuple[Path, ...] = ()  # the first encrypts; all decrypt
    cookie_name: str = "portcullis_session"
    secure: bool = True
    lifetime: int = 43200  # absolute: sign in again after 12 h
    refresh_margin: int = 60  # refresh this long before the ID token expires


@dataclass(frozen=True)
class LimitsConfig:
    """Bounds that keep one client from starving the others (README "Limits")."""

    header_timeout: float = 10.0  # request headers complete within this, or the connection closes
    keepalive_timeout: float = 60.0  # an idle kept-alive connection closes after this
    body_idle_timeout: float = 10.0  # no request-body byte for this long: 408 / cut
    body_timeout: float = 60.0  # the whole request body within this
    upstream_pool_size: int = 256  # HTTP connections per upstream (WebSockets have their own)
    requests_per_identity: int = 64  # concurrent upstream requests per identity per app
    websockets_per_identity: int = 16  # concurrent WebSockets per identity per app
    websocket_idle_timeout: float = 300.0  # no message either way for this long: closed
    websocket_recheck_interval: float = 60.0  # the policy decides again on open WebSockets
    max_request_headers: int = 100  # header fields per request; past it a logged 431
    max_request_header_bytes: int = 32768  # names + values (+4 per field); past it a 431
    connections_per_ip: int = 256  # open connections per source address; past it closed at once
    max_query_params: int = 1000  # `&`/`;`-separated query parameters; past it a logged 400
    max_session_cookies: int = 32  # Cookie pairs holding the session cookie's name; a 400


# Strict-Transport-Security's max-age unless hsts_max_age says otherwise: one
# year, as Pomerium sends.
DEFAULT_HSTS_MAX_AGE = 31536000


@dataclass(frozen=True)
class GatewayConfig:
    listeners: tuple[Listener, ...] = (Listener(),)
    routes: tuple[Route, ...] = ()
    issuers: tuple[Issuer, ...] = ()
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    assertion: AssertionConfig = field(default_factory=AssertionConfig)
    decision_log: DecisionLogConfig = field(default_factory=DecisionLogConfig)
    auth: bool = True  # off only for benchmarks of the bare proxy
    base_dir: Path = Path(".")
    sign_in: SignInConfig | None = None
    session: SessionConfig = field(default_factory=SessionConfig)
    # /metrics, detailed /readyz and /audit/head: only here, never on the public
    # listeners (they name apps, counts and the issuer). None: not served at all.
    admin_listener: Listener | None = None
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    # Redis for what replicas must agree on (gateway/shared/); None: per process.
    shared_state: SharedStateConfig | None = None
    # Strict-Transport-Security's max-age on answers over HTTPS
    # (gateway/transport_security.py); None: not sent.
    hsts_max_age: int | None = DEFAULT_HSTS_MAX_AGE


class _Reader:
    """Typed access to one mapping of the file, remembering where it is."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'config'}: must be a mapping")
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(name)
        if name not in self.data or self.data[name] is None:
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            expected = (
                kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            )
            got = type(value).__name__
            # Only where text is wanted: a quoted 'on' would be no number either.
            wants_text = str in (kind if isinstance(kind, tuple) else (kind,))
            unquoted = (
                f"; {_read_as_boolean(value)}" if isinstance(value, bool) and wants_text else ""
            )
            raise ConfigError(f"{self.key(name)}: expected {expected}, got {got}{unquoted}")
        return value

    def required(self, name: str, kind: type) -> Any:
        value = self.get(name, kind)
        if value is None:
            raise ConfigError(f"{self.key(name)}: required")
        return value

    def strings(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.get(name, (list, str), None)
        if value is None:
            return default
        items = [value] if isinstance(value, str) else value
        for index, item in enumerate(items):
            if not isinstance(item, str) or not item:
                unquoted = f"; {_read_as_boolean(item)}" if isinstance(item, bool) else ""
                raise ConfigError(
                    f"{self.key(name)}[{index}]: expected a non-empty string{unquoted}"
                )
        return tuple(items)

    def reject_unknown(self, known: set[str]) -> None:
        self._refuse_unknown(known)

    def done(self) -> None:
        # Every key this level has was read by now: what wasn't read is unknown.
        self._refuse_unknown(self.used)

    def _refuse_unknown(self, known: set[str]) -> None:
        # YAML keys may be numbers or booleans (`1: x`, `on: x`): named as text.
        unknown = sorted(set(self.data) - known, key=str)
        if unknown:
            first = unknown[0]
            if isinstance(first, bool):
                hint = f"; {_read_as_boolean(first)}"
            else:
                close = difflib.get_close_matches(str(first), sorted(known), n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{self.key(str(first))}: unknown key{hint}")


def _read_as_boolean(value: bool) -> str:
    """Why a word came out true or false: PyYAML reads YAML 1.1, where unquoted
    on/off/yes/no are booleans, and how to keep the word."""
    if value:
        return (
            "YAML reads an unquoted on, yes or true as the boolean true: "
            "to mean the word, quote it ('on')"
        )
    return (
        "YAML reads an unquoted off, no or false as the boolean false: "
        "to mean the word, quote it ('off')"
    )


def _http_url(value: str, where: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


def _algorithms(reader: _Reader) -> tuple[str, ...]:
    """Token signature algorithms: asymmetric only, so a public key can never be
    used as an HMAC secret and `none` is never accepted."""
    algorithms = reader.strings("algorithms", ("RS256", "ES256"))
    for index, algorithm in enumerate(algorithms):
        if algorithm not in ASYMMETRIC_ALGORITHMS:
            raise ConfigError(
                f"{reader.key('algorithms')}[{index}]: {algorithm!r} not allowed; use one of "
                f"{', '.join(sorted(ASYMMETRIC_ALGORITHMS))} (never none or HS*)"
            )
    return algorithms


def _positive(value: float, where: str) -> float:
    if value <= 0:
        raise ConfigError(f"{where}: must be greater than 0")
    return value


def _path(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    return path if path.is_absolute() else base / path


def parse_config(data: Any, base_dir: Path = Path(".")) -> GatewayConfig:
    """A GatewayConfig from the parsed YAML document; ConfigError on the first problem."""
    root = _Reader(data, "")
    root.reject_unknown(
        {"listeners", "routes", "auth", "issuers", "policy", "assertion", "decision_log"}
        | {"sign_in", "session", "admin_listener", "limits", "shared_state", "hsts_max_age"}
    )
    listeners = tuple(_listener(item, f"listeners[{i}]", base_dir) for i, item in
                      enumerate(root.get("listeners", list, [{}])))  # fmt: skip
    if not listeners:
        raise ConfigError("listeners: at least one listener is required")
    client_cas(listeners)  # each file holds a CA
    spiffe_trust_domains(listeners)  # each binds CAs its listener trusts
    routes = tuple(
        _route(item, f"routes[{i}]") for i, item in enumerate(root.get("routes", list, []))
    )
    seen: set[tuple[str | None, str]] = set()
    for index, route in enumerate(routes):
        if (route.host, route.path_prefix) in seen:
            raise ConfigError(f"routes[{index}]: duplicate host + path_prefix {route.path_prefix}")
        seen.add((route.host, route.path_prefix))
    auth = root.get("auth", bool, True)
    issuers = tuple(
        _issuer(item, f"issuers[{i}]") for i, item in enumerate(root.get("issuers", list, []))
    )
    sign_in_data = root.get("sign_in", dict, None)
    sign_in = None if sign_in_data is None else _sign_in(sign_in_data, base_dir)
    session = _session(root.get("session", dict, {}), base_dir, sign_in is not None)
    if auth and not issuers and sign_in is None:
        raise ConfigError(
            "issuers: at least one token issuer is required (or sign_in, or auth: false)"
        )
    policy = _policy(root.get("policy", dict, {}))
    assertion = _assertion(root.get("assertion", dict, {}), base_dir)
    decision_log = _decision_log(root.get("decision_log", dict, {}), base_dir)
    admin_data = root.get("admin_listener", dict, None)
    admin = None if admin_data is None else _admin_listener(admin_data, listeners, base_dir)
    limits = _limits(root.get("limits", dict, {}))
    shared_data = root.get("shared_state", dict, None)
    shared_state = None
    if shared_data is not None:
        from gateway.shared.settings import parse_shared_state  # it imports this module

        shared_state = parse_shared_state(shared_data, base_dir)
    hsts_max_age = _hsts_max_age(root)
    root.done()
    return GatewayConfig(
        listeners, routes, issuers, policy, assertion, decision_log, auth, base_dir,
        sign_in, session, admin_listener=admin, limits=limits, shared_state=shared_state,
        hsts_max_age=hsts_max_age,
    )  # fmt: skip


def _hsts_max_age(root: _Reader) -> int | None:
    """One year unless given; null sends no Strict-Transport-Security at all."""
    if "hsts_max_age" in root.data and root.data["hsts_max_age"] is None:
        root.used.add("hsts_max_age")
        return None
    max_age: int = root.get("hsts_max_age", int, DEFAULT_HSTS_MAX_AGE)
    if max_age < 0:
        raise ConfigError(
            "hsts_max_age: must be 0 or more (0 tells browsers to forget it; null sends none)"
        )
    return max_age


def load_config(path: str | Path) -> GatewayConfig:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise ConfigError(f"{file}: no such config file") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{file}: can't read: {error}") from error
    try:
        data = _load_yaml(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else str(file)
        raise ConfigError(f"{where}: invalid YAML: {error.problem}") from error
    try:
        return parse_config(data, file.parent)
    except ConfigError as error:
        raise ConfigError(f"{file}: {error}") from error


def _load_yaml(text: str) -> Any:
    """The document in ``text``, like yaml.safe_load, but a key given twice in one
    mapping is an error: PyYAML keeps the last, so a second `routes:` would
    silently replace the first."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _refuse_duplicate_keys(root: yaml.Node) -> None:
    pending, seen_nodes = [root], set()
    while pending:
        node = pending.pop()
        if id(node) in seen_nodes:  # an alias: the same node again
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, Any], yaml.Mark] = {}
            for key, value in node.value:
                pending += (key, value)
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                if (key.tag, key.value) in first:
                    raise yaml.constructor.ConstructorError(
                        problem=f"duplicate key {key.value!r} (first at line "
                        f"{first[key.tag, key.value].line + 1}); give each key once",
                        problem_mark=key.start_mark,
                    )
                first[key.tag, key.value] = key.start_mark
        elif isinstance(node, yaml.SequenceNode):
            pending += node.value


def _listener(data: Any, where: str, base_dir: Path, default_port: int = 8080) -> Listener:
    reader = _Reader(data, where)
    address = reader.get("address", str, "127.0.0.1")
    port = reader.get("port", int, default_port)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where}.port: must be 0-65535")
    tls_data = reader.get("tls", dict, None)
    tls = None
    if tls_data is not None:
        tls_reader = _Reader(tls_data, f"{where}.tls")
        cert = _path(base_dir, tls_reader.required("cert", str))
        key = _path(base_dir, tls_reader.required("key", str))
        client_ca = _path(base_dir, tls_reader.get("client_ca", str))
        require = tls_reader.get("require_client_cert", bool, False)
        domains = _spiffe_trust_domains(tls_reader, base_dir)
        tls_reader.done()
        if require and client_ca is None:
            raise ConfigError(f"{where}.tls.require_client_cert: needs client_ca")
        if domains and client_ca is None:
            raise ConfigError(f"{where}.tls.spiffe_trust_domains: needs client_ca")
        for name, file in (("cert", cert), ("key", key), ("client_ca", client_ca)):
            if file is not None and not file.is_file():
                raise ConfigError(f"{where}.tls.{name}: no such file {file}")
        assert cert is not None and key is not None
        tls = TlsConfig(cert, key, client_ca, require, domains)
    reader.done()
    return Listener(address, port, tls)


def _spiffe_trust_domains(reader: _Reader, base_dir: Path) -> tuple[tuple[str, Path], ...]:
    """`spiffe_trust_domains: {store.example: store-ca.pem}`: each a trust domain
    as a SPIFFE ID has it, and a file of the CAs that may issue its IDs."""
    from gateway.mtls.subject import trust_domain_problem  # it imports this module

    data = reader.get("spiffe_trust_domains", dict, {})
    where = reader.key("spiffe_trust_domains")
    pairs = []
    for domain, file in data.items():
        problem = trust_domain_problem(domain) if isinstance(domain, str) else "not a string"
        if problem is not None:
            raise ConfigError(f"{where}: {domain!r} is not a trust domain: {problem}")
        if not isinstance(file, str):
            raise ConfigError(f"{where}.{domain}: must be the path of a file of CA certificates")
        path = _path(base_dir, file)
        assert path is not None
        if not path.is_file():
            raise ConfigError(f"{where}.{domain}: no such file {path}")
        pairs.append((domain, path))
    return tuple(pairs)


def spiffe_trust_domains(listeners: Iterable[Listener]) -> TrustDomains:
    """Each listener's `spiffe_trust_domains`, as the issuer names of the CAs that
    may issue each domain's IDs. ConfigError for a file without a CA, a CA its
    listener's client_ca doesn't hold (none of its certificates would reach the
    check), a CA whose name a CA of client_ca the file doesn't hold has too (the
    check is by issuer name: that other CA, a partner's named like ours, would
    issue the domain's IDs), or a domain two listeners bind to different CAs (an
    identity's issuer is the same CA on every listener, so one binding holds on
    all of them)."""
    from gateway.mtls.trust_domains import TrustDomains  # it imports this module

    named: dict[str, set[bytes]] = {}
    for ca in client_cas(listeners):
        named.setdefault(ca.issuer, set()).add(ca.der)
    bound: dict[str, frozenset[str]] = {}
    for index, listener in enumerate(listeners):
        if listener.tls is None or listener.tls.client_ca is None:
            continue
        where = f"listeners[{index}].tls.spiffe_trust_domains"
        trusted = {ca.der for ca in load_client_cas([listener.tls.client_ca])}
        for domain, file in listener.tls.spiffe_trust_domains:
            try:
                cas = load_client_cas([file])
            except ValueError as error:
                raise ConfigError(f"{where}.{domain}: {error}") from None
            for ca in cas:
                if ca.der not in trusted:
                    raise ConfigError(
                        f"{where}.{domain}: {file} holds {ca.issuer.removeprefix(SCOPE_PREFIX)}, "
                        f"which this listener's client_ca ({listener.tls.client_ca}) does not"
                    )
                if named[ca.issuer] - {held.der for held in cas}:
                    raise ConfigError(
                        f"{where}.{domain}: client_ca holds another CA named "
                        f"{ca.issuer.removeprefix(SCOPE_PREFIX)} (another key) that {file} "
                        "does not: the binding is by name, so that CA's certificates could "
                        f"carry this domain's IDs; if it is this CA renewed, add it to {file}, "
                        "else trust only one CA of that name"
                    )
            issuers = frozenset(ca.issuer for ca in cas)
            if bound.setdefault(domain, issuers) != issuers:
                raise ConfigError(
                    f"{where}.{domain}: bound to {', '.join(sorted(issuers))} here and to "
                    f"{', '.join(sorted(bound[domain]))} on another listener; bind it to the "
                    "same CAs everywhere"
                )
    return TrustDomains(bound)


def _admin_listener(
    data: dict[str, Any], listeners: tuple[Listener, ...], base_dir: Path
) -> Listener:
    admin = _listener(data, "admin_listener", base_dir, default_port=9090)
    for index, public in enumerate(listeners):
        if admin.port != 0 and admin.port == public.port:
            raise ConfigError(
                f"admin_listener.port: {admin.port} is also listeners[{index}]'s port; "
                "the admin listener needs a port of its own (default 9090)"
            )
    return admin


def _route(data: Any, where: str) -> Route:
    reader = _Reader(data, where)
    app = reader.required("app", str)
    upstream = _http_url(reader.required("upstream", str), f"{where}.upstream")
    prefix = reader.get("path_prefix", str, "/")
    if not prefix.startswith("/") or not prefix.endswith("/"):
        raise ConfigError(f"{where}.path_prefix: must start and end with '/', got {prefix!r}")
    host = reader.get("host", str, None)
    if host and ":" in host.rsplit("]", 1)[-1]:
        # RouteTable.match compares the request's Host without its port: one here never matches.
        raise ConfigError(
            f"{where}.host: a host name without a port (IPv6 in brackets), got {host!r}"
        )
    problem = bad_host(host) if host else None
    if problem is not None:  # a Host no request may carry: the route would never match
        raise ConfigError(f"{where}.host: {problem}, got {host!r}")
    connect = _positive(reader.get("connect_timeout", float, 2.0), f"{where}.connect_timeout")
    read = _positive(reader.get("read_timeout", float, 30.0), f"{where}.read_timeout")
    pass_authorization = reader.get("pass_authorization", bool, False)
    path_params = reader.get("path_params", str, "refuse")
    if path_params not in ("refuse", "allow"):
        raise ConfigError(f"{where}.path_params: must be 'refuse' or 'allow', got {path_params!r}")
    body_idle = reader.get("body_idle_timeout", float, None)
    body_total = reader.get("body_timeout", float, None)
    for name, value in (("body_idle_timeout", body_idle), ("body_timeout", body_total)):
        if value is not None:
            _positive(value, f"{where}.{name}")
    forward_headers = _forward_headers(reader)
    reader.done()
    return Route(
        app,
        upstream,
        prefix,
        host=host_name(host) if host else None,
        connect_timeout=connect,
        read_timeout=read,
        pass_authorization=pass_authorization,
        allow_path_params=path_params == "allow",
        body_idle_timeout=body_idle,
        body_timeout=body_total,
        forward_headers=forward_headers,
    )


def _forward_headers(reader: _Reader) -> frozenset[str]:
    names = reader.strings("forward_headers")
    for index, name in enumerate(names):
        problem = allow_list_problem(name)
        if problem is not None:
            raise ConfigError(f"{reader.key('forward_headers')}[{index}]: {name}: {problem}")
    return frozenset(name.lower() for name in names)


def _issuer(data: Any, where: str) -> Issuer:
    reader = _Reader(data, where)
    issuer = reader.required("issuer", str)
    if is_certificate_issuer(issuer_name(issuer)):
        raise ConfigError(
            f"{where}.issuer: {issuer!r} names client-certificate identities (`mtls`, or "
            "`mtls:` and a CA's name); use the issuer's own name (its URL)"
        )
    audiences = reader.strings("audiences")
    if not audiences:
        raise ConfigError(f"{where}.audiences: at least one audience is required")
    jwks_url = reader.get("jwks_url", str, None)
    discovery = reader.get("discovery", bool, False)
    if jwks_url is None and not discovery:
        raise ConfigError(f"{where}: set jwks_url or discovery: true")
    if jwks_url is not None:
        jwks_url = _http_url(jwks_url, f"{where}.jwks_url")
    algorithms = _algorithms(reader)
    groups_claim = reader.get("groups_claim", str, "groups")
    leeway = reader.get("leeway", float, 30.0)
    if not 0 <= leeway <= 300:
        raise ConfigError(f"{where}.leeway: must be 0-300 seconds")
    max_lifetime = reader.get("max_token_lifetime", float, 86400.0)
    if not 60 <= max_lifetime <= 31_622_400:
        raise ConfigError(
            f"{where}.max_token_lifetime: must be 60-31622400 seconds (1 minute to 366 days)"
        )
    parties = reader.strings("authorized_parties")
    if "authorized_parties" in reader.data and not parties:
        raise ConfigError(
            f"{where}.authorized_parties: list at least one client id "
            "(or leave it out to trust the issuer's audiences)"
        )
    jwks_max_age = reader.get("jwks_max_age", float, 300.0)
    if not 1 <= jwks_max_age <= 86400:
        raise ConfigError(f"{where}.jwks_max_age: must be 1-86400 seconds")
    reader.done()
    return Issuer(
        issuer, audiences, jwks_url, discovery, algorithms, groups_claim, leeway,
        max_lifetime, parties, jwks_max_age,
    )  # fmt: skip


def _policy(data: dict[str, Any]) -> PolicyConfig:
    reader = _Reader(data, "policy")
    source = reader.get("source", str, "policies")
    timeout = _positive(reader.get("timeout_ms", float, 250.0), "policy.timeout_ms")
    watch = reader.get("watch", bool, True)
    poll = _positive(reader.get("poll_interval", float, 1.0), "policy.poll_interval")
    shadow = reader.get("shadow", str, None)
    if shadow is not None and not shadow.strip():
        raise ConfigError(
            "policy.shadow: give a policy directory, bundle or OPA URL (or leave it out)"
        )
    from policy_engine.opa_server import has_credentials

    for key, value in (("source", source), ("shadow", shadow)):
        if value is not None and has_credentials(value):
            # Never sent (OPA's client takes no user:password), and the source is
            # shown as the policy's revision: in every event, /metrics and the SIEM.
            raise ConfigError(
                f"policy.{key}: an OPA URL with credentials (user:password@) is not "
                "supported: they would be logged with every decision, and are not sent"
            )
    reader.done()
    return PolicyConfig(source, timeout, watch, poll, shadow)


def _assertion(data: dict[str, Any], base_dir: Path) -> AssertionConfig:
    reader = _Reader(data, "assertion")
    key_file = _path(base_dir, reader.get("key_file", str, None))
    issuer = reader.get("issuer", str, "portcullis")
    ttl = reader.get("ttl", int, 60)
    if not 1 <= ttl <= 60:
        raise ConfigError("assertion.ttl: must be 1-60 seconds")
    reader.done()
    return AssertionConfig(key_file, issuer, ttl)


def _decision_log(data: dict[str, Any], base_dir: Path) -> DecisionLogConfig:
    reader = _Reader(data, "decision_log")
    path = _path(base_dir, reader.get("path", str, None))
    interval = _positive(reader.get("sign_interval", float, 10.0), "decision_log.sign_interval")
    mask_headers = reader.strings("mask_headers", DEFAULT_MASKED_HEADERS)
    for index, entry in enumerate(mask_headers):
        if entry.startswith("/"):
            try:
                parse_pointer(entry)
            except ValueError as error:
                raise ConfigError(f"decision_log.mask_headers[{index}]: {error}") from None
    mask_query_params = reader.strings("mask_query_params", DEFAULT_MASKED_QUERY_PARAMS)
    value_chars = reader.get("max_header_value_chars", int, DEFAULT_MAX_HEADER_VALUE_CHARS)
    if value_chars < 64:
        raise ConfigError("decision_log.max_header_value_chars: must be at least 64")
    header_chars = reader.get("max_header_chars", int, DEFAULT_MAX_HEADER_CHARS)
    if header_chars < value_chars:
        raise ConfigError(
            f"decision_log.max_header_chars: must be at least max_header_value_chars "
            f"({value_chars}), or one header could never be logged"
        )
    durability = reader.get("durability", str, None)
    if durability not in (None, "sync", "async"):
        raise ConfigError(f"decision_log.durability: must be sync or async, got {durability!r}")
    durability_timeout = _positive(
        reader.get("durability_timeout", float, 5.0), "decision_log.durability_timeout"
    )
    from gateway.audit.shipping.settings import parse_sinks  # it builds on this module

    sinks = parse_sinks(reader.get("sinks", list, []), base_dir, path)
    if sinks and path is None:
        raise ConfigError(
            "decision_log.sinks: shipping needs decision_log.path (the file is the buffer)"
        )
    shipping_nice = reader.get("shipping_nice", int, 10)
    if not 0 <= shipping_nice <= 19:
        raise ConfigError(f"decision_log.shipping_nice: 0 to 19, got {shipping_nice}")
    name = reader.get("name", str, None)
    if name is not None and not _LOG_NAME.fullmatch(name):
        raise ConfigError(f"decision_log.name: 1 to 200 printable characters, got {name!r}")
    reader.done()
    return DecisionLogConfig(
        path, interval, mask_headers, mask_query_params, value_chars, header_chars,
        durability, durability_timeout, sinks, shipping_nice, name,
    )  # fmt: skip


# A log's name goes into every signed head and the messages that name it.
_LOG_NAME = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,200}")


def _limits(data: dict[str, Any]) -> LimitsConfig:
    reader = _Reader(data, "limits")
    default = LimitsConfig()
    values: dict[str, Any] = {}
    for name, value in vars(default).items():
        kind = int if isinstance(value, int) else float
        values[name] = reader.get(name, kind, value)
        if values[name] <= 0:
            raise ConfigError(f"limits.{name}: must be greater than 0")
    reader.done()
    limits = LimitsConfig(**values)
    # The point of the per-identity limit: one identity never holds the whole pool.
    if limits.requests_per_identity >= limits.upstream_pool_size:
        raise ConfigError(
            f"limits.requests_per_identity: {limits.requests_per_identity} must be below "
            f"limits.upstream_pool_size ({limits.upstream_pool_size}), or one identity "
            "can hold every upstream connection"
        )
    return limits


def _sign_in(data: dict[str, Any], base_dir: Path) -> SignInConfig:
    reader = _Reader(data, "sign_in")
    issuer = _http_url(reader.required("issuer", str), "sign_in.issuer")
    client_id = reader.required("client_id", str)
    secret = reader.get("client_secret", str, None)
    secret_file = _path(base_dir, reader.get("client_secret_file", str, None))
    if secret is not None and secret_file is not None:
        raise ConfigError("sign_in.client_secret_file: set client_secret or its file, not both")
    if secret_file is not None:
        try:
            secret = secret_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(
                f"sign_in.client_secret_file: can't read {secret_file}: {error}"
            ) from error
    scopes = reader.strings("scopes", ("openid", "email", "profile"))
    if "openid" not in scopes:
        raise ConfigError("sign_in.scopes: must include openid (the gateway needs an ID token)")
    external_url = reader.get("external_url", str, None)
    if external_url is not None:
        external_url = _http_url(external_url, "sign_in.external_url")
        if urlsplit(external_url).path not in ("", "/"):
            raise ConfigError("sign_in.external_url: scheme and host only, no path")
    groups_claim = reader.get("groups_claim", str, "groups")
    algorithms = _algorithms(reader)
    leeway = reader.get("leeway", float, 30.0)
    if not 0 <= leeway <= 300:
        raise ConfigError("sign_in.leeway: must be 0-300 seconds")
    reader.done()
    return SignInConfig(
        issuer, client_id, secret or None, scopes, external_url, groups_claim, algorithms, leeway
    )


# A cookie name as the session's (RFC 6265 token characters the gateway reads back).
_COOKIE_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _check_cookie_name(name: str, secure: bool) -> None:
    """session.cookie_name: ASCII letters, digits, `_` and `-` (the gateway reads
    back no other: `jéton` was accepted and never found again), naming something
    past a `__Host-` written in (`__Host-` alone made every cookie starting with
    `_` the gateway's), and a prefix only as browsers take it: `__Host-` (any
    other case, or `__Secure-`, is a name a browser refuses or reads otherwise)
    with Secure cookies, as a browser sets no `__Host-` cookie without it."""
    if not _COOKIE_NAME.fullmatch(name):
        raise ConfigError("session.cookie_name: ASCII letters, digits, '_' and '-' only")
    bare = name.removeprefix("__Host-")
    if bare.lower().startswith(("__host-", "__secure-")):
        raise ConfigError(
            f"session.cookie_name: {name!r}: a cookie prefix is written '__Host-' (the "
            "gateway adds it itself when session.secure is true: leave it out)"
        )
    if not bare.strip("_-"):
        raise ConfigError(f"session.cookie_name: {name!r} names no cookie past its prefix")
    if bare != name and not secure:
        raise ConfigError(
            f"session.cookie_name: {name!r} needs session.secure: true (a browser sets "
            "no __Host- cookie without Secure, so no one could sign in)"
        )


def _session(data: dict[str, Any], base_dir: Path, needed: bool) -> SessionConfig:
    reader = _Reader(data, "session")
    key_files = tuple(
        path for path in (_path(base_dir, name) for name in reader.strings("key_files"))
        if path is not None
    )  # fmt: skip
    if needed and not key_files:
        raise ConfigError(
            "session.key_files: required with sign_in (create a key: "
            "head -c 32 /dev/urandom | base64 > session.key)"
        )
    for index, path in enumerate(key_files):
        if not path.is_file():
            raise ConfigError(f"session.key_files[{index}]: no such file {path}")
    name = reader.get("cookie_name", str, "portcullis_session")
    secure = reader.get("secure", bool, True)
    _check_cookie_name(name, secure)
    lifetime = reader.get("lifetime", int, 43200)
    if not 60 <= lifetime <= 30 * 86400:
        raise ConfigError("session.lifetime: must be 60 s to 30 days (in seconds)")
    margin = reader.get("refresh_margin", int, 60)
    if not 0 <= margin < lifetime:
        raise ConfigError("session.refresh_margin: must be 0 or more and under lifetime")
    reader.done()
    return SessionConfig(key_files, name, secure, lifetime, margin)
