"""Progress of a running job: a small Ray actor that teacher actors and train workers report to,
and a driver-side thread that turns its state into events for a callback (the CLI renders them).

Actors report with fire-and-forget calls, so progress never slows the pipeline down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from rich.console import Console
from rich.live import Live
from rich.table import Table

ProgressCallback = Callable[[dict[str, Any]], None]

ALIVE_WINDOW_S = 15.0
"""A teacher actor that processed a batch within this window counts as alive."""


@ray.remote(num_cpus=0)
class ProgressBoard:
    """The latest training event, teacher actor heartbeats and the handles of the actors that report.

    Handles let tests and operators find a live teacher actor or train worker (e.g. to kill
    one and watch the job recover) without private Ray APIs. It also holds the job's datasets
    once the driver has built them, for Ray Train's controller or the train workers (`handoff`).
    """

    def __init__(self) -> None:
        self._event: dict[str, Any] = {}
        self._stages_done: list[str] = []
        self._teacher_beats: dict[str, tuple[str, float, int]] = {}
        self._teacher_handles: dict[str, Any] = {}
        self._worker_handles: dict[int, Any] = {}
        self._teacher_order: list[str] = []
        self._teacher_restarts = 0
        self._nodes: dict[tuple[str, str, str], str | None] = {}
        self._rows: list[Any] | None = None

    def teacher_started(self, actor_id: str, teacher: str, handle: Any, node_id: str | None = None) -> None:
        """Called by each teacher actor's constructor, again after Ray restarts it."""
        self._nodes[("teacher", teacher, actor_id)] = node_id
        if actor_id in self._teacher_handles:
            self._teacher_restarts += 1
        else:
            self._teacher_order.append(actor_id)
        self._teacher_handles[actor_id] = handle
        self._teacher_beats[actor_id] = (teacher, time.time(), 0)

    def teacher_batch(self, actor_id: str, teacher: str) -> None:
        _, _, batches = self._teacher_beats.get(actor_id, (teacher, 0.0, 0))
        self._teacher_beats[actor_id] = (teacher, time.time(), batches + 1)

    def worker_started(self, rank: int, handle: Any, node_id: str | None = None) -> None:
        self._worker_handles[rank] = handle
        self._nodes[("worker", str(rank), "")] = node_id

    def placement(self) -> dict[str, Any]:
        """Which node (id) each train worker rank and each teacher's actors last started on."""
        workers = {int(rank): node for (kind, rank, _), node in self._nodes.items() if kind == "worker"}
        teachers: dict[str, list[str | None]] = {}
        for (kind, teacher, _), node in self._nodes.items():
            if kind == "teacher":
                teachers.setdefault(teacher, []).append(node)
        return {"train_workers": [workers[r] for r in sorted(workers)], "teacher_actors": teachers}

    def update(self, event: dict[str, Any]) -> None:
        self._event = event
        if event.get("kind") == "stage_done" and event["stage"] not in self._stages_done:
            self._stages_done.append(event["stage"])

    def post_rows(self, rows: list[Any]) -> None:
        """`[reference]` to the job's rows by name (empty when the driver failed to build them).
        Held by reference: unpickling the rows here would import what defines them (torch, Ray
        Data), seconds on a small machine, in the path from the build to the first step."""
        self._rows = rows

    def rows(self) -> list[Any] | None:
        return self._rows

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        alive = sum(1 for _, seen, _ in self._teacher_beats.values() if now - seen < ALIVE_WINDOW_S)
        return {
            **self._event,
            "teacher_actors_alive": alive,
            "teacher_batches": sum(b for _, _, b in self._teacher_beats.values()),
            "teacher_restarts": self._teacher_restarts,
            "stages_done": list(self._stages_done),
        }

    def teacher_actors(self) -> list[tuple[str, str, int, Any]]:
        """(actor id, teacher name, batches processed, handle), oldest actor first."""
        return [(aid, self._teacher_beats[aid][0], self._teacher_beats[aid][2], self._teacher_handles[aid]) for aid in self._teacher_order]

    def workers(self) -> dict[int, Any]:
        return dict(self._worker_handles)


def board_handle(name: str) -> Any:
    """The job's board, from inside any actor or task of the job."""
    return ray.get_actor(name)


class ProgressPoller:
    """Driver thread: every `interval_s`, pass the board's snapshot (plus `extra` fields) to `callback`."""

    def __init__(self, board: Any, callback: ProgressCallback, extra: dict[str, Any], interval_s: float = 1.0) -> None:
        self._board = board
        self._callback = callback
        self._extra = extra
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ray-amalgam-progress", daemon=True)

    def __enter__(self) -> ProgressPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def emit(self, event: dict[str, Any]) -> None:
        """A driver-side event (phase changes such as building the store)."""
        self._callback({**self._extra, **event})

    def _run(self) -> None:
        last: dict[str, Any] = {}
        while not self._stop.wait(self._interval_s):
            try:
                snapshot = ray.get(self._board.snapshot.remote(), timeout=5)
            except (ray.exceptions.RayError, TimeoutError):
                continue  # a slow board only delays the view; the job goes on
            if snapshot.get("kind") and snapshot != last:
                self._callback({**self._extra, **snapshot})
            last = snapshot


class LiveView:
    """A rich live panel for `run_job(progress_callback=view)`: stage, epoch, samples/s, teacher
    actors alive, train workers, ETA. Use as a context manager around the run."""

    def __init__(self, console: Any = None) -> None:
        self._event: dict[str, Any] = {}
        self._live = Live(self._render(), console=console or Console(stderr=True), refresh_per_second=4, transient=True)

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def __call__(self, event: dict[str, Any]) -> None:
        self._event = event
        self._live.update(self._render())

    def _render(self) -> Any:
        e = self._event
        table = Table.grid(padding=(0, 2))
        if e.get("kind") in ("train", "stage_done"):
            done = len(e.get("stages_done", []))
            table.add_row("stage", f"{e.get('stage', '-')} ({done}/{e.get('stage_count', e.get('stages', '?'))} done)")
            table.add_row("epoch", f"{e.get('epoch', '-')}/{e.get('epochs', '-')}  rows {e.get('epoch_samples', 0):,}/{e.get('rows', 0):,}")
            table.add_row("samples/s", f"{e.get('samples_per_s', 0.0):,.0f}")
            eta = e.get("eta_s")
            table.add_row("ETA", "-" if eta is None else f"{eta:,.0f} s")
        else:
            table.add_row("phase", f"{e.get('kind', 'starting')} {e.get('phase', '')}".strip())
        table.add_row("teacher actors alive", str(e.get("teacher_actors_alive", 0)))
        table.add_row("train workers", str(e.get("train_workers", "-")))
        table.add_row("mode", str(e.get("mode", "-")))
        return table


class LogLines:
    """Progress for a log rather than a terminal (a submitted job's logs, a pipe, a file): a live
    panel draws nothing there, so print one plain line whenever the job enters a new phase or
    stage, and when a stage finishes."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._last: tuple[Any, ...] | None = None
        self._done: list[str] = []

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, event: dict[str, Any]) -> None:
        for stage in event.get("stages_done", [])[len(self._done):]:
            self._done.append(stage)
            self._print(f"stage {stage} done ({len(self._done)}/{event.get('stage_count', event.get('stages', '?'))})")
        kind = event.get("kind")
        if kind == "train":
            key: tuple[Any, ...] = (kind, event.get("stage"))
            line = (f"stage {event.get('stage')}: {event.get('epochs', '?')} epoch(s) over {event.get('rows', 0):,} rows, "
                    f"{event.get('train_workers', '?')} train worker(s), {event.get('teacher_actors_alive', 0)} teacher actor(s) alive")
        elif kind == "stage_done":
            return
        else:
            key = (kind, event.get("phase"))
            line = f"{kind} {event.get('phase', '')}".strip().replace("_", " ")
        if key != self._last:
            self._last = key
            self._print(line)

    def _print(self, line: str) -> None:
        self._console.print(f"{time.strftime('%H:%M:%S')} {line}", markup=False, highlight=False, soft_wrap=True)
