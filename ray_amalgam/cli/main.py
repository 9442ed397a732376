"""`ray-amalgam`: entry point, error policy and exit codes (0 ok, 1 failed, 2 bad input)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

from rich.markup import escape

from ray_amalgam import __version__
from ray_amalgam.cli import cluster, data, export, jobs, pool, submit, sweep, teachers
from ray_amalgam.cli.console import console, print_json, stdout_closed_to_ray, stdout_reserved_for_json
from ray_amalgam.spec import BadInputError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _UsageError(Exception):
    """Bad flags or arguments: reported by main() like any bad input (argparse would exit)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print a JSON summary on stdout and no progress")
    common.add_argument("--debug", action="store_true", help="show full tracebacks and Ray's own messages")
    parser = _Parser(
        prog="ray-amalgam",
        description="Amalgamate filtered knowledge from multi-task teacher CNNs into one compact student, on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"ray-amalgam {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    data.add_commands(commands, common)
    teachers.add_commands(commands, common)
    jobs.add_commands(commands, common)
    export.add_commands(commands, common)
    cluster.add_commands(commands, common)
    sweep.add_commands(commands, common)
    pool.add_commands(commands, common)
    submit.add_commands(commands, common)
    return parser


def _report(as_json: bool, code: int, label: str, message: str) -> int:
    """One line on stderr; under `--json`, the same message as the command's JSON document."""
    console.print(f"[red]{label}[/red] {escape(message)}", soft_wrap=True)
    if as_json:
        print_json({"error": message, "exit_code": code})
    return code


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.handler(args) or EXIT_OK)
    except BadInputError as error:
        if args.debug:
            console.print_exception()
        return _report(args.json, EXIT_BAD_INPUT, "error:", str(error))
    except KeyboardInterrupt:
        return _report(args.json, EXIT_FAILED, "failed:", "interrupted")
    except Exception as error:  # noqa: BLE001 - the CLI boundary: report, don't dump a traceback
        if args.debug:
            console.print_exception()
        hint = "" if args.debug else " (rerun with --debug for the traceback)"
        return _report(args.json, EXIT_FAILED, "failed:", f"{type(error).__name__}: {error}{hint}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code.

    `argv` None means this is the program (arguments from sys.argv) and owns the process: under
    `--json` stdout then stays closed to everything but the JSON document until the process
    exits, since Ray prints as it shuts down at interpreter exit.
    """
    tokens = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(tokens)
    except SystemExit as exit_:  # --help and --version; keep main() a plain function
        return int(exit_.code or EXIT_OK)
    except _UsageError as error:
        with stdout_reserved_for_json(until_exit=argv is None) if "--json" in tokens else nullcontext():
            return _report("--json" in tokens, EXIT_BAD_INPUT, "error:", str(error))
    if not args.debug:
        # Ray's own warnings (token auth notice, disabled progress bars) would bury the live view.
        logging.getLogger("ray").setLevel(logging.ERROR)
    if args.json:
        stdout: AbstractContextManager[None] = stdout_reserved_for_json(until_exit=argv is None)
    else:
        stdout = nullcontext() if args.debug else stdout_closed_to_ray(until_exit=argv is None)
    with stdout:
        return _run(args)


if __name__ == "__main__":
    sys.exit(main())
