"""Live progress of a sweep: a Tune callback keeps each trial's state, a rich table shows it.

Tune pickles its run config (callbacks included) into the experiment so that a restored sweep
gets them back; a terminal cannot be pickled. So the callback holds plain data and hands it
to whatever view this process registered with `showing()`, the restored sweep's too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ray import tune
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ray_amalgam.tune.score import SCORE
from ray_amalgam.tune.trial import FINISHED

SweepView = Callable[["SweepProgress"], None]
_views: list[SweepView] = []


@contextmanager
def showing(view: SweepView) -> Iterator[None]:
    """Send every progress change of sweeps run in this process to `view` while inside."""
    _views.append(view)
    try:
        yield
    finally:
        _views.remove(view)


class SweepProgress(tune.Callback):
    """Per trial: status (pending/running/finished/stopped/error), latest stage, score, and when
    it started and ended; the ETA spreads the mean finished trial's time over the remaining ones."""

    def __init__(self, expected_trials: int, concurrency: int) -> None:
        self.expected_trials = expected_trials
        self.concurrency = concurrency
        self.trials: dict[str, dict[str, Any]] = {}

    def _update(self, trial: Any, **fields: Any) -> None:
        row = self.trials.setdefault(trial.trial_id, {"status": "pending", "stage": "-", "score": None, "started": time.time()})
        row.update(fields, tasks=trial.config.get("tasks", "-"), width=trial.config.get("width", "-"))
        for view in _views:
            view(self)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update(trial, status="running", started=time.time())

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._update(trial, stage=result.get("stage", "-"), score=result.get(SCORE))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        finished = bool((trial.last_result or {}).get(FINISHED))
        self._update(trial, status="finished" if finished else "stopped", ended=time.time())

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update(trial, status="error", ended=time.time())

    def get_state(self) -> dict[str, Any]:
        return {"trials": self.trials}

    def set_state(self, state: dict[str, Any]) -> None:
        self.trials = state["trials"]

    def eta_s(self) -> float | None:
        done = [r for r in self.trials.values() if "ended" in r]
        if not done:
            return None
        mean = sum(r["ended"] - r["started"] for r in done) / len(done)
        return max(self.expected_trials - len(done), 0) * mean / max(self.concurrency, 1)


class SweepLiveView:
    """A rich live table of the trials on stderr; use as a context manager around the sweep."""

    def __init__(self, console: Console | None = None) -> None:
        self._live = Live(Text("sweep: building the teacher-output store ..."), console=console or Console(stderr=True),
                          refresh_per_second=2, transient=True)
        self._showing = showing(self)

    def __enter__(self) -> SweepLiveView:
        self._live.__enter__()
        self._showing.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._showing.__exit__(None, None, None)
        self._live.__exit__(None, None, None)

    def __call__(self, progress: SweepProgress) -> None:
        table = Table(title="trials", title_justify="left")
        for column in ("trial", "status", "tasks", "width", "stage", "score"):
            table.add_column(column)
        for trial_id, row in progress.trials.items():
            score = "-" if row["score"] is None else f"{row['score']:.3f}"
            table.add_row(trial_id, row["status"], str(row["tasks"]), str(row["width"]), str(row["stage"]), score)
        eta = progress.eta_s()
        done = sum(1 for r in progress.trials.values() if "ended" in r)
        footer = Text(f"{done}/{progress.expected_trials} trials done, ETA " + ("-" if eta is None else f"{eta:,.0f} s"))
        self._live.update(Group(table, footer))
