"""`portcullis scan` on input written to fool or crash it: suppression text
that is not a comment, and values, expressions and chains of references
nested deeper than the scanner follows. Each gets the documented behaviour (a
finding that is not suppressed, an exit-2 error naming the place) and never
a traceback or a silent pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iac_scanner.hcl import parse_text
from iac_scanner.loader import LoadOptions, load
from iac_scanner.modules import literal_value
from iac_scanner.plan import PlanError, load_plan
from iac_scanner.suppressions import parse_checkov_skips
from tests.test_scan_cli import errors, portcullis, scan_json

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


# --- plans nested deeper than Python recurses ---------------------------------------------

DEEP_VALUE_ERROR = (
    "aws_s3_bucket.b: `x` nests more than 100 levels deep, more than the policy engine "
    "evaluates; the resource was not judged (flatten the value)"
)


def _plan(values: str = '{"acl": "public-read"}', **sections: str) -> str:
    """A plan's JSON text with one bucket, aws_s3_bucket.b, whose values are
    `values`; each keyword is a top-level section's JSON text instead of the
    default one."""
    resource = (
        '{"address": "aws_s3_bucket.b", "mode": "managed", "type": "aws_s3_bucket", '
        f'"name": "b", "values": {values}}}'
    )
    parts = {
        "format_version": '"1.2"',
        "planned_values": f'{{"root_module": {{"resources": [{resource}]}}}}',
        **sections,
    }
    return "{" + ", ".join(f'"{key}": {text}' for key, text in parts.items()) + "}"


def _nested(depth: int, leaf: str = "1") -> str:
    return '{"a": ' * depth + leaf + "}" * depth


def test_a_plan_value_nested_hundreds_deep_is_the_documented_error(tmp_path: Path) -> None:
    for depth in (200, 600, 900):
        plan = tmp_path / f"deep{depth}.json"
        lists = "[" * depth + "1" + "]" * depth
        plan.write_text(_plan(f'{{"acl": "public-read", "x": {lists}}}'))
        result = portcullis("scan", "--no-cache", str(plan))
        assert result.returncode == 2
        assert errors(result)[0] == f"error: {plan}:1: {DEEP_VALUE_ERROR}"


def test_plan_json_deeper_than_the_reader_goes_is_an_error_at_its_position(
    tmp_path: Path,
) -> None:
    plan = tmp_path / "deep.json"
    text = _plan(f'{{"acl": "public-read", "x": {"[" * 5000}1{"]" * 5000}}}')
    plan.write_text(text)
    report_file = tmp_path / "report.json"
    result = portcullis(
        "scan", "--no-cache", str(plan), "--output", "json", "--output-file", str(report_file)
    )
    assert result.returncode == 2
    column = text.index("[" * 5000) + 5000
    message = (
        "JSON nested 5006 levels deep, deeper than the scanner reads "
        "(the policy engine evaluates values nested up to 100 levels)"
    )
    assert errors(result)[0] == f"error: {plan}:1:{column}: {message}"
    # The report is written all the same, with the error in it.
    report = json.loads(report_file.read_text())
    assert [e["message"] for e in report["errors"]] == [message]


# Where a plan can nest: a resource's values, its after_unknown, its
# configuration expressions, child modules and module calls.
def _deep_plan(shape: str, depth: int) -> str:
    if shape == "values":
        return _plan(f'{{"acl": "public-read", "x": {_nested(depth)}}}')
    if shape == "after_unknown":
        unknown = _nested(depth, "true")
        change = f'{{"address": "aws_s3_bucket.b", "change": {{"after_unknown": {unknown}}}}}'
        return _plan(resource_changes=f"[{change}]")
    if shape == "expressions":
        leaf = '{"references": ["aws_s3_bucket.c"]}'
        resource = (
            f'{{"address": "aws_s3_bucket.b", "expressions": {{"x": {_nested(depth, leaf)}}}}}'
        )
        return _plan(configuration=f'{{"root_module": {{"resources": [{resource}]}}}}')
    if shape == "child_modules":
        resource = '{"address": "aws_s3_bucket.b", "type": "aws_s3_bucket", "name": "b"}'
        module = f'{{"address": "module.m", "resources": [{resource}]}}'
        for _ in range(depth):
            module = f'{{"address": "module.m", "resources": [], "child_modules": [{module}]}}'
        return '{"planned_values": {"root_module": ' + module + "}}"
    calls = '{"resources": []}'
    for _ in range(depth):
        calls = f'{{"module_calls": {{"m": {{"module": {calls}}}}}}}'
    return _plan(configuration=f'{{"root_module": {calls}}}')


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(
    shape=st.sampled_from(["values", "after_unknown", "expressions", "child_modules", "calls"]),
    depth=st.integers(min_value=1, max_value=4000),
)
def test_a_plan_nested_to_any_depth_loads_or_is_a_plan_error(shape: str, depth: int) -> None:
    """load_plan's one failure is PlanError, however deep the JSON: never a
    RecursionError from its own walks or from json.loads."""
    try:
        entries = load_plan(_deep_plan(shape, depth), "plan.json")
    except PlanError as error:
        assert error.message.startswith("JSON nested ")
        return
    assert [e["address"] for e in entries] == ["aws_s3_bucket.b"]


def _rule_plan(reference: str, calls: str) -> str:
    """A plan of one security group rule whose security_group_id is `reference`."""
    values = '{"address": "aws_security_group_rule.r", "type": "aws_security_group_rule"}'
    expressions = f'{{"security_group_id": {{"references": ["{reference}"]}}}}'
    resource = f'{{"address": "aws_security_group_rule.r", "expressions": {expressions}}}'
    configuration = f'{{"root_module": {{"resources": [{resource}], "module_calls": {calls}}}}}'
    return (
        f'{{"planned_values": {{"root_module": {{"resources": [{values}]}}}}, '
        f'"configuration": {configuration}}}'
    )


def test_module_outputs_and_variables_that_refer_to_each_other_in_a_ring_resolve_to_nothing() -> (
    None
):
    # Terraform refuses such a configuration; a plan file can say it anyway.
    call = (
        '{"m": {"expressions": {"x": {"references": ["module.m.y"]}}, '
        '"module": {"outputs": {"y": {"expression": {"references": ["var.x"]}}}}}}'
    )
    [entry] = load_plan(_rule_plan("module.m.y", call), "plan.json")
    assert entry["refs"] == {}


def test_a_module_output_chain_two_hundred_modules_deep_is_followed() -> None:
    calls = '{"m": {"module": {"outputs": {"id": {"expression": {"references": '
    calls += '["aws_security_group.g.id"]}}}}}}'
    for _ in range(199):
        calls = (
            '{"m": {"module": {"outputs": {"id": {"expression": {"references": '
            f'["module.m.id"]}}}}}}, "module_calls": {calls}}}}}}}'
        )
    [entry] = load_plan(_rule_plan("module.m.id", calls), "plan.json")
    assert entry["refs"] == {"security_group_id": ["module.m." * 200 + "aws_security_group.g"]}


def test_a_variable_file_deeper_than_the_reader_goes_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text('variable "x" {}\n' + PUBLIC_BUCKET + "}\n")
    (tmp_path / "terraform.tfvars.json").write_text('{"x": ' + "[" * 5000 + "]" * 5000 + "}")
    result = portcullis("scan", "--no-cache", str(tmp_path))
    assert result.returncode == 2
    assert errors(result)[0] == (
        f"error: {tmp_path}/terraform.tfvars.json: a JSON variable file nested too deeply to read"
    )


# --- expressions and chains of references ---------------------------------------------------

# README: blocks and expressions nested more than this are an error.
NESTING_LIMIT = 200


def _load(directory: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(each resource's config by address, each problem as text) of a scan's load."""
    loaded = load([str(directory)], LoadOptions())
    configs = {r.entry["address"]: r.entry["config"] for d in loaded.documents for r in d.resources}
    return configs, [str(p) for p in loaded.problems]


def test_a_thousand_term_sum_is_the_nested_too_deeply_error(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(PUBLIC_BUCKET + "  x = " + " + ".join(["1"] * 1000) + "\n}\n")
    result = portcullis("scan", "--no-cache", str(tmp_path))
    assert result.returncode == 2
    assert errors(result)[0] == (
        f"error: {tmp_path}/main.tf:1: `x`: expression nested too deeply to evaluate "
        "(more than 200 levels, blocks included); split it up with locals"
    )


def test_a_thousand_long_index_chain_is_the_nested_too_deeply_error(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(PUBLIC_BUCKET + "  x = [[1]]" + "[0]" * 1000 + "\n}\n")
    result = portcullis("scan", "--no-cache", str(tmp_path))
    assert result.returncode == 2
    assert "main.tf:1: `x`: expression nested too deeply to evaluate" in errors(result)[0]


def test_a_long_chain_in_a_tf_json_template_is_the_nested_too_deeply_error(
    tmp_path: Path,
) -> None:
    template = "${" + " + ".join(["1"] * 1000) + "}"
    resource = {"acl": "public-read", "x": template}
    (tmp_path / "main.tf.json").write_text(
        json.dumps({"resource": {"aws_s3_bucket": {"site": resource}}})
    )
    configs, problems = _load(tmp_path)
    assert configs == {}
    assert [p.split(": ", 1)[1] for p in problems] == [
        "`x`: expression nested too deeply to evaluate (more than 200 levels, blocks "
        "included); split it up with locals"
    ]


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(
    terms=st.integers(min_value=1, max_value=1500),
    operator=st.sampled_from(["+", "*", "&&", "||"]),
)
def test_an_operator_chain_of_any_length_is_evaluated_or_refused(
    tmp_path_factory: Any, terms: int, operator: str
) -> None:
    """`1 + 1 + ...` is as deep as it is long: up to the limit it is evaluated
    exactly, beyond it the file is an error. Never a wrong or unknown value."""
    directory = tmp_path_factory.mktemp("chain")
    term = "true" if operator in ("&&", "||") else "1"
    (directory / "main.tf").write_text(
        PUBLIC_BUCKET + f"  x = {f' {operator} '.join([term] * terms)}\n}}\n"
    )
    configs, problems = _load(directory)
    # The resource block is one level, each operator one, the last term one.
    if terms + 1 > NESTING_LIMIT:
        assert configs == {}
        assert len(problems) == 1
        assert "`x`: expression nested too deeply to evaluate" in problems[0]
        return
    expected = {"+": terms, "*": 1}.get(operator, True)
    assert problems == []
    assert configs["aws_s3_bucket.site"]["x"] == expected


def _local_chain(length: int, form: str) -> str:
    """locals l0 ... l{length}, each naming the next (in `form`), the last a
    public-read ACL, written in reverse order; a bucket's acl = local.l0."""
    lines = [f'  l{length} = "public-read"']
    for i in reversed(range(length)):
        lines.append(f"  l{i} = {form.format(f'local.l{i + 1}')}")
    return (
        "locals {\n" + "\n".join(lines) + "\n}\n"
        'resource "aws_s3_bucket" "site" {\n  acl = local.l0\n}\n'
    )


def test_a_chain_of_three_hundred_locals_is_evaluated(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(_local_chain(300, "{}"))
    code, report = scan_json(str(tmp_path))
    assert code == 1
    assert _findings(report) == {("PC-TF-006", "aws_s3_bucket.site"): None}
    assert report["summary"]["not_judged"] == 0


@settings(max_examples=30, derandomize=True, deadline=None, database=None)
@given(
    length=st.integers(min_value=1, max_value=3000),
    form=st.sampled_from(["{}", '"${{{}}}"', "[{}][0]", "lower({})", "try({}, null)"]),
)
def test_a_chain_of_locals_of_any_length_is_evaluated(
    tmp_path_factory: Any, length: int, form: str
) -> None:
    """Terraform evaluates a chain of locals however long; so does the scanner
    (one at a time, innermost first), never an unknown or a crash."""
    directory = tmp_path_factory.mktemp("locals")
    (directory / "main.tf").write_text(_local_chain(length, form))
    configs, problems = _load(directory)
    assert problems == []
    assert configs["aws_s3_bucket.site"]["acl"] == "public-read"


def test_a_resource_chain_too_long_to_follow_is_an_error_per_resource(tmp_path: Path) -> None:
    """Resources that refer to each other, 300 in a chain: those the scanner
    can't follow to the end are errors naming the resource, never unknowns
    that pass (they were 'not judged' before, exit 0 had nothing else failed)."""
    chain = "".join(
        f'resource "aws_s3_bucket" "b{i}" {{\n  acl = aws_s3_bucket.b{i + 1}.acl\n}}\n'
        for i in range(300)
    )
    (tmp_path / "main.tf").write_text(chain + PUBLIC_BUCKET.replace('"site"', '"b300"') + "}\n")
    configs, problems = _load(tmp_path)
    assert problems
    for problem in problems:
        assert problem.endswith(
            "`acl`: expression nested too deeply to evaluate, itself or through the locals, "
            "resources and module outputs it refers to; the resource was not judged"
        )
    # Every resource is either judged with its value or an error.
    assert len(configs) + len(problems) == 301
    assert {c["acl"] for c in configs.values()} == {"public-read"}


def test_a_variable_value_nested_too_deeply_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(
        'variable "x" {\n  type = list(any)\n}\n' + PUBLIC_BUCKET + "}\n"
    )
    value = "[" * 3000 + "]" * 3000
    result = portcullis("scan", "--no-cache", str(tmp_path), "--var", f"x={value}")
    assert result.returncode == 2
    assert errors(result)[0] == (
        f"error: {tmp_path}: expression nested too deeply to evaluate: a variable's value "
        "or default, or a provider's configuration; the module was not scanned"
    )


# --- a suppression's reason must say something -------------------------------------------


@pytest.mark.parametrize(
    "reason",
    [
        "\u200b",  # zero-width space
        "\u200b\u200c\u200d\u2060\ufeff",  # zero-width (non-)joiners, word joiner, BOM
        "\u00ad\u034f",  # soft hyphen, combining grapheme joiner
        "\u3164\u2800",  # Hangul filler, braille blank: letters and symbols that draw nothing
        "\u3000\u00a0 -",  # ideographic and no-break spaces around a dash
    ],
)
def test_a_suppression_whose_reason_is_only_invisible_characters_suppresses_nothing(
    tmp_path: Path, reason: str
) -> None:
    (tmp_path / "main.tf").write_text(
        f"# portcullis:ignore=PC-TF-006 {reason}\n" + PUBLIC_BUCKET + "}\n", encoding="utf-8"
    )
    code, report = scan_json(str(tmp_path))
    assert code == 1
    assert _findings(report) == {("PC-TF-006", "aws_s3_bucket.site"): None}
    assert any("has no reason" in note for note in report["notes"])


def test_a_checkov_skip_whose_reason_is_only_invisible_characters_suppresses_nothing() -> None:
    notes: list[str] = []
    comments = [[1, "checkov:skip", "CKV_AWS_18:\u200b\u2060", 1]]
    assert parse_checkov_skips(comments, "main.tf", notes) == []
    assert notes and "has no reason" in notes[0]


# --- what a pull request writes can't drive the CI log, break JUnit or link in SARIF ------

# An HTTPS listener whose ssl_policy (quoted in PC-TF-004's message) and a
# bucket whose for_each key (in its address) carry an escape sequence that
# would clear a CI log and print a fake PASS, a bell, a NUL, XML specials and a
# Markdown link.
HOSTILE_TEXT = (
    'resource "aws_lb_listener" "web" {\n'
    '  load_balancer_arn = "arn:aws:elasticloadbalancing:x"\n'
    "  port              = 443\n"
    '  protocol          = "HTTPS"\n'
    '  ssl_policy        = "X\\u001b[2J\\u001b[32mPASS\\u0007\\u0000 <b>&amp;</b>'
    ' ]]> [docs](https://evil.example) \\u202e"\n'
    "}\n"
    'resource "aws_s3_bucket" "site" {\n'
    '  for_each = toset(["a\\u001b[31mred", "<x>&\\u0001"])\n'
    '  acl      = "public-read"\n'
    "}\n"
)


def test_control_characters_in_values_never_reach_the_text_report_raw(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(HOSTILE_TEXT)
    result = portcullis("scan", "--no-cache", str(tmp_path))
    assert result.returncode == 1
    assert "PC-TF-004" in result.stdout
    assert "\\u001b[2J\\u001b[32mPASS\\u0007\\u0000" in result.stdout
    for char in "\x1b\x07\x00\u202e":
        assert char not in result.stdout + result.stderr


def test_a_file_name_with_an_escape_sequence_never_reaches_the_log_raw(tmp_path: Path) -> None:
    (tmp_path / "x\x1b[2J.tf").write_text(PUBLIC_BUCKET + "}\n")
    (tmp_path / "bad\x1b[2J.tf").write_text('resource "x" "y" {\n')
    result = portcullis("scan", "--no-cache", str(tmp_path))
    assert result.returncode == 2
    assert "\x1b" not in result.stdout + result.stderr
    assert "bad\\u001b[2J.tf" in result.stderr


def hostile_report(tmp_path: Path, form: str) -> Path:
    """The `form` report of a scan of HOSTILE_TEXT (its findings fail it)."""
    (tmp_path / "main.tf").write_text(HOSTILE_TEXT)
    report = tmp_path / f"report.{form}"
    result = portcullis(
        "scan", "--no-cache", str(tmp_path), "--output", form, "--output-file", str(report)
    )
    assert result.returncode == 1, result.stderr
    return report


def test_junit_stays_xml_whatever_the_values_hold(tmp_path: Path) -> None:
    suites = ElementTree.parse(hostile_report(tmp_path, "junit")).getroot()
    failures = [f.get("message", "") for f in suites.iter("failure")]
    assert len(failures) == 3
    assert any("PASS\\u0007\\u0000 <b>&amp;</b> ]]>" in message for message in failures)


def test_a_value_in_a_sarif_message_is_no_embedded_link(tmp_path: Path) -> None:
    sarif = json.loads(hostile_report(tmp_path, "sarif").read_text())
    messages = [r["message"]["text"] for r in sarif["runs"][0]["results"]]
    listener = next(m for m in messages if "aws_lb_listener.web" in m)
    assert "\\[docs\\](https://evil.example)" in listener
    assert "[docs](" not in listener.replace("\\[docs\\](", "")
    assert all("\x1b" not in m for m in messages)


# --- a few lines can't make the scanner build without bound -------------------------------

_DOUBLING = "".join(f'  s{i} = "${{local.s{i - 1}}}${{local.s{i - 1}}}"\n' for i in range(1, 60))
_SQUARING = "".join(f"  n{i} = local.n{i - 1} * local.n{i - 1}\n" for i in range(1, 60))


@pytest.mark.parametrize(
    ("attack", "config"),
    [
        ("count", 'resource "aws_s3_bucket" "site" {\n  count = 1e9\n  acl = "public-read"\n}\n'),
        (
            "module count",
            'module "m" {\n  source = "./m"\n  count = 1e9\n}\n',
        ),
        (
            "setproduct",
            "locals { x = setproduct(range(1000), range(1000), range(1000)) }\n"
            + PUBLIC_BUCKET.replace('"public-read"', 'length(local.x) > 0 ? "public-read" : ""')
            + "}\n",
        ),
        (
            "string doubled through locals",
            'locals {\n  s0 = "xxxxxxxxxxxxxxxx"\n'
            + _DOUBLING
            + "}\n"
            + PUBLIC_BUCKET.replace('"public-read"', 'length(local.s59) > 0 ? "public-read" : ""')
            + "}\n",
        ),
        (
            "number squared through locals",
            "locals {\n  n0 = 10\n"
            + _SQUARING
            + "}\n"
            + PUBLIC_BUCKET.replace('"public-read"', 'local.n59 > 0 ? "public-read" : ""')
            + "}\n",
        ),
        (
            "pow",
            PUBLIC_BUCKET.replace('"public-read"', 'pow(10, 100000000) > 1 ? "public-read" : ""')
            + "}\n",
        ),
        (
            "loops in loops",
            "locals { x = [for a in range(1000) : [for b in range(1000) : [for c in range(1000)"
            ": c]]] }\n"
            + PUBLIC_BUCKET.replace('"public-read"', 'length(local.x) > 0 ? "public-read" : ""')
            + "}\n",
        ),
    ],
)
def test_an_expansion_too_large_to_build_is_an_error_not_an_exhausted_runner(
    tmp_path: Path, attack: str, config: str
) -> None:
    (tmp_path / "main.tf").write_text(config)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "main.tf").write_text(PUBLIC_BUCKET + "}\n")
    result = portcullis("scan", "--no-cache", "--jobs", "1", str(tmp_path))
    assert result.returncode == 2, attack
    assert "too large to evaluate" in result.stderr, result.stderr
    assert f"{tmp_path / 'main.tf'}:" in result.stderr
