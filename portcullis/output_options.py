"""`--output FORMAT [--output-file FILE]`, repeatable: how a report command picks its outputs.

Shared by `scan`, `policy replay` and `policy diff`, so each reads the same:
every ``--output`` may be followed by its own ``--output-file``; without one
it goes to stdout, and only one may; the default is ``text`` on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class OutputError(Exception):
    """Outputs that can't be given or written as asked: the command exits 2."""


@dataclass(frozen=True)
class Output:
    form: str
    file: str | None  # None: stdout


class _Output(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, value: Any, option: Any = None) -> None:
        outputs = list(getattr(namespace, "outputs", None) or [])
        outputs.append(Output(value, None))
        namespace.outputs = outputs


class _OutputFile(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, value: Any, option: Any = None) -> None:
        outputs = list(getattr(namespace, "outputs", None) or [])
        if not outputs or outputs[-1].file is not None:
            parser.error("--output-file must follow the --output it is for")
        outputs[-1] = Output(outputs[-1].form, value)
        namespace.outputs = outputs


def add_arguments(parser: argparse.ArgumentParser, formats: Iterable[str]) -> None:
    """Add ``--output`` (one of ``formats``) and ``--output-file`` to ``parser``."""
    names = sorted(formats)
    parser.add_argument(
        "--output",
        action=_Output,
        choices=names,
        metavar="FORMAT",
        help=f"{', '.join(names)} (repeatable; default text)",
    )
    parser.add_argument(
        "--output-file",
        action=_OutputFile,
        metavar="FILE",
        help="write the preceding --output to FILE instead of stdout",
    )
    parser.set_defaults(outputs=None)


def requested(args: argparse.Namespace) -> list[Output]:
    """The outputs asked for. Raises OutputError if more than one would go to stdout."""
    outputs: list[Output] = args.outputs or [Output("text", None)]
    if sum(1 for output in outputs if output.file is None) > 1:
        raise OutputError("only one --output can go to stdout; give the others --output-file")
    files = [os.path.realpath(output.file) for output in outputs if output.file is not None]
    for index, name in enumerate(files):
        if name in files[:index]:
            raise OutputError(
                f"two --output go to the same --output-file {name}: the second would "
                "overwrite the first"
            )
    return outputs


def write(outputs: list[Output], render: Callable[[str, bool], str]) -> None:
    """Write each output in order. ``render(form, to_stdout)`` makes its text.
    Raises OutputError naming a file that can't be written."""
    for output in outputs:
        if output.file is None:
            sys.stdout.write(render(output.form, True))
            continue
        text = render(output.form, False)
        try:
            write_file(Path(output.file), text)
        except OSError as error:
            # Said as a report's, or "No such file" reads as a missing input.
            raise OutputError(
                f"{output.file}: the report can't be written: {error.strerror or error}"
            ) from None


def write_file(path: Path, text: str) -> None:
    """Write text to path whole or not at all (:func:`replacing`), so a write that
    fails (a full disk) never leaves half a report for an upload step to choke
    on. Raises OSError."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        # /dev/stdout, a FIFO, a link: written where it leads, as before.
        path.write_text(text, encoding="utf-8")
        return
    with replacing(path) as partial:
        partial.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A file beside ``path`` to write instead: renamed over ``path`` when the
    block ends, removed when it raises, so ``path`` holds the old file or the
    whole new one, never a half-written one."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise


def deliver(
    outputs: list[Output],
    render: Callable[[str, bool], str],
    verdict: Callable[[], str],
    command: str,
) -> bool:
    """Write the outputs; when none went to stdout, say ``verdict()`` on stderr so a
    terminal still shows the answer. False (after saying why, as ``command``) when
    a file can't be written: the command then exits 2."""
    try:
        write(outputs, render)
    except OutputError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return False
    if all(output.file is not None for output in outputs):
        print(verdict(), file=sys.stderr)
    return True
