"""Terminal output: one stderr console for humans, stdout kept clean for `--json`."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)


class SamplesPerSecondColumn(ProgressColumn):
    """Completed units per second, labelled as samples."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- samples/s" if speed is None else f"{speed:,.0f} samples/s", style="progress.data.speed")


@contextmanager
def progress_bar(quiet: bool) -> Iterator[Progress]:
    """A rich progress display (stage, bar, count, samples/s, ETA); disabled under `--json`."""
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        SamplesPerSecondColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    ) as progress:
        try:
            yield progress
        except BaseException:
            progress.live.transient = True  # a failed step leaves only its error message behind
            raise


class _JsonDocument:
    """The one JSON document of the running `--json` command, written when the command ends."""

    active = False
    given = False
    payload: Any = None


def _dumps(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"


@contextmanager
def stdout_reserved_for_json(until_exit: bool) -> Iterator[None]:
    """Under `--json`, stdout carries exactly one JSON document: the last `print_json` payload,
    written when the command ends.

    Meanwhile file descriptor 1 itself points at stderr, so nothing else can reach stdout: not
    Python code, not C extensions, not the processes Ray starts (they inherit the descriptor), not
    Ray's log thread (it prints raylet warnings to stdout). With `until_exit` (the program owns
    the process) fd 1 stays on stderr after the command too, so what Ray prints as it shuts down
    at interpreter exit ("(raylet) WARNING: N PYTHON worker processes ...") cannot follow the
    document; the document goes to a duplicate of the real stdout. Otherwise (main() called in a
    caller's process) fd 1 is restored and the document goes to the caller's `sys.stdout`.
    """
    caller_stdout = sys.stdout
    caller_stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    _JsonDocument.active, _JsonDocument.given, _JsonDocument.payload = True, False, None
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        text = _dumps(_JsonDocument.payload) if _JsonDocument.given else ""
        _JsonDocument.active, _JsonDocument.given, _JsonDocument.payload = False, False, None
        if until_exit:
            with os.fdopen(real_stdout, "w") as stream:
                stream.write(text)
        else:
            os.dup2(real_stdout, 1)
            os.close(real_stdout)
            caller_stdout.write(text)
            caller_stdout.flush()


@contextmanager
def stdout_closed_to_ray(until_exit: bool) -> Iterator[None]:
    """Human output (tables, progress, errors) goes to the stderr console, so stdout carries only
    what Ray's driver thread and the processes it starts print there, such as "(raylet) WARNING:
    N PYTHON worker processes have been started". Without `--debug`, file descriptor 1 points at
    /dev/null for the command and, when the program owns the process (`until_exit`), until it
    exits: Ray prints again as it shuts down at interpreter exit."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stdout.flush()
        if not until_exit:
            os.dup2(saved, 1)
        os.close(saved)


def print_json(payload: Any) -> None:
    """The command's JSON document. Under `stdout_reserved_for_json` it is written when the
    command ends, and a later call replaces it (an error after a summary must win)."""
    if _JsonDocument.active:
        _JsonDocument.given, _JsonDocument.payload = True, payload
    else:
        sys.stdout.write(_dumps(payload))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)
