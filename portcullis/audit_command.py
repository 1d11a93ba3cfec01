"""`portcullis audit verify`: check a decision log's hash chain and signatures.

Exit codes: 0 the chain is intact and every event is covered by a signature,
with the log ending in a shutdown (``close``) or rotation seal; 1 tampering or
damage found, or (without ``--live``) events not yet covered by a signature
or a log that doesn't end with a seal, since cutting the tail there can't be
detected; 2 usage problems (missing file, bad key, a key none of the log's
signatures verifies with, a file that isn't a decision log).

``--live`` is for a log the gateway is still writing: an unsigned tail and a
missing seal are then warnings, exit 0.

The first file must begin the chain (seq 0), or ``--after SEQ:HASH`` says
which line it continues from (the ``chain ends at`` seq and hash printed for
the file before it; a bare HASH takes the count from the file's start record,
which an edited .head file can move); else deleting the oldest run or file
would go unnoticed.
``--head URL|FILE`` checks the log reaches a signed head kept outside it (the
admin listener's ``/audit/head``, a saved copy, the next rotated file, whose
``start`` record is one, or a sink's copy of the log, e.g. an export from the
SIEM, or a file of every /audit/head answer kept): the log is checked against
every head found there, the newest deciding what is missing at the end.
Without it, a tail cut at a signature or a deleted newest file can't be
detected. A head that can't be fetched, isn't a head, or isn't signed by the
given key is a usage error (exit 2); a log that doesn't reach it is exit 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.audit.chain import SIGNATURE_TYPE, line_hash, public_key_from_jwk
from gateway.audit.reader import (
    SignedHead,
    VerifyResult,
    key_ids,
    signers_if_none_verify,
    verify_log,
)
from portcullis.wording import counted

USAGE_ERROR = 2
TAMPERED = 1


# The reader's note for each outside head the log reaches.
_REACHED = "the log reaches the outside head from "


class UsageError(Exception):
    """A problem with the command line's files or keys: one line, exit 2."""


def register(commands: Any) -> None:
    """Add `audit verify` to the top-level subcommands."""
    audit = commands.add_parser("audit", help="verify the gateway's decision log")
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        help="check the hash chain and signatures of decision-log files",
        description="Check decision-log files (oldest first) for modified, deleted, "
        "inserted or reordered lines.",
    )
    verify.add_argument("logs", nargs="+", metavar="LOG", help="decision-log files, oldest first")
    keys = verify.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key", metavar="PEM", help="the gateway's EC P-256 public key (PEM)")
    keys.add_argument(
        "--jwks",
        metavar="FILE_OR_URL",
        help="a JWKS file or URL, e.g. http://127.0.0.1:8080/.well-known/portcullis/jwks.json",
    )
    verify.add_argument(
        "--after",
        metavar="SEQ:HASH",
        help="the first file continues the chain from this line: SEQ:HASH, the seq and "
        "line hash printed as 'chain ends at' when verifying the file before it (a bare "
        "HASH takes the count of events before it from the file's start record)",
    )
    verify.add_argument(
        "--head",
        metavar="URL_OR_FILE",
        help="a signed chain head kept outside the log: the gateway's admin "
        "/audit/head URL, a saved copy of it, or the next rotated log file",
    )
    verify.add_argument(
        "--new-chain",
        metavar="SIGNED_AT",
        help="the log began a new chain at GENESIS at this time (its start record's "
        "signed_at), after its log and .head file were lost: the earlier chain's heads "
        "in --head are not asked of it",
    )
    verify.add_argument(
        "--log-name",
        metavar="NAME",
        help="the log these files must be: the name its signatures carry "
        "(decision_log.name, else host:file). Replicas share the signing key, so "
        "without it another replica's intact log passes too",
    )
    verify.add_argument(
        "--live",
        action="store_true",
        help="the log is still being written: an unsigned tail is a warning, not a failure",
    )
    verify.set_defaults(run=verify_command)


def verify_command(args: argparse.Namespace) -> int:
    try:
        keys = _load_pem(args.key) if args.key else _load_jwks(args.jwks)
        paths = [Path(name) for name in args.logs]
        for path in paths:
            _check_readable(path)
            check_log_file(path)
        check_distinct(paths)
        after, after_seq = check_after(args.after) if args.after else (None, None)
        head = load_heads(args.head, keys) if args.head else None  # every head that verifies
        if args.new_chain and head is None:
            raise UsageError(
                "--new-chain needs --head: it says which of the outside heads are not this log's"
            )
        new_chain = args.new_chain or False
        result = verify_log(
            paths, keys, after=after, head=head, new_chain=new_chain, after_seq=after_seq
        )
        if args.new_chain and result.genesis_at not in (None, args.new_chain):
            raise UsageError(
                f"--new-chain {args.new_chain}: this log's chain began at GENESIS at "
                f"{result.genesis_at}"
            )
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as error:
        print(f"error: {error.filename}: {error.strerror}", file=sys.stderr)
        return USAGE_ERROR
    if result.records == 0:
        print("error: the log files hold no records", file=sys.stderr)
        return USAGE_ERROR
    if not result.ok and result.signatures == 0:
        signers = signers_if_none_verify(paths, keys)
        if signers:
            given = args.key or args.jwks
            print(
                f"error: this log is signed by key {', '.join(map(repr, signers))}, not the "
                f"key given ({given}: {key_ids(keys)})",
                file=sys.stderr,
            )
            return USAGE_ERROR
    if result.events == 0 and result.signatures == 0 and result.problems:
        print(f"error: {paths[0]} is not a Portcullis decision log", file=sys.stderr)
        return USAGE_ERROR
    if args.log_name is not None and args.log_name not in result.log_names:
        called = ", ".join(repr(name) for name in sorted(result.log_names)) or "no name"
        print(f"TAMPERED: {paths[0]}: not the log {args.log_name!r}: its signatures call it "
              f"{called} (another replica's or another gateway's log?)")  # fmt: skip
        return TAMPERED
    return _report(result, live=args.live)


def _report(result: VerifyResult, *, live: bool) -> int:
    reached = [note for note in result.notes if note.startswith(_REACHED)]
    for note in result.notes:
        if note not in reached[1:]:  # heads come newest first: one line for a file of many
            print(f"note: {note}", file=sys.stderr)
    if len(reached) > 1:
        print(f"note: it reaches the {len(reached) - 1} older outside head(s) too", file=sys.stderr)
    if not result.ok:
        first = result.problems[0]
        print(f"TAMPERED: {first} [{first.kind}]")
        others = len(result.problems) - 1
        for problem in result.problems[1:10]:
            print(f"  also {problem} [{problem.kind}]")
        if others > 9:
            print(f"  ... and {others - 9} more")
        return TAMPERED
    signed = result.last_signed_at or "never"
    events = counted(result.events, "event")
    if result.resigned:
        # Not a tail a running gateway will sign: --live doesn't excuse it.
        print(f"INCOMPLETE: {events}, not all vouched for: {result.resigned[0]}")
        for other in result.resigned[1:10]:
            print(f"  also {other}")
        if len(result.resigned) > 10:
            print(f"  ... and {len(result.resigned) - 10} more")
        return TAMPERED
    warnings = []
    if result.unsigned_tail:
        warnings.append(
            f"{counted(result.unsigned_tail, 'event')} after the last signature "
            f"{'is' if result.unsigned_tail == 1 else 'are'} not yet covered by a signature "
            "(truncation after them can't be detected)"
        )
    elif not result.sealed:
        warnings.append(
            "the log does not end with a shutdown signature: the gateway is still running "
            "or crashed, or the tail was cut at a signature"
        )
    if warnings and not live:
        print(f"INCOMPLETE: {events}, chain intact up to the last signature at {signed}")
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print("(use --live for a log the gateway is still writing)", file=sys.stderr)
        return TAMPERED
    print(f"OK: {events}, chain intact, last signed at {signed}")
    print(f"chain ends at seq {result.tail_seq}, line hash {result.tail_hash}")
    if result.log_names:
        print(f"log: {', '.join(repr(name) for name in sorted(result.log_names))}")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not result.head_covered:
        print(
            "note: without --head, a tail cut at a signature or a deleted newest file "
            "can't be detected",
            file=sys.stderr,
        )
    return 0


def check_after(text: str) -> tuple[str, int | None]:
    """``--after``: ``SEQ:HASH`` (as 'chain ends at seq N, line hash H' gives them)
    or a bare line hash; UsageError otherwise."""
    seq_text, colon, hash_text = text.strip().rpartition(":")
    if not colon:
        return check_hash(text), None
    if not seq_text.isdigit():
        raise UsageError(f"--after {text!r}: not SEQ:HASH (a count of events, a line hash)")
    return check_hash(hash_text), int(seq_text)


def check_hash(text: str, option: str = "--after") -> str:
    """A line hash given on the command line (64 hex digits), lower case;
    UsageError if it isn't one."""
    value = text.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise UsageError(f"{option} {text!r}: not a line hash (64 hex digits)")
    return value


# /audit/head's answer and a JWKS are a few KB: a URL answering more is not one
# (and is not read into memory whole).
FETCH_MAX_BYTES = 1 << 20
# The whole fetch, from connecting to the answer's last byte (seconds).
FETCH_TIMEOUT = 10.0


def fetch(url: str, label: str, what: str) -> str:
    """The text at ``url`` (within FETCH_TIMEOUT in all, at most FETCH_MAX_BYTES);
    UsageError, starting with ``label``, saying why not. The socket's timeout
    bounds each read only: a server sending a byte every few seconds would keep
    a CI job waiting for as long as it liked, so the fetch runs on a thread the
    command stops waiting for (a daemon: it ends with the process)."""
    outcome: list[str | UsageError] = []

    def run() -> None:
        try:
            outcome.append(_fetch(url, label, what))
        except UsageError as error:
            outcome.append(error)

    worker = threading.Thread(target=run, name="fetch", daemon=True)
    worker.start()
    worker.join(FETCH_TIMEOUT)
    if not outcome:
        raise UsageError(
            f"{label}: cannot fetch {what}: no whole answer within {FETCH_TIMEOUT:g} s"
        )
    if isinstance(outcome[0], UsageError):
        raise outcome[0]
    return outcome[0]


def _fetch(url: str, label: str, what: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:
            data: bytes = response.read(FETCH_MAX_BYTES + 1)
        if len(data) > FETCH_MAX_BYTES:
            raise UsageError(f"{label}: more than {FETCH_MAX_BYTES} bytes: not {what}")
        return data.decode()
    except urllib.error.HTTPError as error:
        raise UsageError(f"{label}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "reason", error)
        raise UsageError(f"{label}: cannot fetch {what}: {reason}") from None


def load_heads(source: str, keys: dict[str, ec.EllipticCurvePublicKey]) -> list[SignedHead]:
    """The signed heads at ``source``: a URL or file holding /audit/head's JSON, a
    log file whose first line (a ``start`` record) is a head, or a file of heads
    (JSON lines: every /audit/head answer kept, or a sink's export), all of which
    the log must reach."""
    if source.startswith(("http://", "https://")):
        text = fetch(source, f"--head {source}", "the head")
    else:
        try:
            text = Path(source).read_text()
        except (OSError, UnicodeDecodeError) as error:
            detail = getattr(error, "strerror", None) or error
            raise UsageError(f"--head {source}: {detail}") from None
    records = _head_records(text)
    if not records:
        raise UsageError(
            f"--head {source}: not a decision-log head (expected /audit/head's JSON, "
            "a log file starting with a chain_signature record, or a sink's copy "
            "holding shipped chain heads)"
        )
    heads, refused = [], []
    for found in records:
        try:
            heads.append(SignedHead.from_record(found, keys, source))
        except ValueError as error:
            refused.append(str(error))
    if not heads:
        others = len(refused) - 1
        verb = "doesn't" if others == 1 else "don't"
        more = f" (and {counted(others, 'more head')} that {verb} verify)" if others else ""
        raise UsageError(f"--head {refused[0]}{more}")
    if refused:
        # One line a SIEM took from anyone (or a head signed before a key rotation)
        # must not switch the check off: the heads that verify are still checked.
        print(
            f"warning: --head {source}: {len(refused)} of {len(records)} chain heads in it "
            f"don't verify with the given key and are left out (forged, or another key's); "
            f"the first: {refused[0].removeprefix(source + ': ')}",
            file=sys.stderr,
        )
    # Newest first: the head that says how much is missing at the end is reported first.
    return sorted(heads, key=lambda head: head.seq, reverse=True)


def _head_records(text: str) -> list[dict[str, Any]]:
    """The chain signatures to check the log against. A log file (its second line
    links to its first) vouches for the file before it with its ``start`` record
    only: its later signatures are beyond that file's end."""
    first, _, rest = text.partition("\n")
    record = _json_object(first)
    if record is not None and record.get("type") == SIGNATURE_TYPE and "line_hash" not in record:
        following = _json_object(rest.partition("\n")[0])
        if following is not None:
            link = following.get("head" if following.get("type") == SIGNATURE_TYPE else "prev_hash")
            if link == line_hash(first.encode()):
                return [record]
    return _shipped_heads(text)


def _json_object(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):  # nested deeper than the parser goes
        return None
    return value if isinstance(value, dict) else None


def _shipped_heads(text: str) -> list[dict[str, Any]]:
    """Every chain signature in a file of heads or a sink's copy of the log: every
    JSON value in it, whether one per line, several on a line (``curl
    .../audit/head >> heads.jsonl``: the answers run together) or spread over
    lines (a pretty-printed copy), in any shipped format (opa, ocsf, ecs, a Splunk
    HEC envelope, a syslog line whose message is the JSON), the signature records
    nested anywhere in each. All of them, not only the newest: after a log was cut
    back to an earlier run's end and the gateway went on, the newest head is
    reached again, an erased run's head is not."""
    decoder = json.JSONDecoder()
    heads: list[dict[str, Any]] = []
    # The same head shipped again (or in two formats) once; a copy with any signed
    # field changed is another head, checked on its own (not hidden by, nor hiding,
    # the real one).
    seen: set[tuple[str, ...]] = set()
    at = text.find("{")
    while at >= 0:
        try:
            document, end = decoder.raw_decode(text, at)
        except (ValueError, RecursionError):  # not JSON from this brace (a syslog
            # header's, a cut line), or nested deeper than the parser goes
            at = text.find("{", at + 1)
            continue
        for found in _find_signatures(document, depth=6):
            signed = tuple(str(found.get(field)) for field in _SIGNED_FIELDS)
            if signed not in seen:
                seen.add(signed)
                heads.append(found)
        at = text.find("{", end)
    return heads


# Every field a signature covers (and its algorithm): a copy differing in any is another head.
_SIGNED_FIELDS = ("reason", "seq", "head", "signed_at", "kid", "log", "alg", "signature")


def _find_signatures(value: Any, depth: int) -> Iterator[dict[str, Any]]:
    if depth < 0:
        return
    if isinstance(value, list):
        for item in value:
            yield from _find_signatures(item, depth - 1)
    elif isinstance(value, dict):
        if value.get("type") == SIGNATURE_TYPE:
            yield value
            return
        for child in value.values():
            yield from _find_signatures(child, depth - 1)


# What the gateway keeps beside its log: <log>.head (gateway/audit/writer.py) and a
# sink's <log>.sink-<name>.cursor (gateway/audit/shipping/cursor.py).
_HEAD_FILE = re.compile(r"(?P<log>.+)\.head")
_CURSOR_FILE = re.compile(r"(?P<log>.+)\.sink-(?P<sink>.+)\.cursor")


def check_distinct(paths: list[Path]) -> None:
    """Refuse a log file given twice (any spelling): read twice, its chain would
    seem to start again in the middle, which is reported as tampering."""
    seen: dict[Path, Path] = {}
    for path in paths:
        real = path.resolve()
        if real in seen:
            raise UsageError(f"{path}: given twice (also as {seen[real]})")
        seen[real] = path


def check_log_file(path: Path) -> None:
    """Refuse a file that lies beside a decision log but isn't one (a glob such as
    decisions.log* picks them up), naming what it is and what to give instead."""
    head = _HEAD_FILE.fullmatch(path.name)
    if head:
        raise UsageError(
            f"{path}: the gateway's record of where the chain stands, not a decision "
            f"log: give the log ({path.with_name(head['log'])}) and its rotated files; "
            "this file can go to --head"
        )
    cursor = _CURSOR_FILE.fullmatch(path.name)
    if cursor:
        raise UsageError(
            f"{path}: the shipping cursor of sink {cursor['sink']!r}, not a decision log: "
            f"give the log ({path.with_name(cursor['log'])}) and its rotated files"
        )
    try:
        with path.open("rb") as file:
            first = file.readline(_FIRST_LINE_MAX)
    except OSError:
        return  # the reader says why it can't be read
    if first[:2] == b"\x1f\x8b":
        raise UsageError(f"{path}: compressed (gzip): unpack it (gunzip -k) and give that file")
    try:
        record = json.loads(first)
    except (ValueError, RecursionError):
        return  # damaged or not a log (or nested past the parser): the verifier says which
    if isinstance(record, dict) and ("chain_hash" in record or "line_hash" in record):
        # The log's own lines never hold their hash; a sink's opa copy adds it.
        raise UsageError(
            f"{path}: a sink's copy of the log (its records carry their own hash), not the "
            "decision log: give the gateway's log; this file can go to --head"
        )


# A decision event is some kilobytes; a first line longer than this is read no further.
_FIRST_LINE_MAX = 1 << 20


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path}: not a file")


def _load_pem(name: str) -> dict[str, ec.EllipticCurvePublicKey]:
    try:
        data = Path(name).read_bytes()
    except OSError as error:
        raise UsageError(f"{name}: {error.strerror}") from error
    key: Any
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:  # the gateway's private key works too: its public half is what we need
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            raise UsageError(f"{name}: not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise UsageError(f"{name}: not an EC P-256 key (the decision log is signed with ES256)")
    return {"*": key}


def _load_jwks(source: str) -> dict[str, ec.EllipticCurvePublicKey]:
    if source.startswith(("http://", "https://")):
        text = fetch(source, source, "the JWKS")
    else:
        try:
            text = Path(source).read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"{source}: {getattr(error, 'strerror', None) or error}") from None
    if text.lstrip().startswith("-----BEGIN"):
        raise UsageError(f"{source}: a PEM key, not a JWKS: give it with --key")
    try:
        document = json.loads(text)
    except ValueError as error:
        raise UsageError(f"{source}: not JSON ({error})") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise UsageError(f'{source}: not a JWKS (no "keys" list)')
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") != "EC" or "kid" not in entry:
            continue
        try:
            keys[str(entry["kid"])] = public_key_from_jwk(entry)
        except (ValueError, KeyError, TypeError) as error:
            raise UsageError(f"{source}: key {entry.get('kid')!r}: {error}") from None
    if not keys:
        raise UsageError(f"{source}: the JWKS holds no EC P-256 key with a kid")
    return keys


def load_keys(pem: str | None, jwks: str | None) -> dict[str, ec.EllipticCurvePublicKey]:
    """The verification keys from ``--key PEM`` or ``--jwks FILE_OR_URL`` (for the
    other commands that verify the log first); UsageError says what is wrong."""
    if pem:
        return _load_pem(pem)
    if jwks:
        return _load_jwks(jwks)
    raise UsageError("give the gateway's public key: --key PEM or --jwks FILE_OR_URL")
