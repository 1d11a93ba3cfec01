"""A query of up to `limits.max_query_params` parameters, whatever their names,
costs the gateway about what its length does: the policy's parsed_query and the
decision log's masking are each checked here against what they did before they
were made cheap (the same answers for every query), and timed in the same test
against a query as long that was always cheap."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, quote

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.audit.chain import REDACTED
from gateway.audit.redaction import (
    _PARAM_SPLIT,
    DEFAULT_MASKED_QUERY_PARAMS,
    Redactor,
    holds_jwt,
)
from gateway.identity import ANONYMOUS
from gateway.policy.decision import decision_input, unparsed_input
from gateway.screening.paths import NormalizedPath, PathRejected, normalize
from tests.cpu_cost import cpu_ratio
from tests.test_attack_decision_cost import WMS


class ReferenceRedactor(Redactor):
    """The masking as it was before it searched for suspect pieces first: every
    piece of a query looked at in Python, a URL within a URL the same way."""

    def _mask_pairs(self, text: str, depth: int = 0) -> str:
        parts = _PARAM_SPLIT.split(text)
        changed = False
        for index in range(0, len(parts), 2):
            name, equals, value = parts[index].partition("=")
            if holds_jwt(name):
                parts[index] = REDACTED
                changed = True
            elif equals and (
                self.secret_param(name) or holds_jwt(value) or self._url_secret(value, depth)
            ):
                parts[index] = f"{name}={REDACTED}"
                changed = True
        return "".join(parts) if changed else text


def reference_parsed_query(query: str) -> dict[str, list[str]]:
    """parsed_query as it was: the standard library's reading."""
    return parse_qs(query, keep_blank_values=True)


# Pieces a name or value is built of: secret words in any case, the separators a
# name is read through, their percent-encodings (either hex case), `+`, escapes
# that are not UTF-8 or decode to `&`, `=`, `;`, `?`, `#`, the Kelvin sign
# (lower-cased to `k`) or `İ` (to `i` and a dot), escapes whose hex digits spell a
# mark (`%2eyJ`, `%Acode`), secret names with only a letter escaped (`%74oken`),
# JWT starts raw and encoded, URLs and nested queries.
FRAGMENTS = (
    "token", "TOKEN", "Key", "sig", "session", "id", "ID", "code", "auth", "jwt",
    "apikey", "api", "access", "password", "pwd", "assertion", "samlresponse",
    "a", "b", "x", "1", "42", "stock", "item",
    ".", "-", "_", "[", "]", "+", "%2E", "%2d", "%5B", "%5d", "%5F", "%20",
    "%74", "%54", "%6B", "%6b", "%4B", "%65", "%79", "%4A", "%4a", "%6F%6B%65%6E",
    "%E2%84%AA", "%E2%84", "%F0%9F", "%C3", "%FF", "%C3%A9",
    "%26", "%3D", "%3B", "%3F", "%23", "%25",
    "%2565", "%", "%zz", "%4", "%3f", "%41%41%41", "%3b", "%C4%B0", "%2e", "%Ac", "yJhb.x",
    "oken", "ey", "%63", "ode",
    "eyJ", "eyj", "EYJ", "eyJhbGciOiJIUzI1NiJ9.e30.x",
    "%65yJhbGciOi.x", "eyJhb+.x", "?", "#", "=", "https://app/cb?code=1", "%3Fcode%3D1",
    "?next=https%3A%2F%2Fa%2F%3Ftoken%3Dx",
)  # fmt: skip


# Besides those, for the policy's parse: halves of escapes and of UTF-8 sequences
# that a separator may cut (`%2` then `6`, `%C3` then `%A9`), encoded
# separators in either case, an encoded surrogate, an overlong and a past-U+10FFFF
# sequence, raw non-ASCII and a lone surrogate (which unquote keeps as they are).
PARSE_FRAGMENTS = (
    *FRAGMENTS,
    "%2", "6", "%3", "d", "D", "%A9", "%AA", "%84%AA", "%9F%98%80", "%3d", "%2b", "%2B", "==",
    "%ED%A0%80", "%C0%AF", "%F4%90%80%80", "%00", "%C", "%E2", "\u00e9", "\udcff", "\U0001f600",
)  # fmt: skip


def words(fragments: tuple[str, ...] = FRAGMENTS) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(fragments), max_size=4).map("".join)


def queries(fragments: tuple[str, ...] = FRAGMENTS) -> st.SearchStrategy[str]:
    """Queries of empty pieces, bare names, `name=value` pairs, repeated names,
    split on `&` and `;`."""
    piece = st.one_of(
        st.just(""),
        words(fragments),
        st.tuples(words(fragments), words(fragments)).map("=".join),
        st.sampled_from(("a=1", "a=2", "token=t", "a")),  # names repeated
    )
    return st.lists(st.tuples(piece, st.sampled_from("&;")), max_size=12).map(
        lambda pairs: "".join(p + s for p, s in pairs)[:-1]
    )


# Besides the defaults: entries with `_`, digits, one of 2 letters, and one that
# has no mark (a space), which makes every piece be looked at.
CONFIGS = (
    (),
    ("access_token", "x_y", "k2", "ab"),
    ("my param", "token"),
)


@settings(
    max_examples=2000, derandomize=True, database=None, deadline=None,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip
@given(query=queries(), fragment=st.none() | queries(), config=st.sampled_from(CONFIGS))
def test_the_log_masks_every_query_exactly_as_before(
    query: str, fragment: str | None, config: tuple[str, ...]
) -> None:
    """Property: the masked target (query, fragment, a URL within a URL) is the
    same text, character for character, as when every piece was looked at."""
    extra = {"mask_query_params": config} if config else {}
    new, old = Redactor(**extra), ReferenceRedactor(**extra)
    target = f"/wms/stock?{query}" + (f"#{fragment}" if fragment is not None else "")
    assert new.mask_url(target) == old.mask_url(target), target
    assert new._mask_pairs(query) == old._mask_pairs(query), query


@st.composite
def escaped_names(draw: st.DrawFn) -> str:
    """A secret entry (or a name holding one) with any of its characters
    percent-encoded, in either hex case: secret only once decoded."""
    name = (
        draw(st.sampled_from(("", "access_", "x", "my.")))
        + draw(st.sampled_from(DEFAULT_MASKED_QUERY_PARAMS))
        + draw(st.sampled_from(("", "_id", "id", "[]", "x")))
    )
    escapes = draw(
        st.lists(st.sampled_from(("", "%%%02x", "%%%02X")), min_size=len(name), max_size=len(name))
    )
    return "".join(
        form % ord(char) if form else char for char, form in zip(name, escapes, strict=True)
    )


@settings(
    max_examples=1000, derandomize=True, database=None, deadline=None,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip
@given(
    pieces=st.lists(
        st.tuples(st.one_of(escaped_names(), words()), words(), st.sampled_from("&;")),
        min_size=1, max_size=8,
    ),
)  # fmt: skip
def test_the_log_masks_percent_encoded_secret_names_exactly_as_before(
    pieces: list[tuple[str, str, str]],
) -> None:
    """Property: a query whose secret names are percent-encoded (`%74oken=`, the
    pieces found by decoding all names at once) is masked as when each name was
    decoded on its own."""
    query = "".join(f"{name}={value}{separator}" for name, value, separator in pieces)[:-1]
    assert Redactor()._mask_pairs(query) == ReferenceRedactor()._mask_pairs(query), query


@settings(
    max_examples=2000, derandomize=True, database=None, deadline=None,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip
@given(query=queries(PARSE_FRAGMENTS))
@example(query="a=%C3&b=%A9")
@example(query="a=%E2%84&%AA")
@example(query="a%2&6=1&%3D=%26&b%3d%3Dc=d")
@example(query="%61=1&\udcff=%C3&%A9")
def test_the_policy_sees_the_same_parsed_query_as_before(query: str) -> None:
    """Property: parsed_query is the standard library's parse_qs reading (names
    and values `+`- and percent-decoded, non-UTF-8 as U+FFFD, empty pieces
    skipped, `;` not a separator, repeated names in order), key order included:
    an escape or a UTF-8 sequence cut by `&` or `=` decodes as its halves do
    (`a=%C3&b=%A9` is two U+FFFD, not an `é` spread over them), and `%26` and
    `%3D` are a name's or value's `&` and `=`, never separators."""
    parsed = NormalizedPath("/wms/stock", query, (), False, "/wms/stock").parsed_query()
    expected = reference_parsed_query(query)
    assert parsed == expected, query
    assert list(parsed) == list(expected), query


# `decision_log.mask_query_params` as a user may write it: one or two letters, names
# that hold each other, upper case, `.`, `-`, `[]` and digits, a non-ASCII letter and
# one (the Kelvin sign) that lower-cases to ASCII.
USER_CONFIGS = (
    ("t", "id"),
    ("X-Amz-Signature", "Api.Key", "k2", "a_b", "tok"),
    ("access_token", "token", "access", "ac"),
    ("jéton", "\u212a", "S3cret", "x[y]", "p-w-d", "_u_"),
    ("code", "c0de", "sessionid", "sess", "auth_code"),
)


SEPARATORS = (".", "-", "_", "[", "]", "+", "%5D", "%2E", "__", "][", "id", "ID")


def spelled(name: str) -> st.SearchStrategy[str]:
    """``name`` as a client may spell it: in another case, percent-encoded, or with
    a name separator (or `id`) put anywhere in it."""
    return st.one_of(
        st.sampled_from((name, name.upper(), name.swapcase(), quote(name, safe=""))),
        st.tuples(st.integers(0, len(name)), st.sampled_from(SEPARATORS)).map(
            lambda cut: name[: cut[0]] + cut[1] + name[cut[0] :]
        ),
    )


def user_queries(names: tuple[str, ...]) -> st.SearchStrategy[str]:
    """Queries whose words are mostly spellings of ``names``."""
    spellings = st.sampled_from(names or DEFAULT_MASKED_QUERY_PARAMS).flatmap(spelled)
    word = st.lists(spellings | spellings | st.sampled_from(FRAGMENTS), max_size=4).map("".join)
    piece = st.one_of(st.just(""), word, st.tuples(word, word).map("=".join))
    return st.lists(st.tuples(piece, st.sampled_from("&;")), max_size=8).map(
        lambda pairs: "".join(p + s for p, s in pairs)[:-1]
    )


@settings(
    max_examples=400, derandomize=True, database=None, deadline=None,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip
@given(config=st.sampled_from(((), *USER_CONFIGS)), data=st.data())
def test_attack_no_spelling_of_a_configured_name_logs_more_of_a_request_than_before(
    config: tuple[str, ...], data: st.DataObject
) -> None:
    """Property: whatever names `mask_query_params` holds, the whole event as the
    gateway builds it (path, parsed_query, a Referer with a query and a fragment)
    is logged exactly as when every query piece was looked at, and so is a
    refused request's line holding the same query and fragment."""
    query, referer, fragment = (data.draw(user_queries(config)) for _ in range(3))
    extra = {"mask_query_params": config} if config else {}
    new, old = Redactor(**extra), ReferenceRedactor(**extra)
    target = f"/wms/stock?{query}"
    url = f"https://gw.example/a?{referer}#{fragment}"
    events = [unparsed_input(("192.0.2.1", 1), f"GET {url} HTTP/1.1".encode(), "request-1")]
    try:
        path = normalize(target)
    except PathRejected:
        pass
    else:
        request = make_mocked_request(
            "GET", target, headers={"Host": "gw.example", "Referer": url.encode().decode("latin-1")}
        )
        events.append(decision_input(request, path, WMS, ANONYMOUS, "request-1"))
    for document in events:
        logged_new, logged_old = {"input": document}, {"input": document}
        assert new.apply(logged_new) == old.apply(logged_old)
        assert logged_new == logged_old, (config, target, url)


# --- cost ---------------------------------------------------------------------------------

# Targets at limits.max_query_params (or, refused, any length the log is given):
# each a few KiB of request line. Before, masking them cost 0.5 to 2 ms, 30 to 100
# times masking a query of one value as long.
ATTACKS = {
    "1000 names": "&".join(f"a{index}=1" for index in range(1000)),
    "1000 names with +": "&".join(f"a+{index}=1" for index in range(1000)),
    "350 names like stock_item_N": "&".join(f"stock_item_{index}=pallet" for index in range(350)),
    "a value of 2600 escapes": "a=" + "%41" * 2600,
    "4000 empty pieces": "&" * 4000,
    "4000 bare ;": "a=" + ";" * 4000,
}
# A target's masking may cost this many times that of one value as long: the
# search for suspect pieces reads each character once, in C. (Measured: 0.8-3.4x;
# before, when every piece was looked at in Python, 9-32x.)
MAX_MASKING_RATIO = 8.0


def logged(target: str, redactor: Redactor) -> Callable[[], Any]:
    """The decision log's masking of a decided request's input (path, parsed_query),
    its names new to the redactor's cache as a client's invented names are."""
    request = make_mocked_request("GET", target, headers={"Host": "gw.example"})
    document = decision_input(request, normalize(target), WMS, ANONYMOUS, "request-1")

    def work() -> Any:
        redactor.secret_param.cache_clear()
        return redactor.apply({"input": document})

    return work


# 850 names of one escape each (`%610=1`, as many as fit the 8 KiB path) may
# cost the masking this many times one value as long: the names are decoded in
# one unquote call, ~0.4 µs an escape. Measured: after ~8-9x; before, each name
# decoded on its own (~6 µs a piece), 50-100x.
MAX_ESCAPED_NAMES_RATIO = 35.0


def test_attack_850_percent_encoded_query_names_cost_the_log_what_their_escapes_do() -> None:
    query = "&".join(f"%61{index}=1" for index in range(850))
    redactor = Redactor()
    attack = logged(f"/wms/stock?{query}", redactor)
    plain = logged(f"/wms/stock?a={'x' * (len(query) - 2)}", redactor)
    assert cpu_ratio(attack, plain) < MAX_ESCAPED_NAMES_RATIO


@pytest.mark.parametrize("query", list(ATTACKS.values()), ids=list(ATTACKS))
def test_attack_a_thousand_query_names_cost_the_log_what_their_length_does(query: str) -> None:
    """However many names (none of them secret), escapes or empty pieces a query
    holds, the decision log masks it for about what a query of one value of the
    same length costs."""
    redactor = Redactor()
    attack = logged(f"/wms/stock?{query}", redactor)
    plain = logged(f"/wms/stock?a={'x' * (len(query) - 2)}", redactor)
    assert cpu_ratio(attack, plain) < MAX_MASKING_RATIO


# 1,000 names of a `+` each (`a+1=1`: the parse_qs path, two unquote calls and a
# tuple per piece) may cost this many times 1,000 plain names (`a1=1`, always a
# split). Measured: after 0.7-1x, before 2.7-5x.
MAX_PARSE_RATIO = 1.8


def parsing(query: str) -> Callable[[], Any]:
    return NormalizedPath("/wms/stock", query, (), False, "/wms/stock").parsed_query


def test_attack_a_thousand_query_names_with_plus_cost_the_policys_parse_what_plain_names_do() -> (
    None
):
    plus = parsing("&".join(f"a+{index}=1" for index in range(1000)))
    plain = parsing("&".join(f"a{index}=1" for index in range(1000)))
    assert cpu_ratio(plus, plain) < MAX_PARSE_RATIO


# 850 names or values of one escape each (`%61N=1`, `aN=%31`: about as many as fit
# the 8 KiB path) may cost the policy's parse this many times 850 plain pieces
# (`aN=1`): the query is unquoted in one call, ~0.2 µs an escape, not one call
# (~1.5 µs) a piece. Measured: after 1.9-2.4x, before 6.5-7.5x.
MAX_ESCAPED_PARSE_RATIO = 4.0


@pytest.mark.parametrize("piece", ["%61{}=1", "a{}=%31"], ids=["names", "values"])
def test_attack_850_percent_encoded_query_pieces_cost_the_policys_parse_what_plain_ones_do(
    piece: str,
) -> None:
    escaped = parsing("&".join(piece.format(index) for index in range(850)))
    plain = parsing("&".join(f"a{index}=1" for index in range(850)))
    # A collection of the test process's heap inside a round of the plain parse
    # (ms, against its ~0.2 ms) would make the least ratio pass whatever the parse.
    assert cpu_ratio(escaped, plain) < MAX_ESCAPED_PARSE_RATIO


# A refused request line (512 bytes at most) whose query goes on past spaces may
# cost this many times the same text sent as a path's query. Measured: 1.2-1.7x;
# when each word after the target was masked on its own, 2.7-5.4x.
MAX_LINE_RATIO = 3.5


@pytest.mark.parametrize("word", ["b=1", "/a?b=1"])
def test_attack_a_refused_line_of_many_words_costs_the_log_what_its_query_would(word: str) -> None:
    redactor = Redactor()
    line = f"GET /a?b=1 {' '.join([word] * 100)} code=x HTTP/1.1"
    as_path = line.removeprefix("GET ").replace(" ", "&")
    assert REDACTED in redactor._mask_request_line(line)
    ratio = cpu_ratio(lambda: redactor._mask_request_line(line), lambda: redactor.mask_url(as_path))
    assert ratio < MAX_LINE_RATIO
