"""Typed errors of the policy engine, so callers can fail closed on any of them."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LOCATION = re.compile(r"-->\s*(?P<file>.+?):(?P<line>\d+):(?P<col>\d+)")
_MESSAGE = re.compile(r"^error:\s*(?P<message>.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy set, located as precisely as the source allows."""

    file: str
    message: str
    line: int | None = None
    col: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        # A file's name or a message quoting a file comes from whoever wrote it.
        return shown(f"{where}: {self.message}")


def shown(text: str) -> str:
    """``text`` as it can be printed: bytes that aren't UTF-8 (surrogates) and
    control characters as escapes (``\\xe9``, ``\\x1b``), never sent to a terminal."""
    if text.isprintable():
        return text
    return "".join(_escaped(char) for char in text)


def _escaped(char: str) -> str:
    if char.isprintable():
        return char
    if "\udc80" <= char <= "\udcff":  # a byte that isn't UTF-8, as Python keeps it
        return f"\\x{ord(char) - 0xDC00:02x}"
    return char.encode("unicode_escape").decode()


class PolicyError(Exception):
    """Base of every error the policy engine raises."""


class PolicyLoadError(PolicyError):
    """The policy set can't be loaded: each problem names its file (and line:col)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class EvaluationError(PolicyError):
    """Evaluating a query failed; a gateway treats this as deny."""


class UndefinedPath(EvaluationError):
    """The query names no rule, package or document in the policy set."""


class UndefinedResult(EvaluationError):
    """The query is valid but its value is undefined for this input."""


class EvaluationTimeout(EvaluationError):
    """Evaluation took longer than the per-call timeout."""


def problem_from_engine_error(error: BaseException, default_file: str) -> Problem:
    """Turn a regorus error message ("--> f.rego:2:8 ... error: msg") into a Problem."""
    text = str(error).split("Stack backtrace:")[0]
    message_match = _MESSAGE.search(text)
    message = message_match.group("message").strip() if message_match else text.strip()
    if message_match and message.endswith(":"):
        # "... defined at:" and a second snippet: name the place, and the words after it.
        rest = text[message_match.end() :]
        earlier = _LOCATION.search(rest)
        if earlier is not None:
            tail = rest[earlier.end() :].rstrip().rsplit("\n", 1)[-1]
            place = f"{earlier['file']}:{earlier['line']}:{earlier['col']}"
            lead = message[:-1] if message.endswith(" at:") else f"{message[:-1]} at"
            message = f"{lead} {place}" + (tail if tail.startswith(":") else "")
    location = _LOCATION.search(text)
    if location is None:
        # "a.rego exceeds maximum allowed line count 20000": the file is the Problem's.
        message = message.removeprefix(f"{default_file} ")
        return Problem(default_file, message or type(error).__name__)
    return Problem(
        location.group("file"),
        message,
        int(location.group("line")),
        int(location.group("col")),
    )


def character_column(line_text: str, engine_column: int) -> int:
    """regorus counts a tab as four columns; editors and OPA count characters."""
    visual = 1
    for index, char in enumerate(line_text):
        if visual >= engine_column:
            return index + 1
        visual += 4 if char == "\t" else 1
    return engine_column
