"""`portcullis gateway` and `portcullis demo` (with `demo token`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

DEFAULT_STATE = ".portcullis-demo"


def register(commands: Any) -> None:
    gateway = commands.add_parser("gateway", help="run the access gateway")
    gateway.add_argument("--config", required=True, help="gateway YAML config file")
    gateway.add_argument("--workers", type=int, default=1, help="processes (SO_REUSEPORT)")
    gateway.add_argument("--log-level", default="info")
    gateway.set_defaults(run=run_gateway)

    demo = commands.add_parser("demo", help="run the gateway with demo apps and a dev issuer")
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    demo.add_argument(
        "--base-port", type=int, default=9100,
        help="dev issuer on this port, demo apps on the next ones (0: any free ports)",
    )  # fmt: skip
    demo.add_argument(
        "--admin-port", type=int, default=None,
        help="admin listener (/metrics, /readyz, /audit/head) port "
        "(default 9090; any free port with --base-port 0)",
    )  # fmt: skip
    demo.add_argument("--state-dir", default=DEFAULT_STATE, help="demo keys and decision log")
    demo.add_argument(
        "--policy",
        help="policy directory (default: ./policies when the current directory has one, "
        "else the shipped set)",
    )
    demo.add_argument(
        "--shadow", metavar="POLICY",
        help="shadow mode: also decide every request with this candidate policy (a directory, "
        "bundle or OPA URL), never enforcing it; divergences go to the decision log and /metrics",
    )  # fmt: skip
    demo.add_argument(
        "--no-redis", action="store_true",
        help="no shared state, even when redis-server is installed (default: start one)",
    )  # fmt: skip
    demo.set_defaults(run=run_demo)
    actions = demo.add_subparsers(dest="demo_action", metavar="ACTION")
    token = actions.add_parser("token", help="print a JWT the running demo accepts")
    token.add_argument("--sub", required=True, help="subject (user name)")
    token.add_argument("--groups", default="", help="comma-separated groups")
    token.add_argument("--amr", default="pwd", help="comma-separated auth methods")
    token.add_argument("--acr", help="authentication context class")
    token.add_argument(
        "--auth-age", type=_age, default=0, metavar="SECONDS",
        help="seconds since sign-in, 0 or more (default 0)",
    )  # fmt: skip
    token.add_argument(
        "--ttl", type=_lifetime, default=3600, metavar="SECONDS",
        help="lifetime in seconds, 1 to 31622400 (default 3600)",
    )  # fmt: skip
    token.add_argument("--state-dir", dest="token_state_dir", default=None)
    token.add_argument("--issuer", default=None, help="issuer URL (default: the demo's)")
    token.set_defaults(run=demo_token)


# The longest max_token_lifetime an issuer may be given (366 days): a token meant
# to live longer is refused by every gateway configuration.
MAX_TOKEN_TTL = 31_622_400


def _seconds(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None


def _lifetime(text: str) -> int:
    """--ttl: a token that is born expired, or that no gateway accepts, is a usage error."""
    seconds = _seconds(text)
    if not 1 <= seconds <= MAX_TOKEN_TTL:
        raise argparse.ArgumentTypeError(
            f"{text}: must be 1 to {MAX_TOKEN_TTL} seconds (366 days); a token with "
            "--ttl 0 or less is expired when it is made"
        )
    return seconds


def _age(text: str) -> int:
    """--auth-age: a negative age would put the sign-in (auth_time) in the future."""
    seconds = _seconds(text)
    if seconds < 0:
        raise argparse.ArgumentTypeError(
            f"{text}: must be 0 or more seconds; a negative age puts the sign-in in the future"
        )
    return seconds


# The gateway's modules load only when a gateway command runs, so `portcullis
# scan` and `portcullis policy` start without them.


def run_gateway(args: argparse.Namespace) -> int:
    from gateway.assertion import settle_key_file
    from gateway.config import ConfigError, load_config
    from gateway.runner import configure_logging, run

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    try:
        config = settle_key_file(config, args.workers)
    except ConfigError as error:
        print(f"config error: {args.config}: {error}", file=sys.stderr)
        return 2
    try:
        run(config, workers=args.workers, log_level=args.log_level)
    except (RuntimeError, OSError, ValueError) as error:
        print(f"gateway failed to start: {error}", file=sys.stderr)
        return 1
    return 0


def _issuer_url(state_dir: Path, base_port: int) -> str:
    recorded = state_dir / "issuer-url"
    if recorded.exists():
        return recorded.read_text().strip()
    return f"http://127.0.0.1:{base_port}"


def demo_token(args: argparse.Namespace) -> int:
    from gateway.demo import DevIssuer

    state_dir = Path(args.token_state_dir or args.state_dir)
    if not (state_dir / "issuer-key.pem").exists():
        # A demo started from another directory, or with --state-dir, keeps its keys
        # elsewhere: say where we looked and how to point at it.
        print(
            f"{state_dir}: no demo keys in {state_dir.resolve()}; start `portcullis demo` "
            "first, or give --state-dir the directory its banner prints",
            file=sys.stderr,
        )
        return 2
    issuer = DevIssuer(state_dir, args.issuer or _issuer_url(state_dir, args.base_port))
    split = [g for g in args.groups.split(",") if g]
    amr = [m for m in args.amr.split(",") if m]
    print(
        issuer.token(
            args.sub, groups=split, amr=amr, acr=args.acr, auth_age=args.auth_age, ttl=args.ttl
        )
    )
    return 0


def run_demo(args: argparse.Namespace) -> int:
    if getattr(args, "demo_action", None) == "token":
        return demo_token(args)
    from gateway.runner import configure_logging, install_uvloop

    if args.shadow and "://" not in args.shadow and not Path(args.shadow).exists():
        print(f"--shadow {args.shadow}: no such policy directory or bundle", file=sys.stderr)
        return 2
    configure_logging("info")
    install_uvloop()
    try:
        asyncio.run(_demo(args))
    except OSError as error:
        print(f"demo failed to start: {error} (is another demo running? try --port/--base-port)",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


async def _start(app: web.Application, port: int) -> tuple[web.AppRunner, str]:
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, f"http://127.0.0.1:{bound}"


def _free_port() -> int:
    """A port free right now (the admin listener's URL must be known before it binds)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _demo(args: argparse.Namespace) -> None:
    from gateway import dev_oidc
    from gateway.config import (
        AssertionConfig,
        DecisionLogConfig,
        GatewayConfig,
        Issuer,
        Listener,
        PolicyConfig,
        Route,
    )
    from gateway.demo import AUDIENCE, DevIssuer, demo_backend
    from gateway.runner import serve
    from policy_engine import load_policy_set
    from portcullis.paths import default_policy_dir

    state_dir = Path(args.state_dir)
    policy_dir = args.policy or default_policy_dir()
    apps = load_policy_set(policy_dir).data["portcullis"]["catalogue"]["apps"]
    base = args.base_port
    issuer = DevIssuer(state_dir, "")
    issuer_runner, issuer_url = await _start(issuer.app(), base)
    issuer.issuer = issuer_url  # known once bound: --base-port 0 picks a free port
    (state_dir / "issuer-url").write_text(issuer_url)
    runners = [issuer_runner]
    gateway_url = f"http://127.0.0.1:{args.port}"
    routes = []
    for offset, (name, app) in enumerate(sorted(apps.items()), start=1):
        runner, url = await _start(demo_backend(name, gateway_url), base + offset if base else 0)
        runners.append(runner)
        routes.append(Route(name, url, app["path_prefix"]))
    # Browser sign-in through the dev OpenID provider, when node can run it.
    provider = None
    if (why_not := dev_oidc.unavailable()) is None:
        gateway_urls = [gateway_url, f"http://localhost:{args.port}"]
        provider_port = base + 10 if base else 0
        provider = await dev_oidc.start_dev_provider(state_dir, provider_port, gateway_urls)
    # Shared state (revocation, back-channel logout, rate limits, signals) in a
    # Redis of its own, when redis-server is installed.
    sign_in = provider.sign_in() if provider else None
    redis, redis_why_not = await _demo_redis(args, state_dir, issuer_url, sign_in)
    admin_port = args.admin_port if args.admin_port is not None else 9090 if base else _free_port()
    config = GatewayConfig(
        listeners=(Listener("127.0.0.1", args.port),),
        admin_listener=Listener("127.0.0.1", admin_port),
        routes=tuple(routes),
        issuers=(Issuer(issuer_url, (AUDIENCE,), jwks_url=f"{issuer_url}/jwks.json"),),
        policy=PolicyConfig(source=str(policy_dir), shadow=args.shadow),
        assertion=AssertionConfig(key_file=state_dir / "assertion-key.pem"),
        # Signed every second (a gateway's default is 10 s): a replay of the demo's
        # log right after a request has that request signed (README "Replay").
        decision_log=DecisionLogConfig(path=state_dir / "decisions.log", sign_interval=1.0),
        sign_in=sign_in,
        session=dev_oidc.session_config(state_dir),
        shared_state=_demo_shared_state(redis.url) if redis else None,
    )

    def announce(urls: list[str]) -> None:
        url = urls[0] if urls else gateway_url
        me = f"portcullis demo token --state-dir {state_dir}"
        print(
            f"""
Portcullis demo is running.
  gateway        {url}   (policy: {policy_dir})
  dev issuer     {issuer_url}
  demo apps      {", ".join(f"{r.app}={r.upstream}" for r in routes)}
  decision log   {state_dir / "decisions.log"}
  admin          http://127.0.0.1:{admin_port}   (/metrics, /readyz, /audit/head)

Get a token and call an app through the gateway:
  TOKEN=$({me} --sub alice --groups warehouse --amr pwd,otp)
  curl -H "Authorization: Bearer $TOKEN" {url}/wms/stock

  # POS refunds need a hardware key (hwk) or FIDO within 15 minutes:
  TOKEN=$({me} --sub bob --groups store --amr pwd,otp)
  curl -H "Authorization: Bearer $TOKEN" {url}/pos/refunds/1     # 403, step_up
  TOKEN=$({me} --sub bob --groups store --amr pwd,hwk)
  curl -H "Authorization: Bearer $TOKEN" {url}/pos/refunds/1     # 200

  # Analytics: reading needs no MFA, changing does:
  TOKEN=$({me} --sub carol --groups analyst --amr pwd)
  curl -H "Authorization: Bearer $TOKEN" {url}/analytics/daily                 # 200
  curl -X POST -H "Authorization: Bearer $TOKEN" {url}/analytics/daily         # 403, step_up
{_browser_help(url, provider.url if provider else None, why_not)}
{_redis_help(state_dir, redis.url if redis else None, redis_why_not)}
{_shadow_help(args.shadow, admin_port)}
Check the decision log (after Ctrl-C, which signs its end):
  portcullis audit verify {state_dir}/decisions.log --key {state_dir}/assertion-key.pem
Press Ctrl-C to stop.""",
            flush=True,
        )

    try:
        await serve(config, ready=announce)
    finally:
        if provider is not None:
            await provider.stop()
        if redis is not None:
            await redis.stop()
        for runner in runners:
            await runner.cleanup()


def _shadow_help(shadow: str | None, admin_port: int) -> str:
    if shadow is None:
        return "Shadow mode is off (--shadow candidate/ runs a candidate policy beside it)."
    return f"""Shadow mode: {shadow} decides every request too, never enforced. Where it
differs from the live policy: an event with labels.shadow in the decision log, and
  curl -s http://127.0.0.1:{admin_port}/metrics | grep portcullis_shadow_divergences_total"""


def _browser_help(url: str, provider_url: str | None, why_not: str | None) -> str:
    if provider_url is None:
        return f"""
Browser sign-in is off: {why_not}.
"""
    return f"""
Or sign in with a browser (dev OpenID provider at {provider_url}; no passwords):
  {url}/wms/            sign in as bob, tick "One-time code": WMS opens
  {url}/pos/refunds/1   stepped up: tick "Hardware security key" and the refund opens
                        (dave has no key: one round, then a page that says so)
  {url}/.portcullis/    your session, and Sign out
"""


async def _demo_redis(
    args: argparse.Namespace, state_dir: Path, issuer_url: str, sign_in: Any
) -> tuple[Any, str]:
    """Start the demo's Redis (port --base-port + 20) and write a config that
    `portcullis session` can use; (None, why) when there is none. It names the
    sign-in provider too: the shared state keys a subject with its issuer, and
    `session list` looks under the issuers the config names."""
    from gateway import dev_oidc
    from gateway.shared import dev_redis

    if args.no_redis:
        return None, "--no-redis"
    why_not = dev_redis.unavailable()
    if why_not is not None:
        return None, why_not
    redis = await dev_redis.start_dev_redis(state_dir, args.base_port + 20 if args.base_port else 0)
    import yaml

    config: dict[str, Any] = {
        "issuers": [{"issuer": issuer_url, "audiences": ["portcullis"],
                     "jwks_url": f"{issuer_url}/jwks.json"}],
        "shared_state": {"redis": {"url": redis.url}},
    }  # fmt: skip
    if sign_in is not None:
        config["sign_in"] = {"issuer": sign_in.issuer, "client_id": sign_in.client_id}
        keys = dev_oidc.session_config(state_dir).key_files
        # Relative to the config's own folder (state_dir), as the config reads them.
        home = state_dir.resolve()
        config["session"] = {"key_files": [os.path.relpath(key.resolve(), home) for key in keys]}
    (state_dir / "shared-state.yaml").write_text(
        "# For `portcullis session ... --config` against the running demo.\n"
        + yaml.safe_dump(config)
    )
    return redis, ""


def _demo_shared_state(url: str) -> Any:
    from gateway.shared.settings import RedisConfig, SharedStateConfig

    return SharedStateConfig(RedisConfig(url))


def _redis_help(state_dir: Path, redis_url: str | None, why_not: str) -> str:
    if redis_url is None:
        return f"""Shared state is off ({why_not}): sessions are per process, no revocation.
"""
    config = f"--config {state_dir}/shared-state.yaml"
    return f"""Shared state in Redis at {redis_url} (revocation, back-channel logout, rate limits):
  portcullis session list {config} --user bob
  portcullis session revoke {config} --user bob    # bob's sessions and tokens: 401
"""
