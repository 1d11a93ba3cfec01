"""The fast HCL reader (iac_scanner/hcl_fast.py) against python-hcl2: on every
fixture and corpus file and on generated text, it gives exactly what the
python-hcl2 walk gives, or declines; it never accepts what python-hcl2
rejects."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iac_scanner import hcl_fast
from iac_scanner.hcl import (
    HclSyntaxError,
    parse_body_slow,
    parse_expression,
    parse_expression_slow,
    parse_text,
)
from iac_scanner.hcl_fast import read_plain, read_plain_expression
from tests.conftest import ROOT

CORPUS = ROOT.parent / "shared/corpus/terraform"
FIXTURES = ROOT / "tests/fixtures/terraform"


def _slow(text: str) -> Any:
    """python-hcl2's reading, or the kind of failure it ends in."""
    try:
        return list(parse_body_slow(text))
    except HclSyntaxError:
        return "syntax error"
    except (ValueError, RecursionError) as error:
        return f"crash: {type(error).__name__}"


def _same(fast: Any, slow: Any) -> bool:
    # JSON text tells 1 from 1.0 and True from 1, which == does not.
    return json.dumps(fast) == json.dumps(slow)


def _assert_agrees(text: str) -> bool:
    """The fast reading equals python-hcl2's, or the fast reader declined.
    Returns whether it read the text."""
    fast = read_plain(text)
    if fast is None:
        return False
    slow = _slow(text)
    assert not isinstance(slow, str), f"fast reader accepted what python-hcl2 rejects ({slow})"
    assert _same(list(fast), slow), f"readings differ for:\n{text}"
    return True


def _tf_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.tf") if p.is_file())


def test_terminal_patterns_are_python_hcl2s() -> None:
    """The reader's tokens are the installed grammar's terminals: an upgrade
    that changes one fails here rather than reading files differently."""
    from hcl2.parser import parser

    terminals = {t.name: t.pattern.to_regexp() for t in parser().terminals}
    for name in (
        "NL_OR_COMMENT",
        "NAME",
        "INT_LITERAL",
        "FLOAT_LITERAL",
        "ESCAPED_INTERPOLATION",
        "ESCAPED_DIRECTIVE",
        "STRING_CHARS",
        "HEREDOC_TEMPLATE",
        "HEREDOC_TEMPLATE_TRIM",
    ):
        assert getattr(hcl_fast, name) == terminals[name], name
    assert terminals["__IGNORE_0"] == hcl_fast.IGNORED


def _check_file(path: Path) -> tuple[str, str]:
    """("read" | "declined" | "skipped", "") or ("failed", why) for one file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        return "skipped", ""
    try:
        return ("read" if _assert_agrees(text) else "declined"), ""
    except AssertionError as error:
        return "failed", f"{path}: {error}"


@pytest.mark.parametrize("root", [FIXTURES, CORPUS], ids=["fixtures", "corpus"])
def test_fast_reader_matches_python_hcl2_on_every_file(root: Path) -> None:
    if not root.is_dir():
        pytest.skip(f"{root} is not here")
    # python-hcl2 takes ~10 ms a file: both cores.
    with ProcessPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(_check_file, _tf_files(root), chunksize=16))
    failures = [why for outcome, why in outcomes if outcome == "failed"]
    assert not failures, "\n".join(failures[:5])
    read = sum(1 for outcome, _ in outcomes if outcome == "read")
    declined = sum(1 for outcome, _ in outcomes if outcome == "declined")
    assert read > 0
    # Real configurations are plain HCL: nearly all take the fast path (the
    # corpus's declined files are ones python-hcl2 rejects too).
    assert declined <= max(5, (read + declined) // 50), f"{declined} declined of {read + declined}"


def test_fast_reader_declines_what_python_hcl2_rejects() -> None:
    for text in [
        'resource "a" "b" {\n  x = @\n}\n',
        "a = /* c */ 1\n",
        "a = !!x\n",
        "a = [1\n- 2]\n",
        "a = f(a\n...)\n",
        "a = f(a\n,)\n",
        'a = "${x\n}"\n',
        "a = 1\n\n+ 2\n",
        'a = "unterminated\n',
        "b {\n",
        "a = <<EOF\nno end\n",
        "a = x.\n",
        "a = {a = 1,,}\n",
    ]:
        assert read_plain(text) is None, text
        with pytest.raises(HclSyntaxError):
            parse_body_slow(text)


def test_fast_reader_reads_plain_configuration() -> None:
    text = """
resource "aws_instance" "web" {
  count         = var.n > 0 ? var.n : 1
  ami           = data.aws_ami.x.id
  tags          = merge(local.tags, { Name = "web-${count.index}" })
  sgs           = aws_security_group.web[*].id
  names         = [for s in var.subnets : upper(s.name) if s.public]
  by_name       = { for k, v in var.m : k => v... }
  user_data     = <<-EOT
    #!/bin/sh
    echo ${var.greeting}
  EOT
  ratio = -1.5e3 * (2 + 3) % 4
  dynamic "ebs" {
    for_each = var.disks
    content { size = ebs.value.size }
  }
}
"""
    assert read_plain(text) is not None
    assert _assert_agrees(text)


def test_number_python_hcl2_lexes_wrongly_is_a_syntax_error_not_a_crash() -> None:
    """`-1-1.5` is one float token to python-hcl2's lexer; it used to escape
    as a ValueError traceback."""
    assert read_plain("x = -1-1.5\n") is None
    with pytest.raises(HclSyntaxError, match="is not a number"):
        parse_text("x = -1-1.5\n")


def test_parse_text_and_expression_use_the_fast_path_with_identical_results() -> None:
    text = 'locals {\n  a = "x${1 + 2}"\n}\n'
    assert parse_text(text)["blocks"] == parse_body_slow(text)[1]
    for source in ['"a-${b}"', "[1, 2]", "{ a = 1 }", "x ? y : z", "f(a...)", "-12.5"]:
        assert read_plain_expression(source) is not None, source
        assert _same(parse_expression(source), parse_expression_slow(source))
    # Two attributes: the reference takes the first; the fast reader declines.
    assert read_plain_expression("1\nx = 2") is None
    assert parse_expression("1\nx = 2") == ["lit", 1]


# --- generated text ----------------------------------------------------------

# Mostly what real files hold, some of what only python-hcl2's grammar allows
# (keywords as names, odd spacing) and some of what neither reads.
_WORDS = st.sampled_from(["a", "b_1", "x-y", "var", "local", "each", "count", "data", "self", "e"])
_KEYWORD_WORDS = st.sampled_from(
    ["for_each", "in", "if", "for", "else", "endif", "endfor", "true", "false", "null"]
)
_NAMES = st.one_of(_WORDS, _WORDS, _WORDS, _KEYWORD_WORDS)
_SPACE = st.sampled_from(["", " ", "  ", "\t", " \r"])
_NEWLINE = st.sampled_from(["\n", "\r\n", " # c\n", " // c\n", "\n\n", "\n  # c\n"])
_BREAK = st.one_of(_NEWLINE, _NEWLINE, st.just(" /* c */ "))


def _pad(token: str) -> st.SearchStrategy[str]:
    return st.tuples(_SPACE, _SPACE).map(lambda s: s[0] + token + s[1])


_GOOD_PIECES = st.sampled_from(
    ["a", "b c", "\\n", '\\"', "\\\\", "\\u00e9", "\\U0001F600", "$", "%", "$${x}", "%%{y}", "é"]
)
_ODD_PIECES = st.sampled_from(
    ["\\q", "$$", "%%", '$${a"}', "${", "%{ if x }y%{ endif }", "\\", "\n", "{", "}"]
)
_STRING_PIECES = st.one_of(_GOOD_PIECES, _GOOD_PIECES, _GOOD_PIECES, _ODD_PIECES)
_GOOD_NUMBERS = st.sampled_from(
    ["0", "7", "42", "007", "1.5", "0.25", "1e3", "2E-2", "1.5e+3", "-1", "-12", "-1.5", "-1e3"]
)
_NUMBERS = st.one_of(
    _GOOD_NUMBERS, _GOOD_NUMBERS, st.sampled_from(["-1-1.5", "1.", ".5", "1..2", "- 5", "--12"])
)
_OPERATORS = st.sampled_from(
    ["+", "-", "*", "/", "%", "==", "!=", "<", ">", "<=", ">=", "&&", "||"]
)


def _expressions() -> st.SearchStrategy[str]:
    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        separator = st.one_of(_pad(","), _BREAK, st.tuples(_BREAK, _pad(",")).map("".join))
        items = st.lists(inner, max_size=3)
        string = st.lists(
            st.one_of(_STRING_PIECES, inner.map(lambda e: "${" + e + "}")), max_size=4
        ).map(lambda parts: '"' + "".join(parts) + '"')
        tuple_ = st.tuples(items, separator, st.booleans(), _BREAK | _SPACE).map(
            lambda t: "[" + t[3] + t[1].join(t[0]) + ("," if t[2] else "") + "]"
        )
        element = st.tuples(st.one_of(_NAMES, string, inner), _pad("=") | _pad(":"), inner).map(
            "".join
        )
        object_ = st.tuples(st.lists(element, max_size=3), separator, _BREAK | _SPACE).map(
            lambda t: "{" + t[2] + t[1].join(t[0]) + t[2] + "}"
        )
        call = st.tuples(
            _NAMES,
            st.sampled_from(["", "provider::aws::"]),
            items,
            separator,
            st.sampled_from(["", ",", "...", "\n", ",\n"]),
        ).map(lambda t: t[1] + t[0] + "(" + t[3].join(t[2]) + t[4] + ")")
        binary = st.tuples(inner, _OPERATORS, st.sampled_from(["", "\n", " # c\n"]), inner).map(
            lambda t: f"{t[0]} {t[1]}{t[2]} {t[3]}"
        )
        conditional = st.tuples(inner, _BREAK | _SPACE, inner, _BREAK | _SPACE, inner).map(
            lambda t: f"{t[0]} ?{t[1]}{t[2]}{t[3]}: {t[4]}"
        )
        postfix = st.tuples(
            inner,
            st.lists(
                st.one_of(
                    _NAMES.map(lambda n: "." + n),
                    st.sampled_from(
                        [".0", ".12", "[*]", ".*", "[0]", " [1]", "[ x ]", ". a", ".\n"]
                    ),
                    inner.map(lambda e: "[" + e + "]"),
                ),
                min_size=1,
                max_size=3,
            ),
        ).map(lambda t: t[0] + "".join(t[1]))
        unary_ = st.tuples(st.sampled_from(["-", "!", "- ", "!-"]), inner).map("".join)
        parens = st.tuples(inner, _BREAK | _SPACE).map(lambda t: "(" + t[1] + t[0] + t[1] + ")")
        for_ = st.tuples(
            st.sampled_from(["x", "k, v", "k,v", "if"]),
            inner,
            inner,
            st.sampled_from(["", " if x", "\nif x\n"]),
            st.booleans(),
            st.sampled_from(["", "...", "\n"]),
        ).map(
            lambda t: (
                f"[for {t[0]} in {t[1]} : {t[2]}{t[3]}]"
                if t[4]
                else f"{{for {t[0]} in {t[1]} : {t[2]} => {t[2]}{t[5]}{t[3]}}}"
            )
        )
        return st.one_of(
            string, tuple_, object_, call, binary, conditional, postfix, unary_, parens, for_
        )

    heredoc = st.tuples(
        st.sampled_from(["EOF", "E", "x.y"]),
        st.booleans(),
        st.lists(
            st.sampled_from(["  a", "b ${x}", "%{ if y }z%{ endif }", "", "\t c", "EOFX"]),
            max_size=3,
        ),
        st.sampled_from(["", "  ", "\t"]),
        st.sampled_from(["", "", "", " ", "X"]),
    ).map(
        lambda t: (
            ("<<-" if t[1] else "<<")
            + t[0]
            + "\n"
            + "".join(line + "\n" for line in t[2])
            + t[3]
            + t[0]
            + t[4]
            + "\n"
        )
    )
    leaves = st.one_of(
        _NAMES,
        _NUMBERS,
        st.lists(_STRING_PIECES, max_size=3).map(lambda parts: '"' + "".join(parts) + '"'),
        heredoc,
    )
    return st.recursive(leaves, extend, max_leaves=8)


_EXPRESSIONS = _expressions()


def _bodies(depth: int) -> st.SearchStrategy[str]:
    equals = st.one_of(_pad("="), _pad("="), _pad("="), st.just(" =\n"))
    attribute = st.tuples(_NAMES, equals, _EXPRESSIONS).map("".join)
    items: st.SearchStrategy[str] = attribute
    if depth > 0:
        label = st.one_of(_NAMES, st.sampled_from(['"aws_s3_bucket"', '"x${y}z"', '"a\\tb"', '""']))
        block = st.tuples(
            _NAMES,
            st.lists(label, max_size=2),
            st.sampled_from([" ", "\n", ""]),
            _bodies(depth - 1),
        ).map(lambda t: " ".join([t[0], *t[1]]) + t[2] + "{" + t[3] + "}")
        items = st.one_of(attribute, block)
    separator = st.one_of(_NEWLINE, _NEWLINE, _NEWLINE, _BREAK, _SPACE)
    return st.tuples(st.lists(st.tuples(separator, items), max_size=4), separator).map(
        lambda t: "".join(a + b for a, b in t[0]) + t[1]
    )


@settings(max_examples=400, derandomize=True, deadline=None, database=None)
@given(_bodies(2))
def test_generated_configurations_read_alike(text: str) -> None:
    _assert_agrees(text)


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(_EXPRESSIONS)
def test_generated_expressions_read_alike(text: str) -> None:
    assert _assert_agrees(f"x = {text}\n") or read_plain(f"x = {text}\n") is None
    fast = read_plain_expression(text)
    if fast is not None:
        try:
            slow = parse_expression_slow(text)
        except HclSyntaxError:
            pytest.fail(f"fast reader accepted an expression python-hcl2 rejects: {text!r}")
        assert _same(fast, slow), text


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(_bodies(1), st.data())
def test_damaged_configurations_are_declined_or_read_alike(text: str, data: st.DataObject) -> None:
    """One character inserted or removed anywhere: the fast reader declines or
    agrees with python-hcl2, never reads what python-hcl2 rejects."""
    if text:
        at = data.draw(st.integers(0, len(text)))
        if data.draw(st.booleans()):
            text = (
                text[:at] + data.draw(st.sampled_from(list('{}[]()"=,.$%~\\#/*\n-<'))) + text[at:]
            )
        else:
            text = text[:at] + text[at + 1 :]
    _assert_agrees(text)
