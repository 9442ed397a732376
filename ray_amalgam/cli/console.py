"""Terminal output: one stderr console for humans, stdout kept clean for `--json`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from typing import Any, TextIO

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


_json_stream: TextIO | None = None


@contextmanager
def stdout_reserved_for_json() -> Iterator[None]:
    """Under `--json`, stdout carries only the JSON summary: anything else printed meanwhile
    (Ray prints raylet warnings to stdout from a thread) goes to stderr."""
    global _json_stream
    _json_stream = sys.stdout
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        _json_stream = None


def print_json(payload: Any) -> None:
    (_json_stream or sys.stdout).write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)
