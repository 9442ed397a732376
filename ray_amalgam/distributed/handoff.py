"""The job's rows, built on a driver thread while Ray Train starts, handed to its controller
(Ray Datasets) or straight to its workers (`DriverRows`).

Ray Train spends seconds before a worker runs a line of the loop: a controller process, the
worker processes, their imports (14-18 s for an empty loop on a 2-core machine). The store
pass, or stream mode's reads and decodes, need not wait for that: `fit` starts
at once with dataset factories, and the controller calls them only once its workers exist; each
waits on the job's board for what this thread posted there. Rows the driver decoded itself skip
the controller: each worker waits on the board for them once its own setup is done.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
import ray.data

from ray_amalgam.distributed.errors import named_error
from ray_amalgam.distributed.pipeline import DriverRows
from ray_amalgam.distributed.progress import board_handle

POLL_S = 0.2
DATASET_NAMES = ("train", "check")

Rows = ray.data.Dataset | DriverRows
Built = tuple[dict[str, Rows], dict[str, Any]]


class DataBuildFailed(RuntimeError):
    """Raised in the controller or a worker when the driver could not build the rows (the driver raises the cause)."""


def posted_rows(board_name: str, name: str) -> Rows:
    """In Ray Train's controller or a train worker: wait for the driver to post the job's rows;
    return `name`."""
    board = board_handle(board_name)
    while (posted := ray.get(board.rows.remote())) is None:
        time.sleep(POLL_S)
    rows = ray.get(posted[0])
    if name not in rows:
        raise DataBuildFailed("the job's datasets could not be built; the driver reports why")
    return rows[name]


class DatasetHandoff:
    """Starts `build` (returning the datasets by name and facts about them) on a driver thread,
    which posts the datasets, or the failure, to the board; `factories()` are Ray Train's `datasets`."""

    def __init__(self, board: Any, board_name: str, build: Callable[[], Built]) -> None:
        self._board = board
        self._board_name = board_name
        self._build = build
        self._info: dict[str, Any] = {}
        self._error: BaseException | None = None
        # A daemon: a job cut short by Ctrl-C does not wait for the build to end.
        self._thread = threading.Thread(target=self._run, name="ray-amalgam-datasets", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            datasets, info = self._build()
            self._info = {**info, "data_seconds": round(time.perf_counter() - started, 2)}
        except BaseException as error:  # noqa: BLE001 - handed to the driver's thread in `result`
            self._error = error
            datasets = {}
        self._board.post_rows.remote([ray.put(datasets)])  # in a list: the board keeps the reference

    def factories(self) -> dict[str, Callable[[], ray.data.Dataset]]:
        return {name: functools.partial(posted_rows, self._board_name, name) for name in DATASET_NAMES}

    def result(self) -> dict[str, Any]:
        """Wait for the build; re-raise its error here, or return its facts (with `data_seconds`)."""
        self._thread.join()
        if self._error is not None:
            raise named_error(self._error) from self._error.__cause__
        return self._info
