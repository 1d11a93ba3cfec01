"""Reading and verifying the decision log: the one module its readers import.

``portcullis audit verify``, and later replay and log shipping, read the log
through here (:func:`iter_lines` to stream lines, :func:`iter_records` to stream
the records of files already verified, :func:`verify_log` to check the chain
first); the format is in :mod:`gateway.audit.chain`.

What verifying proves, and what it can't:

- Every line is checked against the one before it (hash chain) and every
  signature against the gateway's key, so a modified, inserted, reordered or
  deleted line is found, and a forger without the key can't recompute the chain
  past the next signature.
- Runs and files form one chain: each ``start`` record links to the last line of
  the run or file before it. A log must begin at the chain's genesis, unless
  the caller says where it continues from (``after``: the hash of the last line
  before it), so deleting the oldest run or file is found.
- The end of the log can't vouch for itself: cutting the tail at a signature
  (or a seal), or deleting the newest file, leaves a valid chain. Only a signed
  head kept outside the file (``head``: the gateway's ``/audit/head``, or the
  ``start`` record of the next file) shows what is missing at the end.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.audit.chain import (
    GENESIS,
    MAX_LINE_BYTES,
    SEALING_REASONS,
    SIGN_REASONS,
    SIGNATURE_TYPE,
    check_signature,
    line_hash,
)
from portcullis.wording import counted

# Lines the verifier remembers to tell an insertion or a swap from a deletion.
_WINDOW = 16
_START_MAX = 4096  # a start record is some 500 bytes
# What a reader keeps of a line longer than MAX_LINE_BYTES (its ``raw``): its first
# bytes, enough for the 4096 characters of it a shipped damaged record shows,
# however they are encoded.
OVERLONG_HEAD = 4 * 4096
_PIECE = 1 << 20  # how much of an overlong line is read at a time


@dataclass(frozen=True)
class Problem:
    """Where the chain first went wrong, and what it looks like."""

    file: str
    line: int
    # modified | deleted | inserted | reordered | signature | damaged | start | truncated
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Extent:
    """The bytes of a file the verifier read: how many, and their SHA-256."""

    size: int
    sha256: str


class LogChanged(Exception):
    """A verified file no longer holds the bytes that were verified."""


@dataclass
class VerifyResult:
    events: int = 0
    signatures: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unsigned_tail: int = 0
    sealed: bool = False
    last_signed_at: str | None = None
    records: int = 0
    # Where the chain ends: give tail_hash as ``after`` to verify the next file alone.
    tail_seq: int = 0
    tail_hash: str | None = None
    head_covered: bool = False  # an outside head was given and the log reaches it
    genesis_at: str | None = None  # when its GENESIS start was signed, if the files begin it
    # What was read of each file (by its name as given): a reader that streams the
    # files again afterwards reads only that, and checks it is still the same.
    extents: dict[str, Extent] = field(default_factory=dict)
    # Events a run left unsigned (it crashed) that the next run's start record
    # signed as it found them in the file: see :class:`Resigned`.
    resigned: list[Resigned] = field(default_factory=list)
    # What the log's own verified signatures call it (decision_log.name, else
    # host:file): replicas share the signing key, so this is what tells their logs apart.
    log_names: frozenset[str] = frozenset()

    @property
    def ok(self) -> bool:
        """No modification, deletion, insertion or reordering found."""
        return not self.problems

    @property
    def complete(self) -> bool:
        """ok, every event covered by a signature, and the log ends with a seal."""
        return self.ok and self.unsigned_tail == 0 and self.sealed and not self.resigned


@dataclass(frozen=True)
class Resigned:
    """Events the run that wrote them never signed (it stopped without a signature:
    a crash), signed afterwards by the next run's ``start`` record as the file then
    held them. Anyone who could write the file (and the unsigned ``.head`` file)
    while the gateway was down could have changed, deleted or added them, and the
    restart would have signed that: the chain links, but nothing vouches for them."""

    first: tuple[str, int]  # the first such event (file, line)
    last: tuple[str, int]  # the last one
    start: tuple[str, int]  # the start record that signed them
    events: int
    seqs: tuple[int, int]  # their seq range as the file holds it

    def __str__(self) -> str:
        (file, line), (last_file, last_line) = self.first, self.last
        where = (
            f"{file}:{line}-{last_line}"
            if last_file == file
            else f"{file}:{line} to {last_file}:{last_line}"
        )
        return (
            f"{self.events} event(s) at {where} were never signed by the run that wrote "
            f"them (it stopped without a signature: a crash); the restart's start record "
            f"at {self.start[0]}:{self.start[1]} signed them as it found them, so edits "
            "made to them (or to the .head file) while the gateway was down can't be "
            "detected: check them against the SIEM's copies"
        )


@dataclass(frozen=True)
class SignedHead:
    """A chain signature from outside the files being verified: what the log must reach."""

    seq: int  # events in the chain up to the line ``head``
    head: str  # hash of the last line it vouches for
    signed_at: str
    kid: str
    source: str  # where it came from, for messages
    signature: str = ""
    log: str | None = None  # the log it names (None: signed before heads named theirs)

    @classmethod
    def from_record(
        cls, record: Any, public_keys: dict[str, ec.EllipticCurvePublicKey], source: str
    ) -> SignedHead:
        """Check a chain signature record (``/audit/head``'s answer, or a file's
        ``start`` record); ValueError says why it can't be used."""
        if not isinstance(record, dict) or record.get("type") != SIGNATURE_TYPE:
            raise ValueError(f"{source}: not a decision-log head (no chain_signature record)")
        error = check_signature(record, public_keys)
        if error is not None:
            raise ValueError(f"{source}: the head's {error}")
        return cls(
            int(record["seq"]),
            str(record["head"]),
            str(record["signed_at"]),
            str(record["kid"]),
            source,
            str(record["signature"]),
            record.get("log"),  # a str or None: check_signature refused anything else
        )


@dataclass
class LogLine:
    """One line of a log file, parsed (``record`` is None if it isn't a JSON object)."""

    file: str
    number: int
    position: tuple[int, int]
    raw: bytes
    digest: str
    record: dict[str, Any] | None
    torn: bool
    # A line longer than MAX_LINE_BYTES: its length. It was hashed in pieces, never
    # held whole or parsed: ``raw`` is its first bytes, ``record`` None.
    overlong: int = 0


# The verifier's internal name.
_Line = LogLine


def iter_lines(paths: Sequence[Path], *, hashed: bool = True) -> Iterator[LogLine]:
    """Every line of ``paths`` in order, streamed (constant memory). Raises OSError.
    ``hashed=False`` leaves ``digest`` empty: for a reader that verified the files
    first (verify_log) and only needs the records."""
    return _lines(paths, hashed=hashed)


def iter_records(
    paths: Sequence[Path], extents: dict[str, Extent] | None = None
) -> Iterator[tuple[str, int, dict[str, Any] | None]]:
    """``(file, line number, record)`` for every line of ``paths`` in order, streamed;
    ``record`` is None where the line isn't a JSON object (or is longer than
    MAX_LINE_BYTES). For a reader that verified the files first (verify_log) and
    reads every line once: no :class:`LogLine` built per line, no chain hashes.
    With the verifier's ``extents``: only the bytes it verified (not lines the
    gateway appended since), and LogChanged at the end of a file whose bytes are
    no longer those."""
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    for path in paths:
        name = str(path)
        extent = extents.get(name) if extents is not None else None
        if extents is not None and extent is None:
            raise LogChanged(f"{name} was not verified")
        left = extent.size if extent is not None else -1
        digest = hashlib.sha256() if extent is not None else None
        with Path(path).open("rb") as file:
            for number, chunk in enumerate(_bounded_lines(file), start=1):
                if digest is not None:
                    if left <= 0:
                        break  # written after the check: not verified, not read
                    if len(chunk) > left:
                        chunk = chunk[:left]
                    left -= len(chunk)
                    digest.update(chunk)
                if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
                    # Overlong (the verifier reported it): the rest of it is read for
                    # the extent's hash, a piece at a time.
                    read, _ = read_line_on(file, None, digest, left)
                    if digest is not None:
                        left -= read
                    yield name, number, None
                    continue
                # The newline is JSON whitespace: both parsers read the line with it.
                try:
                    record = loads(chunk)
                except decode_error:
                    record = parse_line(chunk)
                yield name, number, record if type(record) is dict else None
        if (
            extent is not None
            and digest is not None
            and (left != 0 or digest.hexdigest() != extent.sha256)
        ):
            raise LogChanged(
                f"{name} changed after it was verified (its first {extent.size} bytes are "
                "not the ones checked): refusing to report on it"
            )


def _lines(
    paths: Sequence[Path], *, hashed: bool = True, extents: dict[str, Extent] | None = None
) -> Iterator[_Line]:
    for index, path in enumerate(paths):
        whole = hashlib.sha256() if extents is not None else None
        size = 0
        with Path(path).open("rb") as file:
            for number, chunk in enumerate(_bounded_lines(file), start=1):
                if whole is not None:
                    whole.update(chunk)
                    size += len(chunk)
                torn = not chunk.endswith(b"\n")
                if torn and len(chunk) > MAX_LINE_BYTES:
                    # Hashed a piece at a time, never held whole, never parsed.
                    line = hashlib.sha256(chunk) if hashed else None
                    read, ended = read_line_on(file, line, whole)
                    size += read
                    digest = line.hexdigest() if line is not None else ""
                    length = len(chunk) + read - (1 if ended else 0)
                    head = chunk[:OVERLONG_HEAD]
                    where = (index, number)
                    yield _Line(str(path), number, where, head, digest, None, not ended, length)
                    continue
                raw = chunk[:-1] if not torn else chunk
                record = parse_line(raw)
                if not isinstance(record, dict):
                    record = None
                digest = line_hash(raw) if hashed else ""
                yield _Line(str(path), number, (index, number), raw, digest, record, torn)
        if extents is not None and whole is not None:
            extents[str(path)] = Extent(size, whole.hexdigest())


def _bounded_lines(file: BinaryIO) -> Iterator[bytes]:
    """The lines of ``file`` as iterating it gives them, except that a line longer
    than MAX_LINE_BYTES comes as its first MAX_LINE_BYTES + 1 bytes (no newline at
    their end), the file left inside it for :func:`read_line_on`."""
    return iter(functools.partial(file.readline, MAX_LINE_BYTES + 1), b"")


def read_line_on(
    file: BinaryIO,
    line: hashlib._Hash | None,
    whole: hashlib._Hash | None = None,
    limit: int = -1,
) -> tuple[int, bool]:
    """Read on to the end of the line ``file`` is in, a piece at a time (a line of
    any length costs a piece's memory): its bytes go to ``line`` (its chain hash:
    the newline left out), every byte read to ``whole``. At most ``limit`` bytes
    (-1: no limit). Returns the bytes read and whether a newline ended them (else
    the file or the limit did first)."""
    read = 0
    while read != limit:
        piece = file.readline(_PIECE if limit < 0 else min(_PIECE, limit - read))
        if not piece:
            break
        read += len(piece)
        if whole is not None:
            whole.update(piece)
        if piece.endswith(b"\n"):
            if line is not None:
                line.update(memoryview(piece)[:-1])
            return read, True
        if line is not None:
            line.update(piece)
    return read, False


def parse_line(raw: bytes) -> Any:
    """The line's JSON value, None if it isn't JSON (every reader of the log parses
    its lines with this). orjson is ~3x faster and reads
    every line the writer (orjson) writes; what it refuses (NaN, lone surrogates,
    other encodings) goes to json. One difference: an integer beyond 64 bits
    reads as a float, but the writer can't write one, and the chain hashes the
    raw bytes, so such a line fails verification either way."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # nested deeper than either parser goes
        return None


def signers_if_none_verify(
    paths: Sequence[Path], keys: dict[str, ec.EllipticCurvePublicKey]
) -> list[str]:
    """The key ids the log's signatures name, if not one of them verifies with
    ``keys``: the wrong key was given, rather than a tampered log. A log with
    even one signature that verifies is this key's, and the rest is tampering."""
    signers: list[str] = []
    for line in iter_lines(paths, hashed=False):
        record = line.record
        if record is None or record.get("type") != SIGNATURE_TYPE:
            continue
        if check_signature(record, keys) is None:
            return []
        if str(record.get("kid")) not in signers:
            signers.append(str(record.get("kid")))
    return signers


def key_ids(keys: dict[str, ec.EllipticCurvePublicKey]) -> str:
    """The given keys' ids: a JWKS's kids, or a PEM key's RFC 7638 thumbprint (the
    kid the gateway signs with)."""
    from gateway.assertion import public_jwk

    if "*" not in keys:
        return "key id " + ", ".join(map(repr, sorted(keys)))
    return f"key id {public_jwk(keys['*'])['kid']!r}"


def chain_order(paths: Sequence[Path]) -> list[Path]:
    """``paths`` in the order the chain runs through them (the order
    :func:`verify_log` checks them in), for readers that stream events after it."""
    return _chain_order(paths)


def verify_log(
    paths: Sequence[Path],
    public_keys: dict[str, ec.EllipticCurvePublicKey],
    *,
    after: str | None = None,
    head: SignedHead | Sequence[SignedHead] | None = None,
    new_chain: str | bool = False,
    after_seq: int | None = None,
) -> VerifyResult:
    """Check the chain and its signatures over ``paths`` (oldest file first).

    ``public_keys`` maps kid -> key; the kid ``"*"`` matches any kid (a bare
    PEM key). ``after``: the hash of the line the first file continues from
    (else it must begin the chain). ``head``: a signed head the log must reach, or
    several (every head a SIEM kept: a log cut back to an earlier run's end and
    continued reaches the newest head but not the erased run's). ``new_chain``:
    the log's chain began anew at GENESIS, signed at this time (True: whenever
    these files' GENESIS start was signed), and the heads of the chain before it
    under its name are not asked of it.
    Raises OSError for unreadable files.
    """
    result = VerifyResult()
    heads = [head] if isinstance(head, SignedHead) else list(head or ())
    head_at: dict[int, int] = {}  # head index -> events counted when its line was read
    # Where each head is reached: the line it vouches for (by digest), or its own
    # signature record (by signature).
    heads_by_digest: dict[str, list[int]] = {}
    heads_by_signature: dict[str, list[int]] = {}
    names: set[str] = set()  # what this log's own verified signatures call it
    for head_index, wanted in enumerate(heads):
        heads_by_digest.setdefault(wanted.head, []).append(head_index)
        if wanted.signature:
            heads_by_signature.setdefault(wanted.signature, []).append(head_index)
    first_seq: int | None = None
    genesis_at: str | None = None  # when the chain began, if these files begin it
    ordered = _chain_order(paths)
    if ordered != list(paths):
        files = ", ".join(str(path) for path in ordered)
        result.notes.append(f"files verified in the order they were written: {files}")
    paths = ordered
    links: dict[str, tuple[int, _Line]] = {}  # broken link -> (problem index, its line)
    recent: collections.deque[_Line] = collections.deque(maxlen=_WINDOW)
    count: int | None = None  # events in the chain so far, once known
    last_good_sig: _Line | None = None
    since_sig = 0
    first_unsigned: _Line | None = None  # the first event after the last good signature
    last_event: _Line | None = None
    last_break = -_WINDOW - 1  # index of the last broken link
    gaps: list[tuple[int, int, int]] = []  # (problem index, first, last missing seq)
    index = -1

    def problem(line: _Line, kind: str, message: str) -> int:
        result.problems.append(Problem(line.file, line.number, kind, message))
        return len(result.problems) - 1

    for line in _lines(paths, extents=result.extents):
        index += 1
        result.records += 1
        prev = recent[-1] if recent else None
        recent.append(line)
        record = line.record
        if record is None:
            if line.overlong:
                cut = ", with no newline at its end" if line.torn else ""
                what = (
                    f"a line of {line.overlong} bytes{cut}, over the {MAX_LINE_BYTES} a line "
                    "may hold (the gateway's are some KB; only hashed, not read)"
                )
            else:
                what = "a cut-off line (a crash mid-write?)" if line.torn else "not a JSON record"
            problem(line, "damaged", f"{what}: edited or damaged")
            continue
        is_signature = record.get("type") == SIGNATURE_TYPE
        link = record.get("head" if is_signature else "prev_hash")
        seq = record.get("seq")
        if not isinstance(link, str) or not isinstance(seq, int):
            problem(line, "damaged", "record has no chain fields (prev_hash/head, seq)")
            continue
        starts = is_signature and record.get("reason") == "start"

        link_ok = True
        seal = _seal_reason(prev.record) if prev is not None else None
        if prev is not None and seal is not None and not is_signature:
            # The gateway's own last word on a run (close) or a file (rotate): it
            # writes a signed start next, never an event. (A signature there is
            # checked as any is: a start, or a rotate that older versions wrote
            # when logrotate's signal came during shutdown.)
            problem(
                line,
                "inserted",
                f"an event follows the gateway's {seal} signature at "
                f"{prev.file}:{prev.number} without a signed start: written after the "
                "gateway had sealed the log",
            )
        if prev is None:
            if not starts:
                problem(
                    line,
                    "start",
                    "the log does not begin with a signed start record: lines were "
                    "deleted from its beginning",
                )
            else:
                continues = None if after is None else (after, after_seq)
                _check_beginning(line, link, seq, continues, result, problem)
        elif link != prev.digest:
            link_ok = False
            if prev.record is None:
                pass  # the damaged line before was reported: its bytes are what changed
            elif starts and link == GENESIS:
                problem(
                    line,
                    "start",
                    f"a new chain starts here (seq 0): nothing links it to {prev.file}:"
                    f"{prev.number}, so whatever was logged in between can't be checked "
                    "(the gateway had lost its .head file, or logs of different chains "
                    "were given together)",
                )
                count, link_ok = 0, True
            else:
                earlier = next((i for i, seen in enumerate(recent) if seen.digest == link), None)
                if earlier is not None and index - last_break < _WINDOW:
                    pass  # the other half of a reordering reported just before
                elif earlier is not None:
                    first = recent[earlier + 1]
                    inserted = len(recent) - 2 - earlier
                    problem(
                        first,
                        "inserted",
                        f"{inserted} line(s) inserted here: line {line.number} links to "
                        f"line {recent[earlier].number}",
                    )
                else:
                    at = _diagnose(line, prev, seq, count, is_signature, problem)
                    links.setdefault(link, (at, line))
                    if result.problems[at].kind == "deleted" and not is_signature:
                        gaps.append((at, (count or 0) + 1, seq - 1))
            if not link_ok:
                last_break = index

        if is_signature:
            error = check_signature(record, public_keys)
            if error is None and record.get("reason") not in SIGN_REASONS:
                error = f"unknown signature reason {record.get('reason')!r}"
            if error is not None:
                since = (
                    f"line {last_good_sig.number}"
                    if last_good_sig and last_good_sig.file == line.file
                    else "the start of the file"
                )
                detail = ""
                if count is not None and seq != count:
                    change = "inserted" if count > seq else "deleted"
                    detail = f"; it signs {counted(seq, 'event')}, {count} precede it ({change}?)"
                problem(
                    line,
                    "signature",
                    f"chain signature invalid: {error}. Records between {since} and here "
                    f"were changed and the chain recomputed, or the signature was forged"
                    f"{detail}",
                )
            elif link_ok:
                if count is not None and seq != count:
                    change = "deleted" if seq > count else "inserted"
                    problem(
                        line,
                        change,
                        f"the signature covers {counted(seq, 'event')} but {count} precede it: "
                        f"{abs(seq - count)} event(s) {change} before this line",
                    )
                result.signatures += 1
                result.last_signed_at = str(record.get("signed_at"))
                if isinstance(record.get("log"), str):
                    names.add(record["log"])
                if starts and since_sig and first_unsigned is not None and last_event:
                    # A start where the run before ended in events, not a signature.
                    first_record = first_unsigned.record or {}
                    result.resigned.append(
                        Resigned(
                            (first_unsigned.file, first_unsigned.number),
                            (last_event.file, last_event.number),
                            (line.file, line.number),
                            since_sig,
                            (int(first_record.get("seq") or 0), seq),
                        )
                    )
                last_good_sig = line
                since_sig = 0
                first_unsigned = None
        else:
            gap = next((g for g in gaps if g[1] <= seq <= g[2]), None)
            if gap is not None:  # a "deleted" event turns up later: it was moved
                gaps.remove(gap)
                old = result.problems[gap[0]]
                result.problems[gap[0]] = Problem(
                    old.file,
                    old.line,
                    "reordered",
                    f"lines reordered: event seq {seq} should come before this line, "
                    f"it is at {line.file}:{line.number}",
                )
            elif link_ok and count is not None and prev is not None and seq != count + 1:
                if seq > count + 1:
                    at = problem(
                        line, "deleted", f"event seq {seq} follows seq {count}: events deleted"
                    )
                    gaps.append((at, count + 1, seq - 1))
                else:
                    problem(
                        line,
                        "reordered",
                        f"event seq {seq} follows seq {count}: reordered or duplicated",
                    )
            result.events += 1
            since_sig += 1
            if first_unsigned is None:
                first_unsigned = line
            last_event = line
        count = seq
        if first_seq is None:
            first_seq = seq
            if starts and link == GENESIS and seq == 0 and isinstance(record.get("signed_at"), str):
                genesis_at = record["signed_at"]
        # A head vouches for the line before it (`head`); a head that starts a
        # chain vouches for nothing before it, so its own line is the match.
        # Looked up by digest and signature: a file of many polled heads costs
        # a dict look-up per line, not a scan of every head.
        if heads:
            found = heads_by_digest.get(line.digest, [])
            if is_signature:
                found = found + heads_by_signature.get(str(record.get("signature")), [])
            for head_index in found:
                if head_index not in head_at:
                    head_at[head_index] = seq

    result.log_names = frozenset(names)
    last = recent[-1] if recent else None
    if last is None:
        if heads:  # emptied: only an outside head can tell
            newest = max(heads, key=lambda h: h.seq)
            where = str(paths[-1]) if paths else "the log"
            result.problems.append(
                Problem(
                    where,
                    0,
                    "truncated",
                    f"the log is empty, but the gateway signed a head at seq {newest.seq} "
                    f"({newest.signed_at}, from {newest.source})",
                )
            )
        return result
    result.tail_seq, result.tail_hash = count or 0, last.digest
    # A head that vouches for a line of this log is this log's, whatever name it
    # signs: a run signed under another name and then cut off is still a cut.
    names |= {name for i in head_at if (name := heads[i].log) is not None}
    mine = _heads_of_this_log(heads, names, last, result, problem)
    result.genesis_at = genesis_at
    chain = _Chain(names, head_at, genesis_at, new_chain)
    mine = _heads_of_this_chain(heads, mine, chain, last, result, problem)
    # A head at the seq these files begin at, which they don't reach, vouches for the
    # end of the file before (its rotate or close signature).
    before = [
        h
        for i, h in enumerate(heads)
        if i in mine
        and first_seq is not None
        and (h.seq < first_seq or (h.seq == first_seq and genesis_at is None and i not in head_at))
    ]
    if before:
        result.notes.append(
            f"{len(before)} outside head(s) come before these files begin (seq "
            f"{first_seq}); give the earlier files to check them"
        )
    if after is not None and first_seq is not None:
        _check_fork(heads, mine, head_at, after, first_seq, last, problem)
    for index, wanted in enumerate(heads):
        if index in mine and wanted not in before:
            _check_head(wanted, head_at.get(index), last, count or 0, result, problem)
    if last.torn and last.record is not None:
        problem(last, "damaged", "the last line has no newline: cut off mid-write")
    result.unsigned_tail = since_sig
    final = last.record or {}
    result.sealed = (
        final.get("type") == SIGNATURE_TYPE
        and final.get("reason") in SEALING_REASONS
        and last is last_good_sig
    )
    if links:
        _find_moved_lines(paths, links, result)
    order = [str(path) for path in paths]
    result.problems.sort(key=lambda p: (order.index(p.file), p.line))
    return result


def _heads_of_this_log(
    heads: list[SignedHead], names: set[str], last: _Line, result: VerifyResult, problem: Any
) -> set[int]:
    """The indexes of the outside heads this log must reach: those that name one of
    the names its own signatures carry (a log keeps its name across runs, unless
    its host or configuration was renamed), and those that name none (signed before
    heads named their log). A SIEM's export holds every replica's and worker's heads
    (they share the key): the others' are left out, with a note. When the log names
    itself and none of the heads is its own, nothing vouches for its end: a problem
    (a log rewritten under another name looks so), not a pass."""
    if not names:  # signatures that name no log (or none verified): every head counts
        return set(range(len(heads)))
    mine = {i for i, wanted in enumerate(heads) if wanted.log is None or wanted.log in names}
    others = sorted({h.log for h in heads if h.log is not None and h.log not in names})
    if not others:
        return mine
    this = ", ".join(repr(name) for name in sorted(names))
    listed = ", ".join(repr(name) for name in others[:5]) + (" ..." if len(others) > 5 else "")
    if mine:
        result.notes.append(
            f"{len(heads) - len(mine)} outside head(s) of {len(others)} other log(s) left "
            f"out ({listed}): this log signs as {this}"
        )
    else:
        problem(
            last,
            "head",
            f"none of the {len(heads)} outside heads is this log's: it signs as {this}, they "
            f"name {listed}. Nothing outside vouches for its end: give the heads its own "
            "sink or /audit/head kept (a log rewritten under another name looks like this)",
        )
    return mine


@dataclass(frozen=True)
class _Chain:
    """What the verifier learnt of the log's chain: the names its signatures carry,
    the outside heads it reaches (index -> seq), when its GENESIS start was signed
    if these files begin the chain, and the caller's ``new_chain``."""

    names: set[str]
    head_at: dict[int, int]
    genesis_at: str | None
    new_chain: str | bool


def _heads_of_this_chain(
    heads: list[SignedHead],
    mine: set[int],
    chain: _Chain,
    last: _Line,
    result: VerifyResult,
    problem: Any,
) -> set[int]:
    """Of ``mine``, the heads of this log's own chain. A gateway that lost its log
    and its .head file (a volume replaced, a host rebuilt, or the files deleted)
    begins a new chain at GENESIS under the same name, and the export holds both
    chains' heads. A head this log reaches is its own. Of the others:

    - one signed after a later chain of the name began (its GENESIS start, a head
      at seq 0, signed after every head this log reaches: a chain that went on
      after a GENESIS reaches a head signed after it, its next start) is that
      chain's, left out with a note;
    - one signed before this log's own GENESIS start is an earlier chain's. This
      log can't show that chain wasn't erased: a problem, unless the caller
      says the chain began anew (``new_chain``, with that start's signed_at).

    signed_at is one gateway's clock, as signed: no one without the key can move
    a boundary."""
    unreached = [i for i in mine if i not in chain.head_at]
    if not unreached:
        return mine
    named = ", ".join(repr(name) for name in sorted(chain.names))
    reached = [heads[i].signed_at for i in chain.head_at if i in mine]
    if result.last_signed_at is not None:
        reached.append(result.last_signed_at)
    ended = max(reached, default=None)
    geneses = sorted(
        heads[i].signed_at
        for i in mine
        if heads[i].seq == 0 and heads[i].head == GENESIS and heads[i].log in chain.names
    )
    then = min((at for at in geneses if ended is not None and at > ended), default=None)
    later: set[int] = set()
    if then is not None:
        later = {i for i in unreached if heads[i].signed_at >= then}
        if later:
            more = _chains_began([at for at in geneses if at >= then], "since")
            result.notes.append(
                f"{len(later)} outside head(s) of a later chain under the name {named} left "
                f"out: it began again at GENESIS at {then}, after the last head this log "
                f"reaches{more}"
            )
    # Files that don't begin the chain (--after) can't show when it began: only the
    # caller can say so.
    began = chain.genesis_at
    if began is None and isinstance(chain.new_chain, str):
        began = chain.new_chain
    earlier: set[int] = set()
    if began is not None:
        earlier = {i for i in unreached if heads[i].signed_at < began}
    if began is not None and earlier:
        newest = max((heads[i] for i in earlier), key=lambda h: h.signed_at)
        more = _chains_began([at for at in geneses if at < began], "before")
        what = (
            f"{len(earlier)} outside head(s) of an earlier chain under the name {named} "
            f"(up to seq {newest.seq}, signed at {newest.signed_at}{more})"
        )
        if chain.new_chain is True or chain.new_chain == began:
            result.notes.append(
                f"{what} left out: this log's chain began anew at GENESIS at {began} "
                "(--new-chain); verify that chain's files on their own"
            )
        else:
            problem(
                last,
                "head",
                f"{what} are not in these files: this log began a new chain at GENESIS at "
                f"{began}, so the gateway lost its log and .head file, or they were "
                "deleted. Verify that chain's files on their own; if you know why it "
                f"began again, --new-chain {began} checks this log alone",
            )
    return mine - later - earlier


def _chains_began(starts: list[str], when: str) -> str:
    """A clause naming the GENESIS starts of a name, when there are several."""
    if len(starts) < 2:
        return ""
    return (
        f"; {len(starts)} chains began under it {when}, at GENESIS at {', '.join(starts)}: "
        "verify each one's files"
    )


def _check_beginning(
    line: _Line,
    link: str,
    seq: int,
    after: tuple[str, int | None] | None,
    result: VerifyResult,
    problem: Any,
) -> None:
    """The first record must begin the chain, or continue from ``after`` (the hash
    of the line before, and the events up to it when the caller knows them)."""
    if after is not None:
        after_hash, after_seq = after
        if link == after_hash and after_seq is not None and seq != after_seq:
            # The count comes from the .head file, which isn't signed: a run cut off
            # and the count moved past it would otherwise line up with the next file.
            problem(
                line,
                "start",
                f"this log's start says {counted(seq, 'event')} came before it, --after says "
                f"{after_seq}: {abs(seq - after_seq)} event(s) between were cut out, or "
                "the count was changed",
            )
        elif link == after_hash:
            pinned = "" if after_seq is not None else ", as its start record says"
            result.notes.append(
                f"{line.file} continues from {after_hash} "
                f"({counted(seq, 'event')} before it{pinned})"
            )
        else:
            problem(
                line,
                "start",
                f"this log continues from {link}, not from --after {after_hash}: "
                "the lines between are missing",
            )
    elif link != GENESIS or seq != 0:
        problem(
            line,
            "start",
            f"the log does not begin the chain: {seq} event(s) were logged before it "
            "(give the earlier files too, or --after with the hash of the line it "
            "continues from); an earlier run or file may have been deleted",
        )


def _check_fork(
    heads: list[SignedHead],
    mine: set[int],
    head_at: dict[int, int],
    after: str,
    first_seq: int,
    last: _Line,
    problem: Any,
) -> None:
    """Files verified from ``after`` on: an outside start record that continues
    from the same line with another count is a second branch of the chain there,
    whose events these files don't hold (a run cut off, the .head file's count
    moved past it, the gateway restarted)."""
    for index in sorted(mine):
        head = heads[index]
        if head.head == after and head.seq != first_seq and index not in head_at:
            problem(
                last,
                "fork",
                f"the outside head from {head.source} (seq {head.seq}, signed at "
                f"{head.signed_at}) continues from the line --after names too, but these "
                f"files begin at seq {first_seq}: the chain forked there, and the other "
                "branch's events are not in these files",
            )


def _check_head(
    head: SignedHead,
    head_at: int | None,
    last: _Line,
    count: int,
    result: VerifyResult,
    problem: Any,
) -> None:
    """Does the log reach the outside head? Else its end was cut off."""
    if head_at == head.seq:
        result.head_covered = True
        result.notes.append(
            f"the log reaches the outside head from {head.source} (seq {head.seq}, "
            f"signed at {head.signed_at})"
        )
    elif head_at is not None:
        problem(
            last,
            "truncated",
            f"the outside head from {head.source} counts {counted(head.seq, 'event')} at its line, "
            f"the log {head_at}: events deleted or inserted before it",
        )
    elif head.seq >= count:
        missing = head.seq - count
        what = f"{missing} event(s) and their signatures" if missing else "signature records"
        problem(
            last,
            "truncated",
            f"the log ends here at seq {count}, but the gateway signed a head at seq "
            f"{head.seq} ({head.signed_at}, from {head.source}): {what} are missing "
            "after this line (the tail was cut, or the newest file deleted)",
        )
    else:
        problem(
            last,
            "truncated",
            f"the outside head from {head.source} (seq {head.seq}) names a line that is "
            "not in the log: lines were replaced, or the head is from another chain",
        )


def _chain_order(paths: Sequence[Path]) -> list[Path]:
    """Files sorted by the signed time of their start record (logrotate numbers
    files newest first, and shells sort names): the order the chain runs in."""

    def started(item: tuple[int, Path]) -> tuple[str, int]:
        index, path = item
        record = start_record(Path(path))
        stamp = record.get("signed_at") if record is not None else None
        return (stamp if isinstance(stamp, str) else "", index)

    return [path for _, path in sorted(enumerate(paths), key=started)]


def start_record(path: Path) -> dict[str, Any] | None:
    """The ``start`` chain signature ``path`` begins with, if it begins with one
    (not checked: the verifier checks it where it stands in the chain)."""
    try:
        with path.open("rb") as file:
            record = json.loads(file.readline(_START_MAX))
    except (OSError, ValueError, RecursionError):  # unreadable, not JSON, nested too deep
        return None
    if isinstance(record, dict) and record.get("type") == SIGNATURE_TYPE:
        return record if record.get("reason") == "start" else None
    return None


def _diagnose(
    line: _Line, prev: _Line, seq: int, count: int | None, is_signature: bool, problem: Any
) -> int:
    """Name the broken link between ``prev`` and ``line``; returns the problem index."""
    expected = (count or 0) if is_signature else (count or 0) + 1
    if line.number == 1 and line.file != prev.file:
        gap = (
            f"{counted(seq - expected, 'event')} {'is' if seq - expected == 1 else 'are'}"
            if seq > expected
            else "something is"
        )
        message = f"{gap} missing between {prev.file} and this file (a file deleted?)"
        return int(problem(line, "deleted", message))
    if count is not None and seq > expected:
        missing = seq - expected
        what = "before this signature" if is_signature else "before this line"
        message = f"{missing} event(s) deleted {what} (seq {count} -> {seq})"
        return int(problem(line, "deleted", message))
    if count is not None and seq < expected:
        if is_signature:
            message = f"{count - seq} event(s) inserted before this signature, which covers {seq}"
            return int(problem(line, "inserted", message))
        message = f"seq {seq} after seq {count}: lines reordered or duplicated"
        return int(problem(line, "reordered", message))
    return int(
        problem(
            prev,
            "modified",
            f"this line was modified: line {line.number} records a different hash "
            "for it (or a signature record after it was deleted)",
        )
    )


def _find_moved_lines(
    paths: Sequence[Path], links: dict[str, tuple[int, _Line]], result: VerifyResult
) -> None:
    """Second pass: a line linking to a line found elsewhere means reordering."""
    where: dict[str, _Line] = {}
    for line in _lines(paths):
        if line.digest in links:
            where.setdefault(line.digest, line)
    for digest, (index, broken) in links.items():
        found = where.get(digest)
        old = result.problems[index]
        if found is None or found is broken or old.kind not in ("deleted", "modified"):
            continue
        result.problems[index] = Problem(
            broken.file,
            broken.number,
            "reordered",
            f"lines reordered: this line belongs right after {found.file}:{found.number}",
        )


def _seal_reason(record: dict[str, Any] | None) -> str | None:
    """The reason of a close or rotate signature (only a start may follow it), else None."""
    if record is None or record.get("type") != SIGNATURE_TYPE:
        return None
    reason = record.get("reason")
    return reason if reason in ("close", "rotate") else None
