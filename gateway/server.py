"""The gateway's aiohttp application: the request path, in order, and its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import signal
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from gateway.assertion import HEADER as ASSERTION_HEADER
from gateway.assertion import JWKS_PATH, AssertionSigner, load_or_create_key
from gateway.audit.chain import DECISION_PATH, REFUSAL_PATH, SHADOW_PATH, SIGN_IN_EVENT_PATH
from gateway.audit.durability import Pending
from gateway.audit.redaction import holds_jwt
from gateway.config import GatewayConfig, Route, client_cas, spiffe_trust_domains
from gateway.forward import REVOKED, UNLOGGED, Forwarder, UpstreamError, is_websocket
from gateway.identity import ANONYMOUS, Identity, TokenRejected, TokenVerifier
from gateway.jwks import JwksCache
from gateway.limits import ConcurrencyLimiter, LimitReached, answer_and_close, identity_key
from gateway.metrics import Metrics
from gateway.mtls.cas import ClientCas, names_of_several_keys
from gateway.mtls.subject import (
    CertificateRejected,
    certificate_identity,
    client_certificate,
    envoy_principal,
    peer_certificate,
)
from gateway.operations import Operations
from gateway.own_pages import REFUSED, OwnPages
from gateway.policy import failure
from gateway.policy.decision import (
    Decision,
    DecisionIds,
    decide,
    decision_input,
    deny,
    refusal_input,
    sign_in_input,
    unparsed_input,
)
from gateway.policy.memo import DecisionMemo
from gateway.policy.reload import PolicyHolder
from gateway.policy.shadow import ShadowPolicy
from gateway.router import application
from gateway.routes import RouteTable
from gateway.screening.expect import close_if_body_kept, decide_first, expectation_refusal
from gateway.screening.headers import Refusal as ScreenRefusal
from gateway.screening.headers import parser_limits, screen
from gateway.screening.methods import method_refusal
from gateway.screening.paths import NormalizedPath, PathRejected, normalize, query_overflow
from gateway.screening.websocket import VERSION as WEBSOCKET_VERSION
from gateway.screening.websocket import cross_origin_refusal, handshake_refusal
from gateway.shared.check import Refusal
from gateway.shared.revocation import longest_token_life, trusted_issuers
from gateway.shared.state import REMEMBER_ADDRESS, SIGNALS, SharedState
from gateway.shared.third_party import LABEL as NOT_COUNTED
from gateway.shared.third_party import another_sites_request
from gateway.signin.flow import BrowserSignIn
from gateway.transport_security import TransportSecurity

if TYPE_CHECKING:
    from gateway.audit.durability import Durability
    from gateway.audit.shipping.supervisor import ShippingProcess, SinkHandle
    from gateway.audit.writer import DecisionLog

log = logging.getLogger("portcullis.gateway")
GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway")
MAX_REQUEST_ID = 200


class Gateway:
    """State of one gateway process: routes, verifier, policy, log, upstream pools."""

    def __init__(self, config: GatewayConfig, *, instance_id: str | None = None) -> None:
        self.config = config
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self.metrics = Metrics()
        source = config.policy.source
        if not source.startswith(("http://", "https://")) and not Path(source).is_absolute():
            source = str(config.base_dir / source)
        self.policy = PolicyHolder(
            source, timeout_ms=config.policy.timeout_ms, metrics=self.metrics
        )
        self.shadow = self._shadow_policy(config)
        self._reloads: set[asyncio.Future[bool]] = set()  # SIGHUP reloads in flight
        self.signer = AssertionSigner(
            load_or_create_key(config.assertion.key_file),
            issuer=config.assertion.issuer,
            ttl=config.assertion.ttl,
        )
        # Revocation, rate limits, lockouts and risk signals in Redis: gateway/shared/.
        self.shared = _shared_state(config, self.instance_id, self.metrics)
        # Browser sign-in (OIDC) and its encrypted session cookie: gateway/signin/.
        self.sign_in = (
            BrowserSignIn(config, self.refuse, shared=self.shared, record=self.record_sign_in)
            if config.sign_in is not None
            else None
        )
        # The scheme browsers use to reach the gateway (a TLS proxy in front makes
        # the connection's own http): what a page of its own names in Origin.
        external = config.sign_in.external_url if config.sign_in is not None else None
        self.browser_scheme = urlsplit(external).scheme if external else None
        # build_app's, when hsts_max_age is set; the runner's connections use it too.
        self.transport_security: TransportSecurity | None = None
        self.forwarder = Forwarder(
            limits=config.limits,
            metrics=self.metrics,
            strip_cookie=self.sign_in.owns_cookie if self.sign_in else None,
            cookie_mark=self.sign_in.cookies.mark if self.sign_in else "",
        )
        self.limiter = ConcurrencyLimiter(config.limits)
        # Which of client_ca's CAs issued a client certificate: its identity's issuer.
        cas = client_cas(config.listeners)
        self.client_cas = ClientCas(cas)
        # Which of them may issue each bound SPIFFE trust domain's IDs.
        self.trust_domains = spiffe_trust_domains(config.listeners)
        for name in names_of_several_keys(cas):
            log.warning(
                "client_ca holds several keys named %r: their client certificates are one "
                "issuer (a CA renewed under its name); if they are different CAs, each "
                "one's services share the other's lockouts and limits: trust only one",
                name,
            )
        # Which app a request is for: gateway/routes.py.
        self.route_table = RouteTable(config.routes, self.policy)
        self.verifier: TokenVerifier | None = None
        self.decision_log: DecisionLog | None = None
        # decision_log.durability and .sinks (gateway/audit/durability.py, shipping/).
        self.durability: Durability | None = None
        self.shipping: ShippingProcess | None = None
        self.shippers: list[SinkHandle] = []
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ids = DecisionIds()
        # gateway/policy/memo.py: allows reused while the policy can't tell requests
        # apart; one memo per engine, none when its policy doesn't opt in.
        self._memo: DecisionMemo | None = None
        self._memo_engine: object = None

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, app: web.Application) -> None:
        if not self.config.auth:
            log.warning("auth: false: NO authentication and NO policy; a bare proxy for benchmarks")
        logged = self.config.decision_log.path is not None
        if self.config.assertion.key_file is None and (self.config.auth or logged):
            log.warning(
                "assertion.key_file not set: signing with a key made at start and kept in "
                "memory: no other process has it and a restart replaces it%s",
                ", so the decision log can't be verified once this process exits" if logged else "",
            )
        if not await self.policy.reload("start"):
            raise RuntimeError(self._policy_failed())
        self.route_table.settle(auth=self.config.auth)
        # The log first: a path that can't be written stops the start before
        # anything else is opened.
        if self.config.decision_log.path is not None:
            from gateway.audit.redaction import Redactor
            from gateway.audit.writer import DecisionLog, DecisionLogError

            self.decision_log = DecisionLog(
                self.config.decision_log.path,
                self.signer.key,
                key_id=self.signer.jwk["kid"],
                sign_interval=self.config.decision_log.sign_interval,
                redactor=Redactor.from_config(self.config.decision_log),
                labels={"id": self.instance_id},
                name=self.config.decision_log.log_name(),
                keep_name=self.config.decision_log.name is None,
            )
            try:
                await self.decision_log.start()
            except DecisionLogError as error:
                self.decision_log = None
                raise RuntimeError(str(error)) from None
            await self._start_shipping(self.decision_log)
        if self.shared is not None:
            await self.shared.start()
        self._session = aiohttp.ClientSession()
        issuers = {}
        for issuer in self.config.issuers:
            cache = JwksCache(issuer, self._session, on_refresh=self.metrics.jwks_refreshed)
            issuers[issuer.issuer] = (issuer, cache)
            self._tasks.append(asyncio.ensure_future(cache.refresh()))
        self.verifier = TokenVerifier(issuers)
        if self.sign_in is not None:
            self._tasks.append(self.sign_in.start(self._session, self.policy.catalogue))
        if self.config.policy.watch:
            self._tasks.append(
                asyncio.ensure_future(self.policy.watch(self.config.policy.poll_interval))
            )
        if self.shadow is not None:
            self.shadow.start()  # its own process; never fails or delays the start
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, self._sighup)
            # Like nginx: SIGUSR1 reopens the log file after logrotate moved it.
            if self.decision_log is not None:
                loop.add_signal_handler(signal.SIGUSR1, self.decision_log.reopen)

    async def stop(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.forwarder.close()
        if self._session is not None:
            await self._session.close()
        if self.shared is not None:
            await self.shared.close()
        if self.shadow is not None:
            await self.shadow.close()  # before the log: its last divergences are logged
        if self.decision_log is not None:
            await self.decision_log.close()
        # After the log's close: its last signature is shipped too.
        if self.shipping is not None:
            await self.shipping.stop(5.0)
        if self.policy.engine is not None:
            await self.policy.engine.close()

    def _policy_failed(self) -> str:
        message = f"policy {self.policy.source} failed to load:\n{self.policy.last_error}"
        source = self.config.policy.source
        if not source.startswith(("http://", "https://")) and not Path(source).is_absolute():
            message += (
                f"\n(policy.source {source!r} is read from the config file's directory: "
                f"{Path(self.policy.source).absolute()})"
            )
        return message

    # --- the request path --------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        app = "-"
        status = 500
        try:
            response, app = await self._handle(request)
            if self.durability is not None:  # sync: answer once the event is on disk
                response = await self.durability.hold(response)
            close_if_body_kept(request, response)
            status = response.status
            return response
        finally:
            self.metrics.request_done(app, status, time.perf_counter() - started)

    async def _handle(self, request: web.Request) -> tuple[web.StreamResponse, str]:
        screened = screen(request.raw_headers, request.headers.get("Host"), self.config.limits)
        if screened is None:
            screened = expectation_refusal(request) or method_refusal(request.method)
        if screened is not None:
            return self.refuse(request, *screened), "-"
        try:
            path = normalize(request.raw_path)
        except PathRejected as error:
            return self.refuse(request, 400, "path_rejected", str(error)), "-"
        # Before routing and the policy: the event logs the target shortened, and
        # no parsed_query is built for it.
        overflow = query_overflow(path.query, self.config.limits.max_query_params)
        if overflow is not None:
            return self.refuse(request, 400, "too_many_query_params", overflow), "-"
        if self.sign_in is not None:  # its cookies are read, and cleared, one by one
            cookies = request.headers.getall("Cookie", ())
            crowded = self.sign_in.cookies.crowding(cookies, self.config.limits.max_session_cookies)
            if crowded is not None:
                return self.refuse(request, 400, "too_many_session_cookies", crowded), "-"
        route = self.route_table.match(request.host, path.routing_path)
        if route is None:
            return self.refuse(request, 404, "no_route", "no route for this path", path=path), "-"
        if path.has_params and not route.allow_path_params:
            reason = "';' path parameters in path (the route does not set path_params: allow)"
            return self.refuse(request, 400, "path_rejected", reason, route=route), route.app
        kind = "websocket" if is_websocket(request) else "request"
        if kind == "websocket":
            refused = handshake_refusal(request)
            if refused is not None:
                headers = (
                    {"Sec-WebSocket-Version": WEBSOCKET_VERSION} if refused.status == 426 else None
                )
                return self.refuse(
                    request, *refused, route=route, path=path, headers=headers
                ), route.app
        decision_id = self._ids.next()
        request_id = _request_id(request, decision_id)
        identity = ANONYMOUS
        if self.config.auth:
            try:
                identity = await self._identity(request)
            except TokenRejected as rejected:
                # Refused before any policy is asked: a gateway refusal, like a bad path.
                if self.shared is not None:  # guessing counts against the address's limit
                    refusal = await self.shared.check_invalid_token(request, route.app)
                    if refusal is not None:
                        return self._shared_refusal(
                            request, route, path, ANONYMOUS, refusal
                        ), route.app
                decision = deny(decision_id, 401, f"gateway.invalid_token: {rejected}")
                document = decision_input(request, path, route, ANONYMOUS, request_id)
                self._log(decision, document, route, path=REFUSAL_PATH)
                return _unauthorized(decision, str(rejected)), route.app
            except CertificateRejected as rejected:
                # Verified by a CA we trust, but naming no one subject (two common
                # names, or none): refused before any policy is asked, as a bad token is.
                return self.refuse(
                    request, 401, "invalid_client_certificate", str(rejected), route=route,
                    path=path, headers={"WWW-Authenticate": 'Bearer realm="portcullis"'},
                ), route.app  # fmt: skip
        if kind == "websocket":
            refused = self._origin_refusal(request, route, identity)
            if refused is not None:
                return self.refuse(
                    request, *refused, route=route, path=path, identity=identity
                ), route.app
        # The identity's slot is taken before the shared check and the decision: one
        # identity holds at most its limit of Redis calls, and a request past the
        # limit is one refusal event, never an allow that then isn't served.
        try:
            slot = self.limiter.acquire(route.app, kind, identity_key(identity, request))
        except LimitReached as error:
            self.metrics.rate_limited.labels(route.app, kind).inc()
            return self.refuse(
                request, 429, "rate_limited", f"{error} ({route.app})", route=route, path=path,
                identity=identity, headers={"Retry-After": "1"},
            ), route.app  # fmt: skip
        with slot:
            if self.config.auth and self.shared is not None:
                # The request's one Redis round trip: revocation, lockout, rate
                # limit and the policy's input.signals.
                verdict = await self.shared.check(request, route.app, identity)
                if verdict.refusal is not None:
                    return self._shared_refusal(
                        request, route, path, identity, verdict.refusal
                    ), route.app
            response = await self._decide_and_forward(
                request, route, path, identity, decision_id, request_id, kind
            )
        return response, route.app

    def _origin_refusal(
        self, request: web.Request, route: Route, identity: Identity
    ) -> ScreenRefusal | None:
        """Why a WebSocket (its handshake, or its recheck) may not use the browser's
        credential (gateway/screening/websocket.py): pages of the gateway's own
        origin pass, and those of the app's `allowed_origins` in the live catalogue
        (none when the policy's data can't be read here, an OPA server's)."""
        app = self.policy.catalogue().get(route.app)
        origins = app.get("allowed_origins") if isinstance(app, dict) else None
        allowed = [o for o in origins if isinstance(o, str)] if isinstance(origins, list) else []
        scheme = self.browser_scheme or request.scheme
        return cross_origin_refusal(request, identity, scheme, allowed)

    async def _decide_and_forward(
        self,
        request: web.Request,
        route: Route,
        path: NormalizedPath,
        identity: Identity,
        decision_id: str,
        request_id: str,
        kind: str,
    ) -> web.StreamResponse:
        if self.config.auth:
            document = decision_input(
                request, path, route, identity, request_id, signals=request.get(SIGNALS)
            )
            decision = await self._decide(document, decision_id)
            self.metrics.decision_seconds.observe(decision.eval_ns / 1e9)
            # A deny another site's page made the browser run into is not counted
            # (lockout, recent_denies); its event says so (gateway/shared/third_party.py).
            not_counted = None
            if self.shared is not None and not decision.allow and decision.step_up is None:
                not_counted = another_sites_request(request, identity)
            labels = {NOT_COUNTED: not_counted} if not_counted else None
            error = self._failure(decision, document)
            self._log(decision, document, route, labels=labels, error=error)
            if self.shadow is not None:
                self.shadow.submit(document, decision, route.app)
            if self.shared is not None:
                self.shared.after_decision(
                    request, route.app, identity, allowed=decision.allow,
                    step_up=decision.step_up is not None, decision_id=decision.decision_id,
                    remember_address=request.get(REMEMBER_ADDRESS, False),
                    count_deny=not_counted is None,
                )  # fmt: skip
            if decision.error and error is not None:
                # The event's masked message: the server log is shipped too, and a
                # runtime error may quote the request's secrets.
                log.error("decision %s failed closed: %s", decision.decision_id, error["message"])
            if not decision.allow:
                if self.sign_in is not None and self.sign_in.wants_page(request, identity):
                    return await self.sign_in.denied(
                        request, decision, identity, path.path_with_query
                    )
                if decision.http_status == 401:
                    return _unauthorized(decision, None)
                return _denied(decision)
            add = dict(decision.headers)
            add[ASSERTION_HEADER] = self.signer.sign(identity, route.app)
            if self.durability is not None and not await self.durability.wait():
                return _json(503, {"error": "decision_log_unavailable", "reason": "not logged"})
            holds_until = _holds_until(decision)
        else:
            add = {}
            holds_until = None
        recheck = None
        if self.config.auth and kind == "websocket":
            recheck = functools.partial(self._recheck, request, path, route, identity, request_id)
        try:
            return await self.forwarder.forward(
                request, route, path, add, expires_at=identity.expires_at, recheck=recheck,
                recheck_by=holds_until,
            )  # fmt: skip
        except UpstreamError as error:
            if error.rule is None:
                return _json(error.status, {"error": "bad_gateway", "reason": str(error)})
            response = self.refuse(
                request, error.status, error.rule, str(error), route=route, path=path,
                identity=identity,
            )  # fmt: skip
            await self.answer_and_close(request, response)
            return response

    async def _decide(self, document: dict[str, Any], decision_id: str) -> Decision:
        """The policy's decision, or a remembered allow it can't tell apart from this one."""
        engine = self.policy.engine
        if engine is not self._memo_engine:
            self._memo_engine = engine
            self._memo = DecisionMemo.for_engine(engine)
        if self._memo is None:
            return await decide(engine, document, decision_id)
        decision = await self._memo.decide(document, decision_id)
        if decision.memo_hit:
            self.metrics.memo_hits.inc()
        return decision

    async def answer_and_close(self, request: web.Request, response: web.Response) -> None:
        """Send a refusal and close the connection, once its event is durable (sync)."""
        if self.durability is not None and not await self.durability.wait():
            response = _json(503, {"error": "decision_log_unavailable", "reason": "not logged"})
        await answer_and_close(request, response)

    async def _recheck(
        self,
        request: web.Request,
        path: NormalizedPath,
        route: Route,
        identity: Identity,
        request_id: str,
    ) -> tuple[str | None, float | None]:
        """Decide again for a long-lived WebSocket (a policy reload, an MFA max_age):
        logged like any decision. None keeps it open (with when this allow stops
        holding as time passes, to decide again then); REVOKED (a deny, a failed
        evaluation, a revoked session or token, an Origin no longer allowed)
        closes it, and so does UNLOGGED: in sync durability an allow not on disk
        in time, as a request would get a 503 (its refusal is logged, naming the
        recheck's decision). A bearer token is verified again: one whose signing
        key the issuer withdrew (it leaked) is refused on every request, and ends
        the sockets it opened too."""
        if identity.method == "bearer":
            try:
                await self._identity(request)
            except (TokenRejected, CertificateRejected) as rejected:
                code = (
                    "invalid_token"
                    if isinstance(rejected, TokenRejected)
                    else "invalid_client_certificate"
                )
                decision = deny(self._ids.next(), 401, f"gateway.{code}: {rejected}")
                document = decision_input(request, path, route, ANONYMOUS, request_id)
                self._log(decision, document, route, path=REFUSAL_PATH)
                return REVOKED, None
        # The Origin check again, on the live catalogue: an origin taken out of the
        # app's allowed_origins (a front end retired, or found compromised) ends the
        # sockets its pages hold, as it refuses new ones.
        refused = self._origin_refusal(request, route, identity)
        if refused is not None:
            self.refuse(request, *refused, route=route, path=path, identity=identity)
            return REVOKED, None
        if self.shared is not None:
            verdict = await self.shared.check(request, route.app, identity)
            if verdict.refusal is not None:
                self._shared_refusal(request, route, path, identity, verdict.refusal)
                return REVOKED, None
        document = decision_input(
            request, path, route, identity, request_id, signals=request.get(SIGNALS)
        )
        decision = await decide(self.policy.engine, document, self._ids.next())
        self._log(decision, document, route)
        if self.shadow is not None:
            self.shadow.submit(document, decision, route.app)
        if not decision.allow:
            return REVOKED, None
        if self.durability is not None and not await self.durability.wait():
            return UNLOGGED, None
        return None, _holds_until(decision)

    async def _identity(self, request: web.Request) -> Identity:
        """Who sent the request: TokenRejected for a bad bearer token,
        CertificateRejected for a client certificate that names no one subject."""
        peer = peer_certificate(request.transport)
        headers = request.headers.getall("Authorization", [])
        if len(headers) > 1:
            # A singleton field (RFC 9110 11.6.2): which one a backend reads on a
            # pass_authorization route is its own choice (PHP and CGI keep the last,
            # gunicorn joins them), so deciding on one would let another through.
            raise TokenRejected("Authorization given more than once")
        header = headers[0] if headers else None
        if header is None:
            if not peer and self.sign_in is not None:
                return await self.sign_in.identity(request)
            return self._certificate_identity(request, peer) if peer else ANONYMOUS
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenRejected("Authorization must be 'Bearer <token>'")
        assert self.verifier is not None
        identity = await self.verifier.verify(token.strip())
        if not peer:
            return identity
        # The token is the identity; the certificate is source.principal, which a
        # ported rule trusts as Envoy's: only from a CA known to have issued it, and
        # one that may issue its trust domain's IDs.
        issuer = self.client_cas.issuer(request.transport)
        principal = None
        if issuer is not None:
            self.trust_domains.check(peer, issuer)
            try:
                principal = envoy_principal(peer)
            except CertificateRejected as rejected:
                raise CertificateRejected(f"{rejected}; issued by {issuer}") from None
        return dataclasses.replace(
            identity, client_cert=client_certificate(peer), principal=principal
        )

    def _certificate_identity(self, request: web.Request, peer: dict[str, Any]) -> Identity:
        issuer = self.client_cas.issuer(request.transport)
        if issuer is None:
            # Verified by the handshake, but no CA of client_ca is seen to have issued it
            # (a resumed TLS session, which keeps no chain, of a certificate an
            # intermediate issued, this process no longer remembering it): unscoped,
            # it would be every CA's service of that name.
            certificate = client_certificate(peer)
            log.warning(
                "client certificate %s (issuer %s) not identified: which CA of client_ca "
                "issued it is not known on this connection",
                certificate["subject"],
                certificate["issuer"],
            )
            return ANONYMOUS
        identity = certificate_identity(peer, issuer)
        self.trust_domains.check(peer, issuer)
        return identity

    # --- shadow mode ------------------------------------------------------------------

    def _shadow_policy(self, config: GatewayConfig) -> ShadowPolicy | None:
        source = config.policy.shadow
        if source is None:
            return None
        if not source.startswith(("http://", "https://")) and not Path(source).is_absolute():
            source = str(config.base_dir / source)
        return ShadowPolicy(
            source,
            timeout_ms=config.policy.timeout_ms,
            poll_interval=config.policy.poll_interval if config.policy.watch else None,
            metrics=self.metrics,
            on_divergence=self._shadow_diverged,
        )

    def _sighup(self) -> None:
        # Reloads run one at a time: with one running and one waiting, the waiting
        # one reads the files after this signal anyway. A storm of signals (a
        # config reloader retrying) costs two loads, not a child probe each.
        if self.shadow is not None:
            self.shadow.reload()
        if len(self._reloads) >= 2:
            return
        reload = asyncio.ensure_future(self.policy.reload("SIGHUP"))
        self._reloads.add(reload)
        reload.add_done_callback(self._reloads.discard)

    def _shadow_diverged(self, message: dict[str, Any]) -> None:
        """Log a divergence the shadow process reported: both results, the live
        decision's id, the shadow's revision; never enforced."""
        if self.decision_log is None:
            return
        assert self.shadow is not None
        app = str(message.get("app", "-"))
        document = message.get("input") or {}
        # The shadow's failure is logged as a live one is: masked, bounded, inert.
        error, why = None, message.get("error")
        if why is not None:
            code = message.get("error_code") or failure.INTERNAL
            error = failure.logged_error(str(code), str(why), document)
        self.decision_log.record(
            decision_id=self._ids.next(),
            input=document,
            result={
                "divergence": message.get("kind"),
                "live": message.get("live"),
                "shadow": message.get("shadow"),
                "shadow_error": error["message"] if error is not None else None,
            },
            revision=str(message.get("revision", "")),
            metrics={"timer_rego_query_eval_ns": int(message.get("eval_ns") or 0)},
            labels={
                "app": app,
                "shadow": True,
                "shadow_policy": self.config.policy.shadow,
                "live_decision_id": str(message.get("id", "")),
            },
            path=SHADOW_PATH,
            error=error,
        )

    def _log(
        self,
        decision: Decision,
        document: dict[str, Any],
        route: Route | None,
        *,
        path: str = DECISION_PATH,
        labels: dict[str, str] | None = None,
        held: bool = True,
        error: dict[str, str] | None = None,
    ) -> None:
        """Record a decision event; `held`: in sync durability, the request's answer
        waits for it (not for a refusal recorded after the answer). `error`: the
        decision's `_failure`, when the caller has it already."""
        app = route.app if route is not None else "-"
        result = "allow" if decision.allow else "deny"
        self.metrics.decided(app, result)
        if self.decision_log is None:
            return
        engine = self.policy.engine
        metrics = {"timer_rego_query_eval_ns": decision.eval_ns}
        if decision.memo_hit:
            metrics["decision_memo_hit"] = 1
        if error is None:
            error = self._failure(decision, document)
        ticket = self.decision_log.record(
            decision_id=decision.decision_id,
            input=document,
            result=decision.result(),
            revision=engine.revision if engine is not None else "",
            metrics=metrics,
            labels={"app": app, **(labels or {})},
            path=path,
            error=error,
        )
        if self.durability is not None and held:
            self.durability.note(Pending(ticket, decision.decision_id, document, route), app)

    @staticmethod
    def _failure(decision: Decision, document: dict[str, Any]) -> dict[str, str] | None:
        """Why ``decision`` failed closed, masked, as its event (and the server log)
        says it (gateway/policy/failure.py); None when it did not fail."""
        if decision.error is None:
            return None
        code = decision.error_code or failure.INTERNAL
        return failure.logged_error(code, decision.error, document)

    def _not_durable(self, pending: Pending, reason: str) -> None:
        """The request of a decision not on disk in time was answered 503 instead:
        logged as a refusal naming that decision (never waited for in turn)."""
        decision = deny(self._ids.next(), 503, f"gateway.decision_log_unavailable: {reason}")
        labels = {"overrides_decision_id": pending.decision_id}
        self._log(
            decision, pending.document, pending.route, path=REFUSAL_PATH, labels=labels, held=False
        )

    async def _start_shipping(self, decision_log: DecisionLog) -> None:
        from gateway.audit.durability import Durability
        from gateway.audit.shipping.cursor import CursorError
        from gateway.audit.shipping.metrics import ShippingCollector
        from gateway.audit.shipping.supervisor import ShippingProcess

        settings = self.config.decision_log
        self.durability = Durability.configured(
            decision_log,
            settings.durability,
            settings.durability_timeout,
            self.policy,
            self._not_durable,
        )
        if not settings.sinks:
            return
        shipping = ShippingProcess(
            settings.sinks, decision_log.path, lambda: decision_log.seq, settings.shipping_nice
        )
        try:
            await shipping.start()
        except CursorError as error:
            await decision_log.close()
            self.decision_log = None
            raise RuntimeError(str(error)) from None
        self.shipping, self.shippers = shipping, shipping.handles
        self.metrics.registry.register(ShippingCollector(self.shippers))

    def _shared_refusal(
        self,
        request: web.Request,
        route: Route,
        path: NormalizedPath,
        identity: Identity,
        refusal: Refusal,
    ) -> web.Response:
        """A logged refusal on the shared state (revoked, locked out, rate limited,
        Redis unavailable); a browser gets a page, and a revoked session its cookie cleared."""
        headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else None
        response = self.refuse(
            request, refusal.status, refusal.rule, refusal.reason, route=route, path=path,
            identity=identity, headers=headers,
        )  # fmt: skip
        if self.sign_in is not None:
            return self.sign_in.refused(request, response, refusal, identity)
        if refusal.status == 401:
            response.headers["WWW-Authenticate"] = (
                f'Bearer realm="portcullis", error="invalid_token", '
                f'error_description="{_description(refusal.reason)}"'
            )
        return response

    def record_sign_in(
        self,
        request: web.Request,
        identity: Identity | None,
        status: int,
        what: str,
        step_up: dict[str, Any] | None,
    ) -> None:
        """A browser sign-in (or a failed one) as a decision-log event with path
        ``gateway/signin``, which the sinks map to an OCSF Authentication. Its
        path names the callback's parameters without their values (sign_in_input)."""
        allowed = identity is not None and status < 400
        decision = Decision(self._ids.next(), allowed, status, [f"gateway.sign_in: {what}"])
        decision.step_up = step_up
        request_id = _request_id(request, decision.decision_id)
        document = sign_in_input(request, identity or ANONYMOUS, request_id)
        self._log(decision, document, None, path=SIGN_IN_EVENT_PATH)

    def refuse(
        self,
        request: web.Request,
        status: int,
        rule: str,
        reason: str,
        *,
        route: Route | None = None,
        path: NormalizedPath | None = None,
        identity: Identity = ANONYMOUS,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """Refuse a request at the gateway, before or instead of the policy, and log
        it as a decision event (path ``gateway``, reason ``gateway.<rule>: ...``) so a
        SIEM sees probing too. The body is ``{"error": rule, "reason": reason}``."""
        request[REFUSED] = True  # counted in requests_total off the proxied route (OwnPages)
        decision = deny(self._ids.next(), status, f"gateway.{rule}: {reason}")
        request_id = _request_id(request, decision.decision_id)
        document = refusal_input(request, route, identity, request_id, path)
        self._log(decision, document, route, path=REFUSAL_PATH)
        body = {"error": rule, "reason": reason, "decision_id": decision.decision_id}
        response = _json(status, body)
        if headers:
            response.headers.update(headers)
        return response

    def refuse_unparsed(self, peer: Any, status: int, reason: str, head: bytes) -> None:
        """Log a request refused before it was one: aiohttp's parser rejected it (a
        400), or its headers never ended within the cap (a 431). What is known is
        the peer, what was wrong (never the request's bytes) and the start of the
        refused request, or nothing of it if where it began isn't known
        (gateway/limits.py)."""
        decision = deny(self._ids.next(), status, f"gateway.bad_request: {reason}")
        if status == 431:
            decision.reasons = [f"gateway.headers_too_large: {reason}"]
        document = unparsed_input(peer, head, decision.decision_id)
        self._log(decision, document, None, path=REFUSAL_PATH)
        # A request all the same: counted (not timed, no handler ran) like other refusals.
        self.metrics.requests.inc("-", status)
        address = peer[0] if isinstance(peer, tuple) else "?"
        log.info("refused a request from %s before it was parsed: %s", address, reason)


def _shared_state(config: GatewayConfig, replica: str, metrics: Metrics) -> SharedState | None:
    if config.shared_state is None or not config.auth:
        return None
    token_lifetime = longest_token_life(config.issuers)
    return SharedState(
        config.shared_state,
        replica=replica,
        session_lifetime=config.session.lifetime,
        token_lifetime=token_lifetime,
        registry=metrics.registry,
        issuers=trusted_issuers(config),
    )


def _holds_until(decision: Decision) -> float | None:
    """When an allow stops holding as time passes (its `valid_until_ns`, a step-up's
    max_age), in epoch seconds; None when the policy answered none or null."""
    until = decision.valid_until
    if isinstance(until, int | float) and not isinstance(until, bool):
        return until / 1e9
    return None


def _request_id(request: web.Request, decision_id: str) -> str:
    """The client's X-Request-Id when it is a sane correlation id (it is logged with
    every decision), else the decision id. A JWT is no correlation id: a client
    or a proxy that puts a token there would have it in every event (the log
    masks it too, as a backstop: it would correlate nothing there)."""
    given = request.headers.get("X-Request-Id")
    if given and len(given) <= MAX_REQUEST_ID and given.isprintable() and not holds_jwt(given):
        return given
    return decision_id


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


def _denied(decision: Decision) -> web.Response:
    body: dict[str, Any] = {"decision_id": decision.decision_id, "reasons": decision.reasons}
    if decision.step_up is not None:
        body["step_up"] = decision.step_up
    return _json(decision.http_status, body)


def _unauthorized(decision: Decision, token_error: str | None) -> web.Response:
    response = _denied(decision)
    response.headers["WWW-Authenticate"] = (
        'Bearer realm="portcullis"'
        if token_error is None
        else f'Bearer realm="portcullis", error="invalid_token", '
        f'error_description="{_description(token_error)}"'
    )
    return response


def _description(reason: str) -> str:
    # RFC 6750 3: error_description is printable ASCII without '"' and '\\'; the
    # reason can quote attacker-chosen token content.
    text = reason.replace('"', "'")
    return "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in text)[:300]


def build_app(config: GatewayConfig, *, instance_id: str | None = None) -> web.Application:
    gateway = Gateway(config, instance_id=instance_id)
    # Request bodies pass through byte for byte: aiohttp would inflate a gzip body
    # while its Content-Encoding and Content-Length still reached the upstream.
    handler_args = {"auto_decompress": False, **parser_limits(config.limits)}
    # The gateway's own pages get the limits proxied requests have (gateway/own_pages.py).
    own_pages = OwnPages(gateway)
    app = application(client_max_size=0, handler_args=handler_args, middlewares=[own_pages])
    app[GATEWAY_KEY] = gateway
    app.on_startup.append(gateway.start)
    app.on_cleanup.append(gateway.stop)
    # Only where a browser may come over HTTPS: a signal costs every answer a call.
    https = gateway.browser_scheme == "https" or any(item.tls for item in config.listeners)
    if config.hsts_max_age is not None and https:
        security = TransportSecurity(config.hsts_max_age, gateway.browser_scheme)
        app.on_response_prepare.append(security.on_response_prepare)
        gateway.transport_security = security  # for the answers of the connection itself
    # Every route's Expect is the gateway's to answer, once it has decided
    # (gateway/screening/expect.py).
    operations = Operations(gateway)
    app.router.add_get("/healthz", operations.healthz, expect_handler=decide_first)
    app.router.add_get("/readyz", operations.readyz, expect_handler=decide_first)
    # No /metrics here: it is routed like any path (a logged 404 unless an app
    # owns it); it is served on the admin listener only.
    app.router.add_get(JWKS_PATH, operations.jwks, expect_handler=decide_first)
    if gateway.sign_in is not None:
        gateway.sign_in.add_routes(app)
    # Every path, a line break (`%0A`, decoded before routing) included: `.*` stops
    # at one, and such a path was refused as no path at all instead of for its byte.
    own_pages.proxy_route = app.router.add_route(
        "*", "/{tail:[\\s\\S]*}", gateway.handle, expect_handler=decide_first
    )
    return app
