"""`portcullis session list|revoke|unlock`: the shared state's sessions, from any host
that reaches the gateway's Redis (the gateway's config says where it is)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any


def register(commands: Any) -> None:
    session = commands.add_parser(
        "session", help="list, revoke and unlock user sessions (needs shared_state)"
    )
    actions = session.add_subparsers(dest="session_action", required=True, metavar="ACTION")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", required=True, help="the gateway's YAML config")

    listing = actions.add_parser("list", help="a user's live browser sessions")
    common(listing)
    listing.add_argument("--user", required=True, help="subject (sub claim)")
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
    revoke.add_argument("--reason", default="revoked by an administrator")
    revoke.set_defaults(run=run_revoke)

    unlock = actions.add_parser("unlock", help="lift a lockout after too many denied requests")
    common(unlock)
    unlock.add_argument("--user", required=True, help="subject (sub claim)")
    unlock.set_defaults(run=run_unlock)


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


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
    from gateway.shared.store import Unavailable

    connected = _connect(path)
    if connected is None:
        return 2
    store, config, ttl = connected
    try:
        return int(await work(store, config, ttl))
    except Unavailable as error:
        print(f"Redis unavailable: {error}", file=sys.stderr)
        return 1
    finally:
        await store.close()


def run_list(args: argparse.Namespace) -> int:
    from gateway.shared.revocation import list_sessions

    async def work(store: Any, config: Any, ttl: int) -> int:
        sessions = await store.run(
            lambda r: list_sessions(r, store.keys, args.user, include_revoked=args.all),
            timeout=5.0,
        )
        if args.json:
            print(json.dumps([s.to_json() for s in sessions], indent=2))
            return 0
        if not sessions:
            print(f"no live sessions for {args.user}")
            return 0
        print(
            f"{'SESSION':26} {'REPLICA':14} {'CREATED':24} {'LAST SEEN':24} {'SOURCE IP':16} STATE"
        )
        for s in sessions:
            print(f"{s.session_id:26} {s.replica[:14]:14} {_when(s.created):24} "
                  f"{_when(s.last_seen):24} {s.source_ip:16} {s.state}")  # fmt: skip
        return 0

    return asyncio.run(_run(args.config, work))


def run_revoke(args: argparse.Namespace) -> int:
    from gateway.shared.revocation import revoke_session, revoke_user, session_subject

    async def work(store: Any, config: Any, ttl: int) -> int:
        if args.user:
            at = await store.run(
                lambda r: revoke_user(r, store.keys, args.user, args.reason, "cli", ttl),
                timeout=5.0,
            )
            print(
                f"revoked: every session and bearer token of {args.user} issued before "
                f"{_when(at)} is refused on every replica (until they sign in again)"
            )
            return 0
        subject = await store.run(
            lambda r: session_subject(r, store.keys, args.session), timeout=5.0
        )
        await store.run(
            lambda r: revoke_session(r, store.keys, args.session, subject or "", args.reason, ttl),
            timeout=5.0,
        )
        print(f"revoked session {args.session}" + (f" of {subject}" if subject else ""))
        return 0

    return asyncio.run(_run(args.config, work))


def run_unlock(args: argparse.Namespace) -> int:
    from gateway.shared.revocation import unlock

    async def work(store: Any, config: Any, ttl: int) -> int:
        was = await store.run(lambda r: unlock(r, store.keys, args.user), timeout=5.0)
        print(f"unlocked {args.user}" if was else f"{args.user} was not locked out")
        return 0

    return asyncio.run(_run(args.config, work))
