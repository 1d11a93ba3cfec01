"""The opa format's unparsed path (gateway/audit/shipping/formats/opa.encode_line)
against the parsed one (parse, opa.format, the sink's encode): for every line
the writer can write, every sink gets the same bytes; for any other line
(hand-edited, damaged, hostile), the unparsed path either steps aside or ships
exactly the JSON the line holds, with its hash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.chain import SIGNATURE_TYPE, line_hash
from gateway.audit.shipping.formats.opa import encode_line
from gateway.audit.shipping.formats.opa import format as opa_format
from gateway.audit.shipping.settings import SinkConfig
from gateway.audit.shipping.shipper import Shipper
from gateway.audit.shipping.sinks.base import Sink
from gateway.audit.shipping.sinks.file import FileSink
from gateway.audit.shipping.sinks.http import HttpSink
from gateway.audit.shipping.sinks.syslog import SyslogSink
from gateway.audit.tail import parse_record
from gateway.audit.writer import _forgiving_line
from tests.test_decision_log_shipping import until

# One sink of each kind and envelope, never connected: only their encoding is used.
SINKS: dict[str, Sink] = {
    "file": FileSink(SinkConfig("f", "file", "opa", path=Path("/nonexistent/copy.jsonl"))),
    "syslog": SyslogSink(SinkConfig("s", "syslog", "opa", address="127.0.0.1:9")),
    "http": HttpSink(SinkConfig("h", "http", "opa", url="http://127.0.0.1:9/logs")),
    "hec": HttpSink(
        SinkConfig(
            "hec",
            "http",
            "opa",
            url="http://127.0.0.1:9/services/collector/event",
            envelope="splunk_hec",
            hec_index="main",
        )
    ),
    "hec, no index": HttpSink(
        SinkConfig("hec2", "http", "opa", url="http://127.0.0.1:9/e", envelope="splunk_hec")
    ),
}


def parsed_path(sink: Sink, raw: bytes, digest: str) -> bytes:
    """What the shipper sends for a line it parses (the path before encode_line)."""
    record = parse_record(raw)
    assert record is not None
    return sink.encode(record, opa_format(record, digest))


# JSON values as the writer's records hold them: text of any kind (controls,
# quotes, backslashes, non-ASCII), integers within orjson's 64 bits, finite floats.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# The fields the shipper and the sinks read, of any type (a policy or an editor
# may put anything there); result and labels as objects, as the writer's are.
records = st.fixed_dictionaries(
    {"decision_id": values, "input": values, "seq": values},
    optional={
        "type": st.sampled_from([SIGNATURE_TYPE, "other"]) | values,
        "timestamp": st.sampled_from(["2026-12-05T09:00:00.123456789Z", ""]) | values,
        "signed_at": values,
        "read_at": values,
        "path": st.sampled_from(["gateway", "shadow/portcullis/gateway/decision"]) | values,
        "result": st.fixed_dictionaries({}, optional={"allow": values, "reasons": values}),
        "labels": st.fixed_dictionaries({}, optional={"shadow": values, "app": values}),
        "prev_hash": st.text(max_size=64),
    },
)


@settings(max_examples=400, derandomize=True, deadline=None, database=None)
@given(record=records)
def test_every_line_the_writer_writes_ships_byte_for_byte_as_when_parsed(
    record: dict[str, Any],
) -> None:
    raw = orjson.dumps(record)  # the writer's line (gateway/audit/writer.py)
    digest = line_hash(raw)
    quick = encode_line(raw, digest)
    assert quick is not None, raw
    for name, sink in SINKS.items():
        assert sink.encode_json(*quick) == parsed_path(sink, raw, digest), name


def test_a_chain_signature_gets_line_hash_and_an_event_chain_hash() -> None:
    signature = orjson.dumps({"type": SIGNATURE_TYPE, "seq": 4, "head": "ab" * 32})
    event = orjson.dumps({"decision_id": "d", "seq": 5})
    for raw, key in ((signature, "line_hash"), (event, "chain_hash")):
        quick = encode_line(raw, line_hash(raw))
        assert quick is not None
        assert orjson.loads(quick[1]) == {**orjson.loads(raw), key: line_hash(raw)}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"chain_hash":"forged","seq":1}',  # the record's own would stand beside the added one
        b'{"type":"chain_signature","seq":1,"line_hash":"forged"}',
        b"{}",  # nothing to put a comma after
        b'{"a":1 }',
        b'{"a":1} ',
        b' {"a":1}',
        b'{"a":"\xff"}',  # not UTF-8: the parser's damaged record
        b'{"a":"\xed\xb3\xbf"}',  # a surrogate encoded in UTF-8
        b'{"a":"\\udcff"}',  # the writer's fallback: surrogates replaced when parsed
        b'{"result":5}',
        b'{"labels":[1]}',
        b'{"a":NaN}',
        b"[1]",
        b'{"a":1,}',
    ],
)
def test_a_line_the_parser_must_see_is_not_shipped_unparsed(raw: bytes) -> None:
    assert encode_line(raw, line_hash(raw)) is None


def mutations(raw: bytes) -> st.SearchStrategy[bytes]:
    """Lines an editor, a damaged disk or the writer's fallback could leave."""
    cut = st.integers(min_value=0, max_value=len(raw))
    junk = st.sampled_from(
        [b" ", b"\n", b"\t", b",", b"}", b"{", b"]", b'"', b"\\", b"\xff", b"\xc0\x80",
         b"\xed\xb3\xbf", b"\x00", b"\\udcff", b"\\ud83d\\ude00", b"NaN", b"1e400",
         b"123456789012345678901234567890", b'"chain_hash":1,', b'"line_hash":"x",',
         b'"result":5,', b'"labels":[],', b'"type":"chain_signature",', b'"seq":1,',
         b'"seq":2,"seq":3,']
    )  # fmt: skip
    return st.one_of(
        st.builds(lambda at, bit: raw[:at] + bit + raw[at:], cut, junk),
        st.builds(lambda at: raw[:at], cut),
        st.builds(lambda at: raw[:at] + raw[at + 1 :], cut),
        st.builds(lambda bit: b"{" + bit + raw[1:], junk),
        st.just(b"{}"),
        st.just(b"[]"),
        st.just(b'{"a":1} '),
        st.just(b' {"a":1}'),
        st.just(_forgiving_line({"seq": 1, "bad": "\udcff", "deep": [[[[]]]]})),
    )


@settings(max_examples=600, derandomize=True, deadline=None, database=None)
@given(data=st.data(), record=records)
def test_a_line_not_as_the_writer_writes_it_ships_as_the_json_it_holds_or_is_parsed(
    data: st.DataObject, record: dict[str, Any]
) -> None:
    """Whatever the line, the unparsed path takes it only if it is one JSON
    object (by the strict reading of Python's json) and ships that object,
    hash added, with the head fields it says; anything else is left to the
    parser (a damaged record, surrogates replaced, and so on)."""
    raw = data.draw(mutations(orjson.dumps(record)))
    digest = line_hash(raw)
    quick = encode_line(raw, digest)
    if quick is None:
        return
    head, text = quick
    try:
        held = json.loads(raw.decode("utf-8"))
    except ValueError:
        pytest.fail(f"not JSON, yet shipped unparsed: {raw!r}")
    assert isinstance(held, dict), raw
    key = "line_hash" if held.get("type") == SIGNATURE_TYPE else "chain_hash"
    assert key not in held, raw  # else the added key would stand beside the record's
    assert json.loads(text) == {**held, key: digest}, raw
    for name in ("type", "decision_id", "timestamp", "signed_at", "read_at", "path", "seq"):
        assert head.get(name, "absent") == held.get(name, "absent"), (name, raw)
    for part, field in (("result", "allow"), ("labels", "shadow")):
        if part in held:
            assert head[part].get(field, "absent") == held[part].get(field, "absent"), raw


async def ship_opa(tmp_path: Path, lines: list[bytes], form: str = "opa") -> tuple[Shipper, Path]:
    """The real shipper and a file sink in the opa format (or ``form``) on a log of
    ``lines``, run until it has acknowledged each; the stopped shipper and the
    sink's file."""
    log = tmp_path / "decisions.log"
    log.write_bytes(b"\n".join(lines) + b"\n")
    copy = tmp_path / f"copy-{form}.jsonl"
    shipper = Shipper(SinkConfig(f"copy-{form}", "file", form, path=copy), log)
    shipper.start()
    try:
        await until(lambda: shipper.acknowledged >= len(lines))
    finally:
        await shipper.stop(5.0)
    return shipper, copy


async def test_a_shipper_in_the_opa_format_ships_every_kind_of_line_once_in_order(
    tmp_path: Path,
) -> None:
    """The real shipper and file sink on a log mixing the writer's lines, its
    fallback's (lone surrogates), a damaged line and an empty object: each
    ships once, in order, as JSON a SIEM reads, with its hash."""
    lines = [
        orjson.dumps({"type": SIGNATURE_TYPE, "reason": "start", "seq": 0, "head": "0" * 64}),
        orjson.dumps({"decision_id": "a", "seq": 1, "result": {"allow": True}}),
        _forgiving_line({"decision_id": "b", "seq": 2, "input": {"path": "/x\udcff"}}),
        b'{"decision_id": "c", "seq": 3 ',  # cut short: damaged
        b"{}",
        orjson.dumps({"decision_id": "d", "seq": 4, "input": {"q": "caf\u00e9 \u2603"}}),
    ]
    _, copy = await ship_opa(tmp_path, lines)
    shipped = [json.loads(line) for line in copy.read_bytes().splitlines()]
    assert len(shipped) == len(lines)
    hashes = [line_hash(line) for line in lines]
    assert shipped[0]["line_hash"] == hashes[0] and shipped[0]["reason"] == "start"
    assert [r.get("chain_hash") for r in shipped[1:]] == hashes[1:]
    assert [r.get("decision_id") for r in shipped] == [None, "a", "b", None, None, "d"]
    assert shipped[2]["input"]["path"] == "/x\ufffd"  # the surrogate, readable
    assert shipped[3]["damaged"] == lines[3].decode()
    assert shipped[5]["input"]["q"] == "caf\u00e9 \u2603"


async def test_a_seq_beyond_64_bits_is_not_counted_as_the_log_seq(tmp_path: Path) -> None:
    """A hand-edited seq no 64-bit integer holds: the parsed path reads it as a
    float (orjson) and doesn't count it; counted, it would be the shipper's
    acknowledged seq, and its report (sent to the gateway with orjson) could
    not be encoded: the shipping process's stats would stop."""
    lines = [
        orjson.dumps({"decision_id": "a", "seq": 1}),
        b'{"decision_id":"b","seq":123456789012345678901234567890}',
    ]
    shipper, _ = await ship_opa(tmp_path, lines)
    orjson.dumps(shipper.report())  # what the shipping process sends the gateway
    assert shipper.report()["acked_seq"] == 1
    raw, digest = lines[1], line_hash(lines[1])
    quick = encode_line(raw, digest)
    for name, sink in SINKS.items():  # the syslog header's seq too
        shipped = sink.encode_json(*quick) if quick else parsed_path(sink, raw, digest)
        assert shipped == parsed_path(sink, raw, digest), name


def test_a_carriage_return_between_tokens_does_not_split_the_shipped_line() -> None:
    """JSON allows a bare CR between tokens (the writer never writes one); shipped
    as it is, a JSON-lines copy would hold it mid-record, and a reader breaking
    lines at CR (Splunk's default LINE_BREAKER, universal newlines) would read
    two lines, neither JSON."""
    raw = b'{"decision_id":"d",\r"seq":1}'
    digest = line_hash(raw)
    quick = encode_line(raw, digest)
    for name, sink in SINKS.items():
        shipped = sink.encode_json(*quick) if quick else parsed_path(sink, raw, digest)
        assert b"\r" not in shipped, name


@pytest.mark.parametrize(
    ("raw", "last"),
    [
        (b'{"decision_id":"d","seq":1,"seq":2}', {"seq": 2}),
        (b'{"decision_id":"d","seq":1,"se\\u0071":2}', {"seq": 2}),
        (b'{"type":"chain_signature","seq":1,"type":"x"}', {"type": "x"}),
        (b'{"decision_id":"d","result":{"allow":true,"allow":false},"seq":1}',
         {"result": {"allow": False}}),
    ],
)  # fmt: skip
def test_a_hand_edited_line_with_a_key_twice_ships_as_written_and_is_read_by_its_last(
    raw: bytes, last: dict[str, Any]
) -> None:
    """RFC 8259 leaves a repeated name's meaning open (Python and Go read the
    last, Elasticsearch refuses the document). Finding one anywhere needs the
    full parse this path avoids, and the writer never writes one: such a line
    (an edited log, which `audit verify` reports) ships as written, as the
    README says, and the shipper's own reading of it (the syslog header, the
    seq it counts, chain_hash or line_hash) takes the last value, as parsed."""
    digest = line_hash(raw)
    quick = encode_line(raw, digest)
    assert quick is not None
    head, text = quick
    assert text.startswith(raw[:-1])
    for name, value in last.items():
        assert head[name] == value
    key = "line_hash" if head.get("type") == SIGNATURE_TYPE else "chain_hash"
    assert json.loads(text)[key] == digest


def test_a_hand_edited_number_beyond_a_double_ships_as_written() -> None:
    """1e400 (the writer can't write it: orjson has no infinity, its fallback
    writes "Infinity", which is no JSON and is parsed): ships as written, as the
    README says; parsed, it was null."""
    raw = b'{"decision_id":"d","input":{"n":1e400},"seq":1}'
    quick = encode_line(raw, line_hash(raw))
    assert quick is not None
    assert quick[1].startswith(raw[:-1])
