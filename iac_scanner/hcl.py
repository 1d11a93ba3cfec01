"""Parse HCL text with python-hcl2 into plain, cacheable data that keeps line numbers.

python-hcl2's dict output has no line numbers and renders expressions as
strings, so this walks its raw Lark parse tree instead and keeps each
expression as a small tree of lists (the `Expr` shapes below), which
`iac_scanner.expressions` evaluates. Everything here is JSON-serialisable so
the parse cache can store it. Most files never reach python-hcl2:
`iac_scanner.hcl_fast` builds the same data from plain HCL much faster, and
this walk is its reference.

Expression shapes (first item is the kind):
    ["lit", value]                      string, number, bool or null
    ["tpl", [part, ...]]                a template: str parts and Exprs
    ["name", "var"]                     a bare identifier
    ["attr", expr, "name"]              expr.name
    ["index", expr, key_expr]           expr[key]
    ["splat", expr, [["attr", n] | ["index", e], ...]]   expr[*].n / expr.*.n
    ["call", "name", [args], expand_last]
    ["tuple", [items]]                  ["object", [[key, value], ...]]
    ["cond", test, then, else]          ["op", "+", left, right]   ["not"|"neg", e]
    ["for", key_var|None, value_var, collection, key|None, value, cond|None, grouping]
    ["opaque", "why"]                   something the scanner does not evaluate
Template parts (inside "tpl") may also be directives:
    ["tif", cond, [then parts], [else parts]]
    ["tfor", key_var|None, value_var, collection, [parts]]
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypedDict

from lark import Token, Tree
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput

Expr = list[Any]

# Blocks and expressions nested deeper than this, together, are an error: the
# parse cache's JSON and the evaluator recurse once or more per level, and
# deeper data would crash them. A long `a + b + ...` or `x[0][0]...` chain is
# as deep as it is long; brackets stop the readers near this depth anyway.
MAX_NESTING = 200

# Inside a comment's text: after its opener (or a `#`/`//` within it), or at the
# start of a line of a `/* */` comment (leading `*`s allowed).
_SUPPRESSION = re.compile(
    r"(?:^[\s*]*|(?:#|//|/\*)\s*)(portcullis:ignore|checkov:skip)\s*=\s*(.*)$"
)


class Block(TypedDict):
    type: str
    labels: list[str]
    line: int
    end_line: int
    attrs: dict[str, Expr]
    blocks: list[Block]


class ParsedFile(TypedDict):
    # Top-level attributes: what a .tfvars file holds.
    attrs: dict[str, Expr]
    blocks: list[Block]
    # [line, "portcullis:ignore" | "checkov:skip", rest of the comment, line
    # of the code it stands above (its own line when it trails code, 0 when
    # no code follows)]: real comments only, never text in a string or heredoc
    comments: list[list[Any]]


class HclSyntaxError(Exception):
    """A file python-hcl2 can't parse, located at line:column."""

    def __init__(self, message: str, line: int | None = 1, column: int | None = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


def parse_text(text: str) -> ParsedFile:
    """Parse one file's HCL text. Raises HclSyntaxError.

    Plain HCL goes through `hcl_fast`, which builds exactly what the walk
    below builds from python-hcl2's tree, many times faster; a file it does
    not fully understand (or that python-hcl2 would reject) goes to python-hcl2."""
    from iac_scanner.hcl_fast import read_plain

    fast = read_plain(text)
    if fast is not None:
        attrs, blocks = fast
    else:
        attrs, blocks = parse_body_slow(text)
    check_nesting(attrs, blocks)
    return {"attrs": attrs, "blocks": blocks, "comments": _suppression_comments(text)}


def check_nesting(attrs: dict[str, Expr], blocks: list[Block]) -> None:
    """Raise HclSyntaxError, at its block's line, for the first attribute or
    block that nests more than MAX_NESTING levels (blocks and expressions)."""
    # Collecting garbage would walk the whole parse again and again (see hcl_fast).
    collecting = gc.isenabled()
    gc.disable()
    try:
        _check_nesting(attrs, blocks)
    finally:
        if collecting:
            gc.enable()


def _check_nesting(attrs: dict[str, Expr], blocks: list[Block]) -> None:
    pending: list[tuple[dict[str, Expr], list[Block], int, Block | None]] = [
        (attrs, blocks, 0, None)
    ]
    while pending:
        body_attrs, body_blocks, depth, block = pending.pop()
        for name, expr in body_attrs.items():
            if expr[0] != "lit" and _deeper_than(expr, MAX_NESTING - depth):
                raise HclSyntaxError(
                    f"`{name}`: expression nested too deeply to evaluate (more than "
                    f"{MAX_NESTING} levels, blocks included); split it up with locals",
                    block["line"] if block is not None else None,
                    None,
                )
        for inner in reversed(body_blocks):
            if depth + 1 > MAX_NESTING:
                raise HclSyntaxError(
                    f"blocks nested too deeply to evaluate (more than {MAX_NESTING} levels)",
                    inner["line"],
                    None,
                )
            pending.append((inner["attrs"], inner["blocks"], depth + 1, inner))


def _deeper_than(expr: Expr, levels: int) -> bool:
    """Whether expr nests more than levels deep, read a level at a time."""
    level = [expr]
    while level:
        if levels < 1:
            return True
        levels -= 1
        below: list[Expr] = []
        for node in level:
            kind = node[0]
            if kind != "lit" and kind != "name":
                below.extend(sub_expressions(node))
        level = below
    return False


def sub_expressions(expr: Expr) -> list[Expr]:
    """The expressions directly inside expr (a template directive's too)."""
    kind = expr[0]
    if kind in ("lit", "name", "opaque"):
        return []
    if kind in ("attr", "not", "neg"):
        return [expr[1]]
    if kind in ("index", "op"):
        return [expr[1], expr[2]] if kind == "index" else [expr[2], expr[3]]
    if kind == "splat":
        return [expr[1], *[operation[1] for operation in expr[2] if operation[0] == "index"]]
    if kind in ("tpl", "tuple"):
        return [part for part in expr[1] if isinstance(part, list)]
    if kind == "object":
        return [part for pair in expr[1] for part in pair]
    if kind == "call":
        return list(expr[2])
    if kind == "cond":
        return [expr[1], expr[2], expr[3]]
    if kind == "for":
        return [part for part in expr[3:7] if part is not None]
    if kind == "tif":
        return [expr[1], *[p for p in (*expr[2], *expr[3]) if isinstance(p, list)]]
    if kind == "tfor":
        return [expr[3], *[p for p in expr[4] if isinstance(p, list)]]
    return []


def parse_body_slow(text: str) -> tuple[dict[str, Expr], list[Block]]:
    """A file's top-level attributes and blocks, read through python-hcl2's
    parse tree (the reference the fast reader is tested against)."""
    return _body(_child(_parse_tree(text), "body"))


def parse_expression(text: str) -> Expr:
    """Parse a lone HCL expression (a `--var` value, a template interpolation)."""
    from iac_scanner.hcl_fast import read_plain_expression

    fast = read_plain_expression(text)
    if fast is not None:
        return fast
    return parse_expression_slow(text)


def parse_expression_slow(text: str) -> Expr:
    """parse_expression through python-hcl2's parse tree."""
    tree = _parse_tree(f"x = {text}\n")
    body = _child(tree, "body")
    for node in _trees(body):
        if node.data == "attribute":
            return _expr(_trees(node)[-1])
    raise HclSyntaxError(f"not an expression: {text!r}")


def _parse_tree(text: str) -> Tree[Any]:
    import hcl2

    try:
        tree: Tree[Any] = hcl2.parses_to_tree(text)
    except UnexpectedInput as error:
        raise HclSyntaxError(_describe(error, text), error.line, error.column) from None
    except LarkError as error:
        raise HclSyntaxError(str(error).splitlines()[0]) from None
    return tree


def _describe(error: UnexpectedInput, text: str) -> str:
    if isinstance(error, UnexpectedEOF):
        return "unexpected end of file (an unclosed block, bracket or string?)"
    if isinstance(error, UnexpectedCharacters):
        lines = text.splitlines()
        line = lines[error.line - 1] if 0 < error.line <= len(lines) else ""
        char = line[error.column - 1 : error.column] if error.column > 0 else ""
        return f"unexpected character {char!r}"
    token = getattr(error, "token", None)
    if token is not None:
        shown = (str(token).strip() or repr(str(token))).splitlines()[0]
        if getattr(token, "type", "") == "$END":
            return "unexpected end of file (an unclosed block, bracket or string?)"
        return f"unexpected {shown[:40]!r}{_expected(getattr(error, 'expected', None) or ())}"
    return str(error).splitlines()[0]


# The parser's terminal names (python-hcl2's grammar) as a Terraform author reads them.
_VALUE_STARTS = frozenset({"DBLQUOTE", "INT_LITERAL", "FLOAT_LITERAL", "HEREDOC_TEMPLATE"})
_TERMINALS = {
    "NL_OR_COMMENT": "a new line",
    "NAME": "a name",
    "COMMA": "`,`",
    "EQ": "`=`",
    "COLON": "`:`",
    "DBLQUOTE": '`"`',
    "LBRACE": "`{`",
    "RBRACE": "`}`",
    "LSQB": "`[`",
    "RSQB": "`]`",
    "LPAR": "`(`",
    "RPAR": "`)`",
    "QMARK": "`?`",
    "FOR_OBJECT_ARROW": "`=>`",
    "ELLIPSIS": "`...`",
    "DOT": "`.`",
    "$END": "the end of the file",
}
_KEYWORDS = frozenset(
    {"IF", "IN", "FOR", "FOR_EACH", "ELSE", "ENDIF", "ENDFOR", "NULL", "TRUE", "FALSE"}
)


def _expected(names: Iterable[str]) -> str:
    """What the parser would have taken there, in Terraform's words rather than
    the grammar's terminal names (DBLQUOTE, NL_OR_COMMENT)."""
    expected = set(names)
    if not expected:
        return ""
    if expected & _VALUE_STARTS:
        return "; expected a value (a string, number, bool, list, object or expression)"
    # Keywords last: after `1 2` the parser would take `else` or `for` as well,
    # but what the author left out is a new line.
    shown = sorted({(name in _KEYWORDS, _terminal(name)) for name in expected})
    return f"; expected one of {', '.join(text for _, text in shown[:6])}"


def _terminal(name: str) -> str:
    if name in _KEYWORDS:
        return f"`{name.lower()}`"
    return _TERMINALS.get(name, name)


def _suppression_comments(text: str) -> list[list[Any]]:
    found: list[list[Any]] = []
    if "portcullis:ignore" not in text and "checkov:skip" not in text:
        return found
    for comment in _comments(text):
        for offset, segment in enumerate(comment.text.split("\n")):
            match = _SUPPRESSION.search(segment)
            if not match:
                continue
            number = comment.line + offset
            # A comment that trails code applies to its own line; one on its
            # own line(s) to the code below it.
            target = number if offset == 0 and comment.trails_code else comment.next_code
            found.append([number, match.group(1), match.group(2).strip(), target])
    return found


@dataclass
class _Comment:
    line: int  # where it starts
    text: str  # from its opener (`#`, `//`, `/*`) to its end, without `*/`
    trails_code: bool  # code before it on its first line
    next_code: int = 0  # the line of the first code after it (0: none)


# python-hcl2's heredoc terminals (the same as iac_scanner.hcl_fast reads).
_HEREDOC = re.compile(
    r"<<(-?)(?P<marker>[a-zA-Z][a-zA-Z0-9._-]*)\r?\n(?:(?:.|\n)*?\r?\n)??\s*(?P=marker)\r?\n"
)
# Outside strings: (1) code and blanks up to anything that matters here
# (braces matter only inside a template interpolation: `_INNER_CODE_TOKEN`),
# (2) a comment opener, (3) a whole string without a template sequence, (4)
# the start of one with, (5) braces (never at the top level), (6) a lone `/`
# or `<`.
_STRING = r"(\"(?:[^\"\\$%\n]|\\.|\$\$\{|%%\{|[$%](?!\{))*\")"
_CODE_TOKEN = re.compile(rf"([^#/\"<]+)|(#|//|/\*)|{_STRING}|(\")|((?!))|([\s\S])")
_INNER_CODE_TOKEN = re.compile(rf"([^#/\"<{{}}]+)|(#|//|/\*)|{_STRING}|(\")|([{{}}])|([\s\S])")
# Inside a string: (1) its end, (2) a template sequence, (3) text (escapes
# and `$${`/`%%{` included), (4) a lone backslash at the end of the text.
_STRING_TOKEN = re.compile(
    r"(\")|([$%]\{)|((?:[^\"\\$%]|\\[\s\S]|\$\$\{|%%\{|[$%](?!\{))+)|([\s\S])"
)


def _comments(text: str) -> list[_Comment]:
    """The real comments of HCL text: not the `#` or `//` inside a quoted
    string, a heredoc or a template, which are text, not comments. Strings
    are followed through `${...}`/`%{...}` (which hold code, strings and
    braces of their own) as python-hcl2 lexes them; a heredoc runs to the
    first line that is its marker, as python-hcl2's terminal does."""
    text += "\n"  # python-hcl2 appends one too: a last `#` comment or heredoc ends
    comments: list[_Comment] = []
    unplaced: list[_Comment] = []  # comments on their own lines, before any code
    # One entry per open string (-1) or template interpolation (its `{` depth).
    modes: list[int] = []
    line = 1
    code_line = 0  # the last line that holds code
    position = 0
    end = len(text)
    while position < end:
        if modes and modes[-1] < 0:
            token = _STRING_TOKEN.match(text, position)
            assert token is not None  # group 4 matches any character
            position = token.end()
            if token.lastindex == 1:
                modes.pop()
            elif token.lastindex == 2:
                modes.append(0)
            else:
                line += token.group().count("\n")
            continue
        heredoc = _HEREDOC.match(text, position) if text.startswith("<<", position) else None
        token = heredoc or (_INNER_CODE_TOKEN if modes else _CODE_TOKEN).match(text, position)
        assert token is not None  # group 6 matches any character
        position = token.end()
        kind = 0 if heredoc else token.lastindex
        first = last = line  # the lines of the code in the token
        if kind == 1:
            run = token.group()
            if run.isspace():
                line += run.count("\n")
                continue
            first = line + run.count("\n", 0, len(run) - len(run.lstrip()))
            last = line + run.count("\n", 0, len(run.rstrip()))
            line += run.count("\n")
        elif kind == 2:
            if token.group() == "/*":
                close = text.find("*/", position)
                stop, position = (end, end) if close == -1 else (close, close + 2)
            else:
                stop = position = text.find("\n", position)
            comment = _Comment(line, text[token.start() : stop], code_line == line)
            comments.append(comment)
            unplaced.append(comment)
            line += text.count("\n", token.start(), stop)
            continue
        elif kind == 0:
            line += token.group().count("\n")
            last = line - 1
        elif kind == 4:
            modes.append(-1)
        elif kind == 5:
            if token.group() == "{":
                modes[-1] += 1
            elif modes[-1] == 0:
                modes.pop()
            else:
                modes[-1] -= 1
        # Code: what the comments before it stand above.
        for comment in unplaced:
            comment.next_code = first
        unplaced.clear()
        code_line = last
    return comments


def _trees(node: Tree[Any] | None) -> list[Tree[Any]]:
    if node is None:
        return []
    return [c for c in node.children if isinstance(c, Tree) and c.data != "new_line_or_comment"]


def _child(node: Tree[Any], name: str) -> Tree[Any] | None:
    for child in node.children:
        if isinstance(child, Tree) and child.data == name:
            return child
    return None


def _tokens(node: Tree[Any]) -> list[Token]:
    return [c for c in node.children if isinstance(c, Token)]


def _body(body: Tree[Any] | None) -> tuple[dict[str, Expr], list[Block]]:
    attrs: dict[str, Expr] = {}
    blocks: list[Block] = []
    for node in _trees(body):
        if node.data == "attribute":
            children = _trees(node)
            attrs[_name(children[0])] = _expr(children[-1])
        elif node.data == "block":
            blocks.append(_block(node))
    return attrs, blocks


def _block(node: Tree[Any]) -> Block:
    names: list[str] = []
    body = None
    for child in _trees(node):
        if child.data == "body":
            body = child
        else:
            names.append(_name(child))
    attrs, blocks = _body(body)
    return {
        "type": names[0],
        "labels": names[1:],
        "line": node.meta.line,
        "end_line": node.meta.end_line,
        "attrs": attrs,
        "blocks": blocks,
    }


def _name(node: Tree[Any]) -> str:
    """A block type, label or attribute name: an identifier, keyword or string."""
    if node.data == "string":
        return label_of(_expr(node))
    if node.data in ("identifier", "keyword", "literal_value"):
        return str(_tokens(node)[0])
    return str(node.children[0])


def label_of(value: Expr) -> str:
    """A quoted block label's text (a template's literal parts only)."""
    if value[0] == "lit":
        return str(value[1])
    return "".join(p for p in value[1] if isinstance(p, str))


def _expr(node: Tree[Any] | Token) -> Expr:
    if isinstance(node, Token):
        return ["opaque", f"token {node.type}"]
    kind = node.data
    handler = _HANDLERS.get(str(kind))
    if handler is None:
        return ["opaque", f"unsupported syntax {kind}"]
    result: Expr = handler(node)
    return result


def _expr_term(node: Tree[Any]) -> Expr:
    inner = _trees(node)
    if len(inner) == 1:
        return _expr(inner[0])
    return ["opaque", "empty expression"]


def _number(node: Tree[Any]) -> Expr:
    token = _tokens(node)[0]
    text = str(token)
    try:
        return ["lit", int(text) if node.data == "int_lit" else float(text)]
    except ValueError:
        # python-hcl2's grammar lexes `-1-1.5` as one float literal.
        raise HclSyntaxError(
            f"{text!r} is not a number", token.line or 1, token.column or 1
        ) from None


def _literal(node: Tree[Any]) -> Expr:
    word = str(_tokens(node)[0])
    return ["lit", {"true": True, "false": False, "null": None}[word]]


def _identifier(node: Tree[Any]) -> Expr:
    return ["name", str(_tokens(node)[0])]


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def unescape(text: str) -> str:
    if "\\" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        body = match.group(1)
        if body[0] in "uU":
            return chr(int(body[1:], 16))
        return _ESCAPES.get(body, "\\" + body)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", replace, text)


def _string(node: Tree[Any]) -> Expr:
    parts: list[Any] = []
    for part in node.children:
        if not isinstance(part, Tree) or part.data != "string_part":
            continue
        for piece in part.children:
            if isinstance(piece, Token):
                if piece.type == "ESCAPED_INTERPOLATION" or piece.type == "ESCAPED_DIRECTIVE":
                    parts.append(str(piece)[1:])
                else:
                    parts.append(unescape(str(piece)))
            elif piece.data == "interpolation":
                parts.append(_expr(_trees(piece)[0]))
            else:
                return ["opaque", "template directive"]
    return template_of(parts)


def template_of(parts: list[Any]) -> Expr:
    """String parts and interpolations as one expression: adjacent text merged,
    plain text as a literal."""
    merged: list[Any] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    if not merged:
        return ["lit", ""]
    if len(merged) == 1 and isinstance(merged[0], str):
        return ["lit", merged[0]]
    if len(merged) == 1:
        # "${x}" alone yields x itself, not its string form (as Terraform does).
        return ["tpl", merged]
    return ["tpl", merged]


def _heredoc(node: Tree[Any]) -> Expr:
    return heredoc_expr(str(_tokens(node)[0]), node.data == "heredoc_template_trim")


def heredoc_expr(raw: str, trim: bool) -> Expr:
    """A heredoc token's text (`<<EOF` ... `EOF` and the newline after it) as a template."""
    first_newline = raw.index("\n")
    body_lines = raw[first_newline + 1 :].split("\n")
    # The last two items are the closing marker and the empty string after it.
    lines = body_lines[:-2]
    if trim:
        indents = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
        cut = min(indents, default=0)
        lines = [line[cut:] for line in lines]
    text = "\n".join(line.rstrip("\r") for line in lines) + ("\n" if lines else "")
    return template_from_text(text)


def template_from_text(text: str) -> Expr:
    """Template text (a heredoc body, a templatefile, a .tf.json string) with
    its `${...}` interpolations and `%{if}`/`%{for}` directives parsed."""
    if "${" not in text and "%{" not in text:
        return ["lit", text]
    try:
        tokens = _template_tokens(text)
        parts = _template_structure(tokens)
    except HclSyntaxError as error:
        return ["opaque", error.message]
    return template_of(parts)


def _template_tokens(text: str) -> list[list[Any]]:
    """["text", s] | ["interp", source, strip_before, strip_after] | ["dir", ...]."""
    tokens: list[list[Any]] = []
    literal = ""
    position = 0
    while position < len(text):
        char = text[position]
        if text.startswith(("$${", "%%{"), position):
            literal += text[position + 1 : position + 3]
            position += 3
            continue
        if char in "$%" and text.startswith("{", position + 1):
            end = _closing_brace(text, position + 2)
            if end == -1:
                raise HclSyntaxError("unterminated template sequence")
            body = text[position + 2 : end]
            strip_before = body.startswith("~")
            strip_after = body.endswith("~") and len(body) > 1
            body = body[1 if strip_before else 0 : len(body) - 1 if strip_after else len(body)]
            tokens.append(["text", literal])
            literal = ""
            kind = "interp" if char == "$" else "dir"
            tokens.append([kind, body.strip(), strip_before, strip_after])
            position = end + 1
            continue
        literal += char
        position += 1
    tokens.append(["text", literal])
    # Strip markers remove the whitespace (newlines included) beside them.
    for index, token in enumerate(tokens):
        if token[0] == "text":
            continue
        if token[2] and index > 0:
            tokens[index - 1][1] = tokens[index - 1][1].rstrip()
        if token[3] and index + 1 < len(tokens):
            tokens[index + 1][1] = tokens[index + 1][1].lstrip()
    return tokens


_FOR = re.compile(r"^for\s+([A-Za-z_][\w-]*)(?:\s*,\s*([A-Za-z_][\w-]*))?\s+in\s+(.+)$", re.S)


def _template_structure(tokens: list[list[Any]]) -> list[Any]:
    """Nest if/else/endif and for/endfor into ["tif", cond, then, else] and
    ["tfor", key_var, value_var, collection, body] parts."""
    root: list[Any] = []
    stack: list[tuple[list[Any], list[Any]]] = []  # (directive being built, outer parts)
    current = root
    for token in tokens:
        if token[0] == "text":
            if token[1]:
                current.append(token[1])
        elif token[0] == "interp":
            current.append(parse_expression(token[1]))
        elif token[1].startswith("if ") or token[1].startswith("if("):
            directive: list[Any] = ["tif", parse_expression(token[1][2:].strip()), [], []]
            stack.append((directive, current))
            current = directive[2]
        elif token[1] == "else":
            if not stack or stack[-1][0][0] != "tif" or current is stack[-1][0][3]:
                raise HclSyntaxError("%{else} without %{if}")
            current = stack[-1][0][3]
        elif token[1] in ("endif", "endfor"):
            want = "tif" if token[1] == "endif" else "tfor"
            if not stack or stack[-1][0][0] != want:
                raise HclSyntaxError(f"%{{{token[1]}}} without its opening directive")
            directive, current = stack.pop()
            current.append(directive)
        elif (match := _FOR.match(token[1])) is not None:
            first, second, collection = match.groups()
            key_var, value_var = (first, second) if second else (None, first)
            directive = ["tfor", key_var, value_var, parse_expression(collection.strip()), []]
            stack.append((directive, current))
            current = directive[4]
        else:
            raise HclSyntaxError(f"template directive %{{{token[1]}}} the scanner does not read")
    if stack:
        raise HclSyntaxError("template directive not closed")
    return root


def _closing_brace(text: str, position: int) -> int:
    depth = 0
    quoted = False
    while position < len(text):
        char = text[position]
        if quoted:
            if char == "\\":
                position += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return position
            depth -= 1
        position += 1
    return -1


def _tuple(node: Tree[Any]) -> Expr:
    return ["tuple", [_expr(item) for item in _trees(node)]]


def _object(node: Tree[Any]) -> Expr:
    items: list[list[Expr]] = []
    for element in _trees(node):
        key_node, value_node = _trees(element)[0], _trees(element)[-1]
        key_inner = _trees(key_node)
        if key_inner and key_inner[0].data == "keyword":
            key: Expr = ["lit", _name(key_inner[0])]
        else:
            key = object_key(_expr(key_inner[0]) if key_inner else ["opaque", "object key"])
        items.append([key, _expr(value_node)])
    return ["object", items]


def object_key(key: Expr) -> Expr:
    """A bare word as an object key is the key's name, not a variable."""
    if key[0] == "name":
        return ["lit", key[1]]
    return key


def _function_call(node: Tree[Any]) -> Expr:
    names = [str(_tokens(n)[0]) for n in _trees(node) if n.data == "identifier"]
    arguments = _child(node, "arguments")
    args = [_expr(a) for a in _trees(arguments)]
    expand = arguments is not None and any(
        isinstance(t, Token) and t.type == "ELLIPSIS" for t in arguments.children
    )
    return ["call", "::".join(names), args, expand]


def _get_attr_term(node: Tree[Any]) -> Expr:
    target, accessor = _trees(node)
    return ["attr", _expr(target), _name(_trees(accessor)[0])]


def _index_term(node: Tree[Any]) -> Expr:
    target, index = _trees(node)
    return ["index", _expr(target), _index_key(index)]


def _index_key(index: Tree[Any]) -> Expr:
    if index.data == "short_index":
        return ["lit", int(str(_tokens(index)[-1]))]
    return _expr(_trees(index)[0])


def _splat_term(node: Tree[Any]) -> Expr:
    target, splat = _trees(node)
    operations: list[list[Any]] = []
    for op in _trees(splat):
        if op.data == "get_attr":
            operations.append(["attr", _name(_trees(op)[0])])
        else:
            operations.append(["index", _index_key(op)])
    return ["splat", _expr(target), operations]


def _conditional(node: Tree[Any]) -> Expr:
    test, then, otherwise = _trees(node)
    return ["cond", _expr(test), _expr(then), _expr(otherwise)]


def _binary_op(node: Tree[Any]) -> Expr:
    left, term = _trees(node)
    operator_node, right = _trees(term)
    operator = str(_tokens(operator_node)[0]).split()[-1]
    return ["op", operator, _expr(left), _expr(right)]


def _unary_op(node: Tree[Any]) -> Expr:
    return unary(str(_tokens(node)[0]).strip(), _expr(_trees(node)[0]))


def unary(operator: str, operand: Expr) -> Expr:
    """`-x` or `!x`; a negated number literal is folded into the literal."""
    if operator == "-":
        if operand[0] == "lit" and isinstance(operand[1], int | float):
            return ["lit", -operand[1]]
        return ["neg", operand]
    return ["not", operand]


def _for(node: Tree[Any]) -> Expr:
    parts = _trees(node)
    intro = parts[0]
    intro_parts = _trees(intro)
    variables = [str(_tokens(n)[0]) for n in intro_parts if n.data == "identifier"]
    collection = _expr(intro_parts[-1])
    key_var, value_var = (
        (variables[0], variables[1]) if len(variables) == 2 else (None, variables[0])
    )
    condition = None
    if parts[-1].data == "for_cond":
        condition = _expr(_trees(parts[-1])[0])
        parts = parts[:-1]
    grouping = any(isinstance(t, Token) and t.type == "ELLIPSIS" for t in node.children)
    if node.data == "for_object_expr":
        key, value = _expr(parts[1]), _expr(parts[2])
        return ["for", key_var, value_var, collection, key, value, condition, grouping]
    return ["for", key_var, value_var, collection, None, _expr(parts[1]), condition, False]


def _template_string(node: Tree[Any]) -> Expr:
    text = str(_tokens(node)[0])
    try:
        return ["lit", json.loads(text.replace('\\"', '"'))]
    except ValueError:
        return ["opaque", "template string"]


_HANDLERS: dict[str, Any] = {
    "expr_term": _expr_term,
    "int_lit": _number,
    "float_lit": _number,
    "literal_value": _literal,
    "identifier": _identifier,
    "string": _string,
    "heredoc_template": _heredoc,
    "heredoc_template_trim": _heredoc,
    "tuple": _tuple,
    "object": _object,
    "function_call": _function_call,
    "get_attr_expr_term": _get_attr_term,
    "index_expr_term": _index_term,
    "attr_splat_expr_term": _splat_term,
    "full_splat_expr_term": _splat_term,
    "conditional": _conditional,
    "binary_op": _binary_op,
    "unary_op": _unary_op,
    "for_tuple_expr": _for,
    "for_object_expr": _for,
    "template_string": _template_string,
}
