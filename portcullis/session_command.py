"""`portcullis session list|revoke|unlock`: the shared state's sessions, from any host
that reaches the gateway's Redis (the gateway's config says where it is)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any


def register(commands: Any) -> None:
    session = commands.add_parser(
        "session", help="list, revoke and unlock user sessions (needs shared_state)"
    )
    actions = session.add_subparsers(dest="session_action", required=True, metavar="ACTION")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", required=True, help="the gateway's YAML config")

    def issuer(parser: argparse.ArgumentParser, without: str) -> None:
        parser.add_argument(
            "--issuer",
            help=f"the subject's issuer (iss claim; for a client certificate `mtls:` and its "
            f"CA's subject, e.g. 'mtls:CN=Store Devices CA,O=Example'); {without}",
        )

    listing = actions.add_parser("list", help="a user's live browser sessions")
    common(listing)
    listing.add_argument("--user", required=True, help="subject (sub claim)")
    issuer(listing, "without: under every issuer")
    listing.add_argument("--all", action="store_true", help="revoked sessions too")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    listing.set_defaults(run=run_list)

    revoke = actions.add_parser(
        "revoke", help="refuse a user's sessions and bearer tokens issued until now"
    )
    common(revoke)
    who = revoke.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="subject: every session and token issued before now")
    who.add_argument("--session", help="one session id (from `session list`)")
    issuer(revoke, "without: the subject under every issuer")
    revoke.add_argument("--reason", default="revoked by an administrator")
    revoke.set_defaults(run=run_revoke)

    unlock = actions.add_parser("unlock", help="lift a lockout after too many denied requests")
    common(unlock)
    unlock.add_argument("--user", required=True, help="subject (sub claim)")
    issuer(unlock, "required when the gateway trusts several")
    unlock.set_defaults(run=run_unlock)


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _issuer(args: argparse.Namespace, config: Any, *, required: bool) -> str | None:
    """The issuer `--issuer` names (checked against the config's), None for every
    issuer; IssuerChoice naming the choices."""
    from gateway.shared.revocation import choose_issuer, trusted_issuers

    trusted = trusted_issuers(config)
    if args.issuer is None and not required:
        return None
    return choose_issuer(args.issuer, trusted, required=required, option="--issuer")


def _connect(path: str) -> tuple[Any, Any, int] | None:
    from gateway.config import ConfigError, load_config
    from gateway.shared.revocation import longest_token_life, revocation_ttl
    from gateway.shared.store import Store

    try:
        config = load_config(path)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return None
    if config.shared_state is None:
        print(
            f"{path}: no shared_state section: sessions live only in each gateway's cookies "
            "and can't be listed or revoked (see README 'Shared state')",
            file=sys.stderr,
        )
        return None
    lifetime = longest_token_life(config.issuers)
    return Store(config.shared_state), config, revocation_ttl(config.session.lifetime, lifetime)


async def _run(path: str, work: Any) -> int:
    from gateway.shared.revocation import IssuerChoice
    from gateway.shared.store import Unavailable

    connected = _connect(path)
    if connected is None:
        return 2
    store, config, ttl = connected
    try:
        return int(await work(store, config, ttl))
    except IssuerChoice as error:
        print(f"{path}: {error}", file=sys.stderr)
        return 2
    except Unavailable as error:
        print(f"Redis unavailable: {error}", file=sys.stderr)
        return 1
    finally:
        await store.close()


def run_list(args: argparse.Namespace) -> int:
    from gateway.shared.revocation import list_sessions, trusted_issuers

    async def work(store: Any, config: Any, ttl: int) -> int:
        issuer = _issuer(args, config, required=False)
        issuers = trusted_issuers(config) if issuer is None else (issuer,)
        sessions = await store.run(
            lambda r: list_sessions(r, store.keys, issuers, args.user, include_revoked=args.all),
            timeout=5.0,
        )
        if args.json:
            print(json.dumps([s.to_json() for s in sessions], indent=2))
            return 0
        if not sessions:
            print(f"no live sessions for {args.user}")
            return 0
        print(
            f"{'SESSION':26} {'REPLICA':14} {'CREATED':24} {'LAST SEEN':24} {'SOURCE IP':16} "
            f"{'STATE':14} ISSUER"
        )
        for s in sessions:
            print(f"{s.session_id:26} {s.replica[:14]:14} {_when(s.created):24} "
                  f"{_when(s.last_seen):24} {s.source_ip:16} {s.state:14} {s.issuer}")  # fmt: skip
        return 0

    return asyncio.run(_run(args.config, work))


def run_revoke(args: argparse.Namespace) -> int:
    from gateway.shared.revocation import (
        not_revocable,
        revoke_session,
        revoke_user,
        session_owner,
    )

    async def work(store: Any, config: Any, ttl: int) -> int:
        if args.user:
            # No --issuer: the subject under every issuer (fail closed).
            issuer = _issuer(args, config, required=False)
            why_not = not_revocable(issuer)
            if why_not is not None:
                print(f"{args.config}: {why_not}", file=sys.stderr)
                return 2
            at = await store.run(
                lambda r: revoke_user(r, store.keys, issuer, args.user, args.reason, "cli", ttl),
                timeout=5.0,
            )
            whose = f"from {issuer}" if issuer else "from every issuer"
            print(
                f"revoked: every session and bearer token of {args.user} issued before "
                f"{_when(at)}, {whose}, is refused on every replica (until they sign in again)"
            )
            return 0
        owner, subject = await store.run(
            lambda r: session_owner(r, store.keys, args.session), timeout=5.0
        )
        await store.run(
            lambda r: revoke_session(r, store.keys, args.session, owner, subject or "",
                                     args.reason, ttl),
            timeout=5.0,
        )  # fmt: skip
        of = f" of {subject}" + (f" ({owner})" if owner else "") if subject else ""
        print(f"revoked session {args.session}{of}")
        return 0

    return asyncio.run(_run(args.config, work))


def run_unlock(args: argparse.Namespace) -> int:
    from gateway.shared.revocation import still_locked, trusted_issuers, unlock

    async def work(store: Any, config: Any, ttl: int) -> int:
        # Never every issuer at once: that would unlock someone else by the same name.
        issuer = _issuer(args, config, required=True)
        assert issuer is not None
        trusted = trusted_issuers(config)
        unlocked = await store.run(
            lambda r: unlock(r, store.keys, issuer, args.user, trusted=trusted), timeout=5.0
        )
        who = f"{args.user} ({issuer})"
        print(f"unlocked {who}" if unlocked.was_locked else f"{who} was not locked out")
        if unlocked.still_locked_ms:
            until = _when(time.time() + unlocked.still_locked_ms / 1000)
            print(still_locked(args.user, until), file=sys.stderr)
            return 1
        return 0

    return asyncio.run(_run(args.config, work))
