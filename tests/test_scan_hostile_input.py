"""`portcullis scan` on input written to fool or crash it: suppression text
that is not a comment, and values, expressions and chains of references
nested deeper than the scanner follows. Each gets the documented behaviour (a
finding that is not suppressed, an exit-2 error naming the place) and never
a traceback or a silent pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from iac_scanner.hcl import parse_text
from iac_scanner.modules import literal_value
from tests.test_scan_cli import scan_json

PUBLIC_BUCKET = 'resource "aws_s3_bucket" "site" {\n  acl = "public-read"\n'


def _findings(report: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {(f["rule_id"], f["resource"]): f["suppressed"] for f in report["findings"]}


# --- suppressions are comments, never text ------------------------------------------------


def test_a_suppression_marker_inside_a_string_suppresses_nothing(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(
        'resource "aws_security_group" "web" {\n'
        '  description = "ops // portcullis:ignore=PC-TF-005 looks like a comment"\n'
        "  ingress {\n"
        "    from_port   = 22\n"
        "    to_port     = 22\n"
        '    protocol    = "tcp"\n'
        '    cidr_blocks = ["0.0.0.0/0"]\n'
        "  }\n"
        "}\n"
    )
    code, report = scan_json(str(tmp_path))
    assert code == 1
    assert _findings(report) == {("PC-TF-005", "aws_security_group.web"): None}
    assert report["summary"]["suppressed"] == 0


def test_a_suppression_marker_inside_a_heredoc_suppresses_nothing(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(
        PUBLIC_BUCKET + "  policy = <<EOT\n"
        '{"Version": "2012-10-17", "Statement": []}\n'
        "# portcullis:ignore=PC-TF-006 text inside a heredoc, not a comment\n"
        "EOT\n"
        "}\n"
    )
    code, report = scan_json(str(tmp_path))
    assert code == 1
    assert _findings(report) == {("PC-TF-006", "aws_s3_bucket.site"): None}


def test_suppressions_in_hash_and_slash_comments_still_suppress(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(
        "# portcullis:ignore=PC-TF-006 hash comment above\n"
        + PUBLIC_BUCKET
        + "}\n"
        + PUBLIC_BUCKET.replace('"site"', '"slash"')
        + "  // portcullis:ignore=PC-TF-006 slash comment inside\n}\n"
        + PUBLIC_BUCKET.replace('"site"', '"trailing"').replace(
            '"public-read"\n', '"public-read" # portcullis:ignore=PC-TF-006 trailing\n'
        )
        + "}\n"
    )
    code, report = scan_json(str(tmp_path))
    assert code == 0
    assert _findings(report) == {
        ("PC-TF-006", "aws_s3_bucket.site"): "hash comment above",
        ("PC-TF-006", "aws_s3_bucket.slash"): "slash comment inside",
        ("PC-TF-006", "aws_s3_bucket.trailing"): "trailing",
    }


def test_a_block_comment_is_a_comment_and_suppresses(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(
        "/*\n * portcullis:ignore=PC-TF-006 block comment above\n */\n"
        + PUBLIC_BUCKET
        + "}\n"
        + PUBLIC_BUCKET.replace('"site"', '"trailing"').replace(
            '"public-read"\n', '"public-read" /* portcullis:ignore=PC-TF-006 trailing */\n'
        )
        + "}\n"
    )
    code, report = scan_json(str(tmp_path))
    assert code == 0
    assert _findings(report) == {
        ("PC-TF-006", "aws_s3_bucket.site"): "block comment above",
        ("PC-TF-006", "aws_s3_bucket.trailing"): "trailing",
    }


def test_comments_are_found_beside_operators_templates_and_crlf() -> None:
    text = (
        'resource "aws_s3_bucket" "a" { # portcullis:ignore=PC-TF-006 first\r\n'
        "  count = 4 / 2 < 3 ? 1 : 0 // portcullis:ignore=PC-TF-006 second\r\n"
        '  tags = { n = "${{ k = "}" }["k"]}" } /* portcullis:ignore=PC-TF-006 third */\r\n'
        "}\r\n"
        "/* several\r\n   lines\r\n   portcullis:ignore=PC-TF-006 fourth\r\n*/\r\n"
        "\r\n"
        'resource "aws_s3_bucket" "b" {}\r\n'
    )
    assert parse_text(text)["comments"] == [
        [1, "portcullis:ignore", "PC-TF-006 first", 1],
        [2, "portcullis:ignore", "PC-TF-006 second", 2],
        [3, "portcullis:ignore", "PC-TF-006 third", 3],
        [7, "portcullis:ignore", "PC-TF-006 fourth", 10],
    ]


# Text that HCL reads as string content wherever it is put below: comment
# openers, braces, quotes, backslashes and (escaped) template sequences. A
# lone `$` or `%` before `{` is left out: python-hcl2 wants `$${` closed.
_CONTENT = st.lists(
    st.sampled_from([*' ab#/*{}"\\<-=:,\t', "${a}", "%{b}", "EOT"]), max_size=12
).map("".join)
_MARKER = st.sampled_from(["# ", "//", "/* ", "", "#", "// "]).map(
    lambda opener: f"{opener}portcullis:ignore=PC-TF-006 not a comment"
)


def _quoted(content: str) -> str:
    """content as the inside of an HCL quoted string."""
    escaped = content.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return escaped.replace("${", "$${").replace("%{", "%%{")


def _placements(content: str) -> list[tuple[str, str | None]]:
    """(an HCL expression holding content as text, content's value when the
    expression is plain text)."""
    lines = content.split("\n")
    heredoc = "\n".join(line for line in lines if line.strip() != "EOT")
    heredoc_body = heredoc.replace("${", "$${").replace("%{", "%%{")
    return [
        (f'"{_quoted(content)}"', content),
        (f"<<EOT\n{heredoc_body}\nEOT\n", heredoc + "\n"),
        (f"<<-EOT\n  {heredoc_body}\n  EOT\n", None),
        (f'"a ${{lower("{_quoted(content)}")}} b"', None),
        (f'"${{{{ k = "{_quoted(content)}" }}["k"]}}"', content),
        (f'"%{{ if true }}{_quoted(content)}%{{ endif }}"', None),
        (f'<<EOT\n${{"{_quoted(content)}"}}\nEOT\n', None),
    ]


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(
    before=_CONTENT,
    after=_CONTENT,
    marker=_MARKER,
    newline=st.booleans(),
    placement=st.integers(min_value=0, max_value=6),
    real=st.sampled_from([None, "above", "trailing"]),
)
def test_suppression_text_in_strings_and_heredocs_is_never_a_comment(
    before: str,
    after: str,
    marker: str,
    newline: bool,
    placement: int,
    real: str | None,
) -> None:
    """A marker anywhere inside string, heredoc or template text (with comment
    openers, braces, quotes and escapes around it) is never a suppression; a
    real comment beside it still is, for the line below it or its own line."""
    content = before + ("\n" if newline else "") + marker + after
    expression, value = _placements(content)[placement]
    ends_line = expression.endswith("\n")
    attribute = f"  policy = {expression}" + ("" if ends_line else "\n")
    head = PUBLIC_BUCKET
    expected: list[list[Any]] = []
    if real == "above":
        head = "# portcullis:ignore=PC-TF-006 a real comment\n" + head
        expected = [[1, "portcullis:ignore", "PC-TF-006 a real comment", 2]]
    elif real == "trailing":
        head = head.replace("\n", "  # portcullis:ignore=PC-TF-006 a real comment\n", 1)
        expected = [[1, "portcullis:ignore", "PC-TF-006 a real comment", 1]]
    parsed = parse_text(head + attribute + "}\n")
    [block] = parsed["blocks"]
    if value is not None:
        # The marker really is inside the text the attribute holds.
        assert literal_value(block["attrs"]["policy"]) == value
    assert parsed["comments"] == expected
