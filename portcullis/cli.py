"""The `portcullis` command line: one entry point, a subcommand per tool."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from portcullis import (
    __version__,
    audit_command,
    gateway_command,
    policy_commands,
    policy_diff_command,
    replay_command,
    scan_command,
    session_command,
)
from portcullis.paths import default_policy_dir


class _Parser(argparse.ArgumentParser):
    """argparse, but an unknown option is named before a missing argument: `scan
    --bogus` said only that PATH is required, as argparse checks those first."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        unknown = self._unknown_options(getattr(self, "_given", []))
        if unknown and message.startswith("the following arguments are required"):
            message = f"unrecognized arguments: {' '.join(unknown)} (and {message})"
        super().error(message)

    def _unknown_options(self, given: list[str]) -> list[str]:
        """The arguments that look like options this parser has none of (nor a
        prefix of one, as argparse accepts), up to a `--`."""
        known = self._option_string_actions
        unknown = []
        for arg in given:
            if arg == "--":
                break
            if not arg.startswith("-") or arg == "-" or self._negative_number_matcher.match(arg):
                continue
            name = arg.split("=", 1)[0]
            if name in known or (not name.startswith("--") and name[:2] in known):
                continue
            if name.startswith("--") and any(option.startswith(name) for option in known):
                continue
            unknown.append(arg)
        return unknown


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="portcullis",
        description="Zero-trust access gateway and Terraform scanner on one Rego policy set.",
    )
    parser.add_argument("--version", action="version", version=f"portcullis {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gateway_command.register(commands)

    policy = commands.add_parser("policy", help="test, check, evaluate and bundle Rego policy")
    actions = policy.add_subparsers(dest="action", required=True, metavar="ACTION")

    test = actions.add_parser("test", help="run every test_* rule, like `opa test`")
    test.add_argument(
        "paths",
        nargs="*",
        help="policy directories or bundles; .rego and data files named together are one set",
    )
    test.add_argument("-v", "--verbose", action="store_true", help="list every test")
    test.add_argument("--coverage", action="store_true", help="print per-file line coverage")
    test.add_argument(
        "--run", dest="match", metavar="TEXT", help="only tests whose name contains TEXT"
    )
    test.add_argument(
        "--engine",
        choices=("regorus", "opa"),
        default="regorus",
        help="regorus (embedded, what the gateway runs) or opa (OPA's own Go evaluator, "
        "to check portability; needs opa-golib-python-bindings)",
    )
    test.set_defaults(run=policy_commands.test)

    check = actions.add_parser("check", help="parse, load and evaluate every entry point once")
    check.add_argument(
        "paths",
        nargs="*",
        help="policy directories or bundles; .rego and data files named together are one set",
    )
    check.set_defaults(run=policy_commands.check)

    evaluate = actions.add_parser("eval", help="evaluate a query against an input")
    evaluate.add_argument("query", nargs="?", default="data.portcullis.gateway.decision")
    evaluate.add_argument("--policy", help="policy directory, bundle or OPA URL")
    evaluate.add_argument(
        "--input", dest="input_file", metavar="FILE", help="JSON input, - = stdin"
    )
    evaluate.set_defaults(run=policy_commands.evaluate)

    bundle = actions.add_parser("bundle", help="write an OPA bundle (.tar.gz) of a policy set")
    bundle.add_argument("path", nargs="?", help="policy directory")
    bundle.add_argument("-o", "--output", required=True, help="bundle file to write")
    bundle.add_argument("--revision", help="revision for .manifest (default: content hash)")
    bundle.set_defaults(run=policy_commands.bundle)

    replay_command.register(actions)
    policy_diff_command.register(actions)

    scan_command.add_parser(commands)

    audit_command.register(commands)

    session_command.register(commands)

    parser.set_defaults(default_policy=default_policy_dir)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
