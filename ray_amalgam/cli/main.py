"""`ray-amalgam`: entry point, error policy and exit codes (0 ok, 1 failed, 2 bad input)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from contextlib import nullcontext

from rich.markup import escape

from ray_amalgam import __version__
from ray_amalgam.cli import cluster, data, jobs, teachers
from ray_amalgam.cli.console import console, stdout_reserved_for_json
from ray_amalgam.spec import BadInputError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse already exits 2 on bad flags; keep its message to one line.
        console.print(f"[red]error:[/red] {self.prog}: {escape(message)} (see --help)", soft_wrap=True)
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print a JSON summary on stdout and no progress")
    common.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser = _Parser(
        prog="ray-amalgam",
        description="Amalgamate filtered knowledge from multi-task teacher CNNs into one compact student, on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"ray-amalgam {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    data.add_commands(commands, common)
    teachers.add_commands(commands, common)
    jobs.add_commands(commands, common)
    cluster.add_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, --version and bad flags; keep main() a plain function
        return int(exit_.code or EXIT_OK)
    if not args.debug:
        # Ray's own warnings (token auth notice, disabled progress bars) would bury the live view.
        logging.getLogger("ray").setLevel(logging.ERROR)
    try:
        with stdout_reserved_for_json() if args.json else nullcontext():
            return int(args.handler(args) or EXIT_OK)
    except BadInputError as error:
        if args.debug:
            console.print_exception()
        console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        return EXIT_FAILED
    except Exception as error:  # noqa: BLE001 - the CLI boundary: report, don't dump a traceback
        if args.debug:
            console.print_exception()
        else:
            console.print(
                f"[red]failed:[/red] {type(error).__name__}: {escape(str(error))} (rerun with --debug for the traceback)",
                soft_wrap=True,
            )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
