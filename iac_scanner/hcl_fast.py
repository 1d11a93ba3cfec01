"""A fast reader for plain HCL: the same attributes and blocks that
`iac_scanner.hcl` builds from python-hcl2's parse tree, for text it fully
understands, and None for anything else, so the caller asks python-hcl2.

python-hcl2 (a Lark LALR grammar) costs ~1 ms per resource, which made parsing
most of a large scan. This reader covers what real configurations are made of
(blocks, attributes, strings with `${}` interpolations, heredocs, numbers,
lists, objects, references, calls, operators, conditionals, splats and `for`
expressions) and declines, never guesses, wherever python-hcl2's grammar is
subtler than it follows: template directives (`%{}`), a line that starts with
an operator, items that share a line, keywords used as names, and anything it
can't tokenize. Its tokens are python-hcl2's own terminal patterns
(`tests/test_scan_hcl_fast.py` checks them against the installed grammar and
compares both readers on every fixture and corpus file and on generated text).
"""

from __future__ import annotations

import gc
import re
from typing import Any

from iac_scanner.hcl import (
    Block,
    Expr,
    heredoc_expr,
    label_of,
    object_key,
    template_of,
    unary,
    unescape,
)

# python-hcl2's terminals (hcl2/hcl2.lark), character for character as its
# lexer compiles them (with real newline and tab characters).
NL_OR_COMMENT = "(?:\\/\\*(.|\n)*?(\\*\\/)|\\/\\/.*\n|#.*\n|\n[ \t]*)"
NAME = "[a-zA-Z_][a-zA-Z0-9_-]*"
INT_LITERAL = "(?:\\-[0-9])?(?:[0-9])+"
FLOAT_LITERAL = (
    "(?:(?:(?:\\-[0-9])+|(?:\\-[0-9])?(?:[0-9])+)\\.(?:[0-9])+(?:(?:e|E)(?:(?:\\+|\\-))?"
    "(?:[0-9])+)?|(?:(?:\\-[0-9])+|(?:\\-[0-9])?(?:[0-9])+)(?:e|E)(?:(?:\\+|\\-))?(?:[0-9])+)"
)
ESCAPED_INTERPOLATION = "\\$\\$\\{[^}]*\\}"
ESCAPED_DIRECTIVE = "%%\\{[^}]*\\}"
STRING_CHARS = (
    '(?:(?!\\$\\$\\{)(?!\\$\\{)(?!%%\\{)(?!%\\{)[^"\\\\]|\\\\.|(?:\\$(?!\\$?\\{))|(?:%(?!%?\\{)))+'
)
HEREDOC_TEMPLATE = (
    "<<(?P<heredoc>[a-zA-Z][a-zA-Z0-9._-]*)\r?\n(?:(?:.|\n)*?\r?\n)??\\s*(?P=heredoc)\r?\n"
)
HEREDOC_TEMPLATE_TRIM = (
    "<<-(?P<heredoc_trim>[a-zA-Z][a-zA-Z0-9._-]*)\r?\n(?:(?:.|\n)*?\r?\n)??\\s*"
    "(?P=heredoc_trim)\r?\n"
)
IGNORED = "[ \t\r]+"

# NL_OR_COMMENT without its capturing groups (the master pattern numbers its
# own), and IGNORED allowing none.
_LINE = NL_OR_COMMENT.replace("(.|\n)", "(?:.|\n)").replace("(\\*\\/)", "(?:\\*\\/)")
_SPACE = IGNORED[:-1] + "*"
# One token outside strings, after the ignored whitespace: (1) a run of
# newlines and comments (python-hcl2's NL_OR_COMMENT tokens, merged: where one
# is allowed, a run is), (2) a name, (3) a float, (4) an integer (unsigned: a
# sign is read by the parser, which knows where python-hcl2 lexes `-12` as one
# number), (5) a whole string without `$`, `%` or a backslash at a line end,
# (6) punctuation, longest first.
_TOKEN = re.compile(
    rf"{_SPACE}(?:"
    rf"({_LINE}(?:{_SPACE}{_LINE})*)"
    rf"|({NAME})"
    r"|([0-9]+(?:\.[0-9]+(?:[eE][+-]?[0-9]+)?|[eE][+-]?[0-9]+))"
    r"|([0-9]+)"
    r'|("(?:[^"\\$%]|\\.)*")'
    r"|(==|!=|<=|>=|&&|\|\||=>|\.\.\.|\.\*|\[\*\]|::|<<|[-+*/%!?<>=(){}\[\],.:\"])"
    r")"
).match
# Inside a string: (1) an escaped `$${`/`%%{` sequence (priority 2 in the
# grammar), (2) literal characters, (3) `${`, (4) the closing quote, (5) `%{`.
_STRING_PART = re.compile(
    rf"({ESCAPED_INTERPOLATION}|{ESCAPED_DIRECTIVE})|({STRING_CHARS})|(\$\{{)|(\")|(%\{{)"
).match
_HEREDOC = re.compile(HEREDOC_TEMPLATE).match
_HEREDOC_TRIM = re.compile(HEREDOC_TEMPLATE_TRIM).match
# Where python-hcl2 expects an expression, `-12` or `-1.5` is one number token.
_SIGNED_NUMBER = re.compile(f"({FLOAT_LITERAL})|({INT_LITERAL})").match
_TRAILING_SPACE = re.compile(r"[ \t\r]*\Z").match

_KEYWORDS = frozenset({"if", "in", "for", "for_each", "else", "endif", "endfor"})
_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None}
_PRECEDENCE = {
    "||": 1,
    "&&": 2,
    "==": 3,
    "!=": 3,
    "<": 4,
    ">": 4,
    "<=": 4,
    ">=": 4,
    "+": 5,
    "-": 5,
    "*": 6,
    "/": 6,
    "%": 6,
}

# Token kinds: "n" newlines/comments, "a" name, "f" float, "i" integer, "s" a
# whole string (value: its text), "S" ... "E" a string read in parts ("t" text,
# "I" ... "J" an interpolation), "h" heredoc (value: its Expr), "$" end of
# text; punctuation is its own kind.


class _Decline(Exception):
    """Not plain HCL this reader follows exactly: python-hcl2 decides."""


def read_plain(text: str) -> tuple[dict[str, Expr], list[Block]] | None:
    """A file's top-level attributes and blocks, exactly as python-hcl2's
    tree gives them, or None when this reader does not follow the text."""
    # The reading is millions of small lists that all stay alive: collecting
    # garbage while they are built only walks them again and again.
    collecting = gc.isenabled()
    gc.disable()
    try:
        reader = _Reader(text)
        attrs, blocks = reader.body(top=True)
    except (_Decline, RecursionError):
        return None
    finally:
        if collecting:
            gc.enable()
    return attrs, blocks


def read_plain_expression(text: str) -> Expr | None:
    """One expression (`parse_expression`'s input), or None as read_plain."""
    try:
        reader = _Reader(f"x = {text}")
        attrs, blocks = reader.body(top=True)
    except (_Decline, RecursionError):
        return None
    if reader.attributes != 1 or blocks or "x" not in attrs:
        return None
    return attrs["x"]


def _tokenize(text: str) -> tuple[list[str], list[Any], list[int]]:
    kinds: list[str] = []
    values: list[Any] = []
    starts: list[int] = []
    kind = kinds.append
    value = values.append
    start = starts.append
    # One entry per open string (-1) or interpolation (its `{` depth).
    modes: list[int] = []
    position = 0
    end = len(text)
    while position < end:
        if modes and modes[-1] < 0:
            part = _STRING_PART(text, position)
            if part is None:
                raise _Decline
            group = part.lastindex
            if group == 2:
                kind("t")
                value(unescape(part.group(2)))
            elif group == 1:
                kind("t")
                value(part.group(1)[1:])
            elif group == 3:
                kind("I")
                value(None)
                modes.append(0)
            elif group == 4:
                kind("E")
                value(None)
                modes.pop()
            else:
                raise _Decline  # a template directive
            start(position)
            position = part.end()
            continue
        match = _TOKEN(text, position)
        if match is None:
            if _TRAILING_SPACE(text, position):
                break
            raise _Decline
        group = match.lastindex or 0
        token = match.group(group)
        start(match.start(group))
        position = match.end()
        if group == 2:
            kind("a")
            value(token)
        elif group == 1:
            kind("n")
            value(None)
        elif group == 6:
            value(None)
            if token == '"':
                kind("S")
                modes.append(-1)
            elif token == "{":
                kind("{")
                if modes:
                    modes[-1] += 1
            elif token == "}":
                if modes and modes[-1] == 0:
                    kind("J")
                    modes.pop()
                else:
                    kind("}")
                    if modes:
                        modes[-1] -= 1
            elif token == "<<":
                at = match.start(group)
                trim = text.startswith("<<-", at)
                heredoc = (_HEREDOC_TRIM if trim else _HEREDOC)(text, at)
                if heredoc is None:
                    raise _Decline
                kind("h")
                values[-1] = heredoc_expr(heredoc.group(), trim)
                position = heredoc.end()
            else:
                kind(token)
        elif group == 5:
            kind("s")
            value(unescape(token[1:-1]))
        elif group == 4:
            kind("i")
            value(token)
        else:
            kind("f")
            value(token)
    if modes:
        raise _Decline
    # Sentinels, so a lookahead past the end needs no bounds check.
    kinds += ["$", "$", "$"]
    values += [None, None, None]
    starts += [end, end, end]
    return kinds, values, starts


class _Reader:
    def __init__(self, text: str) -> None:
        # python-hcl2 appends a newline before parsing (its grammar has no EOF).
        self.text = text + "\n"
        self.kinds, self.values, self.starts = _tokenize(self.text)
        self.i = 0
        self.attributes = 0
        self._line = 1
        self._line_position = 0

    def _line_at(self, position: int) -> int:
        # Asked in increasing position order, so counting is incremental.
        self._line += self.text.count("\n", self._line_position, position)
        self._line_position = position
        return self._line

    def _skip_lines(self) -> bool:
        if self.kinds[self.i] == "n":
            self.i += 1
            return True
        return False

    def _expect(self, kind: str) -> None:
        if self.kinds[self.i] != kind:
            raise _Decline
        self.i += 1

    # --- structure ---------------------------------------------------------

    def body(self, top: bool) -> tuple[dict[str, Expr], list[Block]]:
        kinds = self.kinds
        attrs: dict[str, Expr] = {}
        blocks: list[Block] = []
        while True:
            kind = kinds[self.i]
            if kind == "n":
                self.i += 1
                continue
            if kind == "a":
                if kinds[self.i + 1] == "=":
                    name = self.values[self.i]
                    self.i += 2
                    attrs[name] = self.expression()
                    self.attributes += 1
                    after = kinds[self.i]
                    # A heredoc ends with its line's newline: the next item may follow.
                    if after in ("n", "}", "$") or (after == "a" and kinds[self.i - 1] == "h"):
                        continue
                    raise _Decline
                blocks.append(self._block())
                if kinds[self.i] in ("n", "}", "$"):
                    continue
                raise _Decline
            if kind == ("$" if top else "}"):
                return attrs, blocks
            raise _Decline

    def _block(self) -> Block:
        kinds, values = self.kinds, self.values
        line = self._line_at(self.starts[self.i])
        block_type = values[self.i]
        self.i += 1
        labels: list[str] = []
        while True:
            kind = kinds[self.i]
            if kind == "a" or kind == "s":
                labels.append(values[self.i])
                self.i += 1
            elif kind == "S":
                labels.append(label_of(self._string()))
            else:
                break
        self._skip_lines()
        self._expect("{")
        attrs, blocks = self.body(top=False)
        end_line = self._line_at(self.starts[self.i])
        self.i += 1
        return {
            "type": block_type,
            "labels": labels,
            "line": line,
            "end_line": end_line,
            "attrs": attrs,
            "blocks": blocks,
        }

    # --- expressions -------------------------------------------------------

    def expression(self) -> Expr:
        test = self._binary(1)
        if self.kinds[self.i] != "?":
            return test
        self.i += 1
        self._skip_lines()
        then = self.expression()
        self._skip_lines()
        self._expect(":")
        self._skip_lines()
        return ["cond", test, then, self.expression()]

    def _binary(self, lowest: int) -> Expr:
        left = self._unary()
        kinds = self.kinds
        while True:
            operator = kinds[self.i]
            precedence = _PRECEDENCE.get(operator)
            if precedence is None or precedence < lowest:
                return left
            self.i += 1
            self._skip_lines()
            left = ["op", operator, left, self._binary(precedence + 1)]

    def _unary(self) -> Expr:
        kind = self.kinds[self.i]
        if kind == "-":
            number = self._signed_number()
            if number is not None:
                return self._postfix(number)
            self.i += 1
            return unary("-", self._term())
        if kind == "!":
            self.i += 1
            return unary("!", self._term())
        return self._term()

    def _signed_number(self) -> Expr | None:
        """`-12` where python-hcl2 lexes it as one number (an integer of two
        or more digits, or a float), which binds tighter than postfix `.x`."""
        i = self.i
        kind = self.kinds[i + 1]
        if kind not in ("i", "f") or self.starts[i + 1] != self.starts[i] + 1:
            return None
        match = _SIGNED_NUMBER(self.text, self.starts[i])
        if match is None:
            return None
        if match.end() != self.starts[i + 1] + len(self.values[i + 1]):
            raise _Decline  # python-hcl2 would lex a different token here
        self.i += 2
        if match.group(1) is not None:
            return ["lit", float(match.group(1))]
        return ["lit", int(match.group(2))]

    def _term(self) -> Expr:
        return self._postfix(self._primary())

    def _primary(self) -> Expr:
        kinds, values = self.kinds, self.values
        i = self.i
        kind = kinds[i]
        if kind == "s":
            self.i = i + 1
            return template_of([values[i]])
        if kind == "a":
            name = values[i]
            following = kinds[i + 1]
            if name in _LITERALS:
                if following == "(" or following == "::":
                    raise _Decline
                self.i = i + 1
                return ["lit", _LITERALS[name]]
            if name in _KEYWORDS:
                raise _Decline
            if following == "(" or following == "::":
                return self._call()
            self.i = i + 1
            return ["name", name]
        if kind == "i":
            self.i = i + 1
            return ["lit", int(values[i])]
        if kind == "f":
            self.i = i + 1
            return ["lit", float(values[i])]
        if kind == "S":
            return self._string()
        if kind == "[":
            return self._tuple()
        if kind == "{":
            return self._object()
        if kind == "(":
            self.i = i + 1
            self._skip_lines()
            inner = self.expression()
            self._skip_lines()
            self._expect(")")
            return inner
        if kind == "h":
            self.i = i + 1
            result: Expr = values[i]
            return result
        raise _Decline

    def _postfix(self, target: Expr) -> Expr:
        kinds, values = self.kinds, self.values
        while True:
            kind = kinds[self.i]
            if kind == ".":
                following = kinds[self.i + 1]
                if following == "a":
                    target = ["attr", target, values[self.i + 1]]
                elif following == "i":
                    target = ["index", target, ["lit", int(values[self.i + 1])]]
                else:
                    raise _Decline
                self.i += 2
            elif kind == "[":
                target = ["index", target, self._bracket_index()]
            elif kind == "[*]" or kind == ".*":
                self.i += 1
                target = ["splat", target, self._splat_operations()]
            else:
                return target

    def _bracket_index(self) -> Expr:
        self.i += 1
        self._skip_lines()
        key = self.expression()
        self._skip_lines()
        self._expect("]")
        return key

    def _splat_operations(self) -> list[list[Any]]:
        kinds, values = self.kinds, self.values
        operations: list[list[Any]] = []
        while True:
            kind = kinds[self.i]
            if kind == ".":
                following = kinds[self.i + 1]
                if following == "a":
                    operations.append(["attr", values[self.i + 1]])
                elif following == "i":
                    operations.append(["index", ["lit", int(values[self.i + 1])]])
                else:
                    raise _Decline
                self.i += 2
            elif kind == "[":
                operations.append(["index", self._bracket_index()])
            else:
                return operations

    def _string(self) -> Expr:
        kinds = self.kinds
        self.i += 1
        parts: list[Any] = []
        while True:
            kind = kinds[self.i]
            if kind == "t":
                parts.append(self.values[self.i])
                self.i += 1
            elif kind == "I":
                self.i += 1
                parts.append(self.expression())
                self._expect("J")
            elif kind == "E":
                self.i += 1
                return template_of(parts)
            else:
                raise _Decline

    def _call(self) -> Expr:
        kinds, values = self.kinds, self.values
        names = [values[self.i]]
        self.i += 1
        if kinds[self.i] == "::":
            # provider::NAME::function
            for _ in range(2):
                if kinds[self.i] != "::" or kinds[self.i + 1] != "a":
                    raise _Decline
                name = values[self.i + 1]
                if name in _KEYWORDS or name in _LITERALS:
                    raise _Decline
                names.append(name)
                self.i += 2
        self._expect("(")
        self._skip_lines()
        args: list[Expr] = []
        expand = False
        if kinds[self.i] != ")":
            while True:
                args.append(self.expression())
                if kinds[self.i] == "...":
                    expand = True
                    self.i += 1
                    self._skip_lines()
                    break
                line_before = self._skip_lines()
                if kinds[self.i] == ",":
                    self.i += 1
                    self._skip_lines()
                    if kinds[self.i] == ")":
                        # A trailing comma may not follow a line break.
                        if line_before:
                            raise _Decline
                        break
                    continue
                break
        self._expect(")")
        return ["call", "::".join(names), args, expand]

    def _tuple(self) -> Expr:
        kinds = self.kinds
        self.i += 1
        self._skip_lines()
        if kinds[self.i] == "a" and self.values[self.i] == "for":
            return self._for(tuple_form=True)
        items: list[Expr] = []
        while kinds[self.i] != "]":
            items.append(self.expression())
            self._skip_lines()
            if kinds[self.i] == ",":
                self.i += 1
                self._skip_lines()
            elif kinds[self.i] != "]":
                raise _Decline
        self.i += 1
        return ["tuple", items]

    def _object(self) -> Expr:
        kinds, values = self.kinds, self.values
        self.i += 1
        self._skip_lines()
        if kinds[self.i] == "a" and values[self.i] == "for" and kinds[self.i + 1] == "a":
            return self._for(tuple_form=False)
        items: list[list[Expr]] = []
        while kinds[self.i] != "}":
            key: Expr
            if kinds[self.i] == "a" and kinds[self.i + 1] in ("=", ":"):
                word = values[self.i]
                key = ["lit", _LITERALS.get(word, word)]
                self.i += 1
            else:
                key = self.expression()
                if key[0] == "cond":
                    raise _Decline
                key = object_key(key)
            if kinds[self.i] not in ("=", ":"):
                raise _Decline
            self.i += 1
            items.append([key, self.expression()])
            separated = self._skip_lines()
            if kinds[self.i] == ",":
                self.i += 1
                self._skip_lines()
            elif kinds[self.i] != "}" and not separated:
                raise _Decline
        self.i += 1
        return ["object", items]

    def _variable(self) -> str:
        if self.kinds[self.i] != "a":
            raise _Decline
        name: str = self.values[self.i]
        if name in _KEYWORDS or name in _LITERALS:
            raise _Decline
        self.i += 1
        return name

    def _keyword(self, word: str) -> bool:
        if self.kinds[self.i] == "a" and self.values[self.i] == word:
            self.i += 1
            return True
        return False

    def _for(self, tuple_form: bool) -> Expr:
        self.i += 1  # "for"
        self._skip_lines()
        first = self._variable()
        second = None
        if self.kinds[self.i] == ",":
            self.i += 1
            second = self._variable()
        self._skip_lines()
        if not self._keyword("in"):
            raise _Decline
        self._skip_lines()
        collection = self.expression()
        self._skip_lines()
        self._expect(":")
        self._skip_lines()
        key_var, value_var = (first, second) if second is not None else (None, first)
        key: Expr | None = None
        grouping = False
        if tuple_form:
            value = self.expression()
            self._skip_lines()
        else:
            key = self.expression()
            self._expect("=>")
            self._skip_lines()
            value = self.expression()
            self._skip_lines()
            if self.kinds[self.i] == "...":
                grouping = True
                self.i += 1
                self._skip_lines()
        condition = None
        if self._keyword("if"):
            self._skip_lines()
            condition = self.expression()
            self._skip_lines()
        self._expect("]" if tuple_form else "}")
        return ["for", key_var, value_var, collection, key, value, condition, grouping]
