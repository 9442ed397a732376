"""What every Ray Train worker runs: all block stages, branch-out and finetune in ONE run.

Each stage ends with `ray.train.report(metrics, checkpoint)`; the checkpoint holds the engine's
weights (safetensors) and its progress (JSON), so a retried or resumed run continues after the
last finished stage.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import safetensors.torch
import torch

from ray_amalgam.amalgamation import AmalgamationPlan, Amalgamator, stage_metrics, steps_per_epoch
from ray_amalgam.amalgamation.validation import load_teachers
from ray_amalgam.distributed.collectives import sum_across_workers, sum_digests_across_workers
from ray_amalgam.distributed.handoff import DATASET_NAMES, posted_rows
from ray_amalgam.distributed.pipeline import RowsShare, TeacherFeed, id_digest
from ray_amalgam.distributed.progress import board_handle
from ray_amalgam.io.fs import exists, join
from ray_amalgam.io.metafile import LISTED_FILES
from ray_amalgam.io.shards import ID
from ray_amalgam.spec import JobSpec

ENGINE_WEIGHTS = "engine.safetensors"
PROGRESS = "progress.json"
EVENT_INTERVAL_S = 0.5
FIDELITY_BATCH = 256


def save_state(directory: str, engine: Amalgamator, history: dict[str, Any]) -> None:
    # Own copies: the student's branches share tensors with the stage adapters, and safetensors
    # refuses shared storage.
    tensors = {name: t.clone().contiguous() for name, t in engine.state_dict().items()}
    weights = os.path.join(directory, ENGINE_WEIGHTS)
    safetensors.torch.save_file(tensors, weights)
    # progress.json lists the weights' size: Ray uploads the directory file by file, and a
    # checkpoint whose upload was cut off must not be resumed from (see `runner.latest_checkpoint`).
    listing = {LISTED_FILES: {ENGINE_WEIGHTS: os.path.getsize(weights)}}
    with open(os.path.join(directory, PROGRESS), "w", encoding="utf-8") as handle:
        json.dump({"engine": engine.progress(), **history, **listing}, handle)


def read_state(directory: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(engine weights, progress) from a stage checkpoint directory."""
    with open(os.path.join(directory, PROGRESS), encoding="utf-8") as handle:
        progress = json.load(handle)
    return safetensors.torch.load_file(os.path.join(directory, ENGINE_WEIGHTS)), progress


PREFETCH_BATCHES = 4
"""Batches the loader keeps ready ahead of the step: deep enough to hide a decode hiccup."""
FEED_WINDOW = 8
"""Stream mode: batches whose teacher outputs are asked for ahead of the step, enough to keep
every actor of a pool busy while the step runs."""


def collate(batch: Mapping[str, np.ndarray], pin: bool = False) -> dict[str, Any]:
    """Numeric columns to CPU tensors, page-locked when `pin` (a CUDA worker: the engine's
    non-blocking copy then overlaps the step); ids stay strings."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key == ID:
            out[key] = value
            continue
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        out[key] = tensor.pin_memory() if pin else tensor
    return out


def batches(shard: Any, batch_size: int, device: torch.device, feed: TeacherFeed | None = None) -> Any:
    """The worker's shard (a Ray Data shard or its share of `DriverRows`) as engine batches for
    `device`; `feed` appends the teachers' outputs."""
    collate_fn = functools.partial(collate, pin=device.type == "cuda")
    if isinstance(shard, RowsShare):  # in this node's object store already: nothing to prefetch
        rows = shard.iter_batches(batch_size)
    elif feed is None:
        return shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate_fn, prefetch_batches=PREFETCH_BATCHES)
    else:
        rows = shard.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=PREFETCH_BATCHES)
    return map(collate_fn, feed(rows) if feed is not None else rows)


class Timeline:
    """When each fixed-cost step of the run happened, in seconds since the driver started `fit`."""

    def __init__(self, fit_started_at: float) -> None:
        self.origin = fit_started_at
        self.events: list[dict[str, Any]] = []

    def mark(self, event: str, stage: str | None = None, seconds: float | None = None) -> None:
        self.events.append({"event": event, "stage": stage, "at_s": round(time.time() - self.origin, 3), "seconds": seconds})

    @contextlib.contextmanager
    def span(self, event: str, stage: str | None = None) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.mark(event, stage, round(time.perf_counter() - started, 3))


class Reporter:
    """Rank 0 sends the latest training event to the job's progress board, at most every EVENT_INTERVAL_S."""

    def __init__(self, board_name: str | None, rank: int) -> None:
        self.board = board_handle(board_name) if board_name else None
        self.rank = rank
        self._last = 0.0
        if self.board is not None:
            self.board.worker_started.remote(rank, ray.get_runtime_context().current_actor, ray.get_runtime_context().get_node_id())

    def send(self, event: dict[str, Any], force: bool = False) -> None:
        now = time.monotonic()
        if self.board is None or self.rank != 0 or (not force and now - self._last < EVENT_INTERVAL_S):
            return
        self._last = now
        self.board.update.remote(event)


def run_epoch(
    engine: Amalgamator, model: torch.nn.Module, rows: KeptShard, stage: str, epoch: int, epochs: int,
    world: int, reporter: Reporter,
) -> dict[str, Any]:
    started = time.perf_counter()
    samples, loss_sum, steps = 0, 0.0, 0
    count, hash_sum = 0, 0
    first_batch_s, first_batch_rows = None, 0
    waited, step_ended = 0.0, started  # steady-state time blocked on the loader: the step starved
    replayed = rows.replaying
    for batch in rows:
        if first_batch_s is None:
            first_batch_s, first_batch_rows = time.perf_counter() - started, len(batch["image"])
        else:
            waited += time.perf_counter() - step_ended
        c, h = id_digest(batch[ID])
        count, hash_sum = count + c, (hash_sum + h) % (1 << 64)
        losses = engine.train_step(batch, model=model)
        samples += len(batch["image"])
        loss_sum += losses["loss"]
        steps += 1
        step_ended = time.perf_counter()
        elapsed = step_ended - started
        reporter.send({
            "kind": "train", "stage": stage, "epoch": epoch, "epochs": epochs, "epoch_samples": samples * world,
            "samples_per_s": samples * world / max(elapsed, 1e-9), "loss": losses["loss"], "train_workers": world,
        })
    seconds = time.perf_counter() - started
    total_samples, total_loss, total_steps, over_cap = sum_across_workers([samples, loss_sum, steps, float(rows.over_cap)])
    rows.settle(every_worker_keeps=over_cap == 0)
    # Steady state: after the first batch, whose wait is the pipeline's start-up cost.
    steady_seconds = seconds - (first_batch_s or 0.0)
    steady = (samples - first_batch_rows) * world / steady_seconds if steady_seconds > 0 and steps > 1 else None
    rows_seen, digest = sum_digests_across_workers(count, hash_sum)
    return {
        "stage": stage,
        "epoch": epoch,
        "samples": int(total_samples),
        "seconds": round(seconds, 3),
        "samples_per_s": total_samples / max(seconds, 1e-9),
        "steady_samples_per_s": steady,
        "first_batch_s": round(first_batch_s or 0.0, 3),
        "data_wait_s": round(waited, 3),
        "replayed": replayed,
        "loss": total_loss / max(total_steps, 1),
        "rows_seen": rows_seen,
        "id_digest": str(digest),
    }


CHECK_KEEP_BYTES = 256 * 2**20
"""Check rows (with their targets) a worker keeps after its first fidelity check; a larger share
is read, and in stream mode answered by the teachers, again at every check."""
TRAIN_KEEP_BYTES = 1 * 2**30
"""Training rows (with their targets) a worker keeps after its first epoch and replays in every
later epoch and stage. Beyond it, every epoch reads them again (and in stream mode asks the
teachers again): the ceiling on what one job adds to a worker's memory."""


class KeptShard:
    """This worker's shard of a dataset as engine batches, kept in memory after a whole pass
    that fits `cap_bytes` and replayed from then on, once `settle` says every worker keeps its
    own. The rows and their targets (the store's, or in stream mode the teachers' answers, which
    `feed` asks for) never change, and a pass reads them in the same order, so a replayed pass
    trains exactly as a read one; skipped are Ray Data's per-batch work and, in stream mode, the
    teacher calls. Augmented views change every pass: give those `cap_bytes` 0."""

    def __init__(self, shard: Any, batch_size: int, device: torch.device, feed: TeacherFeed | None, cap_bytes: int, keep_ids: bool) -> None:
        self.shard, self.batch_size, self.device, self.feed = shard, batch_size, device, feed
        self.cap_bytes, self.keep_ids = cap_bytes, keep_ids
        self._kept: list[dict[str, Any]] | None = None
        self._last_pass: list[dict[str, Any]] | None = None

    @property
    def replaying(self) -> bool:
        return self._kept is not None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._kept is not None:
            yield from self._kept
            return
        self._last_pass, size = [], 0
        for batch in batches(self.shard, self.batch_size, self.device, self.feed):
            if not self.keep_ids:
                batch = {k: v for k, v in batch.items() if k != ID}
            if self._last_pass is not None:
                size += sum(v.nbytes for v in batch.values())
                if size > self.cap_bytes:
                    self._last_pass = None
                else:
                    self._last_pass.append(batch)
            yield batch

    @property
    def over_cap(self) -> bool:
        """This worker read its rows and could not keep them."""
        return self._kept is None and self._last_pass is None

    def settle(self, every_worker_keeps: bool) -> None:
        """After a pass: keep it only if every worker does. A split dataset's workers read it in
        step, so one worker alone reading it again would wait for the others forever."""
        if self._kept is None and every_worker_keeps:
            self._kept = self._last_pass
        self._last_pass = None


def _fidelity(engine: Amalgamator, check: KeptShard) -> tuple[dict[str, float], int]:
    """Fidelity on this worker's part of the check rows, summed over all workers, and the row
    count: every worker gets the same numbers, so branch-out decides the same everywhere (DDP
    needs one structure)."""
    sums, count = engine.fidelity_sums(check)
    tasks = list(engine.plan.task_names)
    reduced = sum_across_workers([sums.get(t, 0.0) for t in tasks] + [float(count), float(check.over_cap)])
    check.settle(every_worker_keeps=reduced[-1] == 0)
    total = max(reduced[-2], 1.0)
    return {t: reduced[i] / total for i, t in enumerate(tasks) if t in sums}, int(reduced[-2])


def _shard(config: dict[str, Any], name: str, rank: int, world: int) -> Any:
    """This worker's part of the `name` rows: its share of the driver's rows, posted on the
    job's board, or its Ray Data shard."""
    if config.get("rows_from_driver"):
        return posted_rows(config["board"], name).share(rank, world)
    return ray.train.get_dataset_shard(name)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point; `config`: job (JSON dict), plan, threads, board (actor name), resume_from
    (URL), teacher_actors (stream mode: teacher name -> its pool's actor handles), rows_from_driver
    (the rows are `DriverRows` posted on the board, not Ray Train datasets)."""
    timeline = Timeline(config["fit_started_at"])
    timeline.mark("worker_started")
    job = JobSpec.model_validate(config["job"])
    plan: AmalgamationPlan = config["plan"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config["threads"])
    device = ray.train.torch.get_device()
    with timeline.span("setup"):
        engine = Amalgamator(plan, load_teachers(plan), job, device)
    history: dict[str, Any] = {"records": [], "epochs": [], "restored_from": None}
    # A retry inside this run (FailureConfig) gets Ray's latest checkpoint; a `--resume`d run also
    # gets the one the driver found in the output's storage. Ray's own may be older (its snapshot
    # can lag the last report of a killed run), so the one with more finished stages wins.
    candidates: list[Any] = [c for c in [ray.train.get_checkpoint()] if c is not None]
    resume_from = config.get("resume_from")
    if resume_from and exists(join(resume_from, PROGRESS)):  # Ray may have pruned it since (num_to_keep)
        candidates.append(resume_from)
    restored = []
    for candidate in candidates:
        checkpoint = candidate if isinstance(candidate, ray.train.Checkpoint) else ray.train.Checkpoint(candidate)
        with checkpoint.as_directory() as directory:
            restored.append(read_state(directory))
    if restored:
        weights, saved = max(restored, key=lambda state: len(state[1]["engine"]["finished"]))
        engine.load(weights, saved["engine"])
        history = {"records": saved["records"], "epochs": saved["epochs"], "restored_from": saved["engine"]["finished"][-1]}
        timeline.events[:0] = saved.get("timeline", [])
    history["timeline"] = timeline.events
    reporter = Reporter(config.get("board"), rank)
    teachers = config.get("teacher_actors")
    feed = TeacherFeed(teachers, FEED_WINDOW) if teachers else None
    with timeline.span("wait_for_rows"):
        train_rows, check_rows = (_shard(config, name, rank, world) for name in DATASET_NAMES)
    train = KeptShard(train_rows, job.schedule.batch_size, device, feed, 0 if job.schedule.augment else TRAIN_KEEP_BYTES, keep_ids=True)
    check = KeptShard(check_rows, FIDELITY_BATCH, device, feed, CHECK_KEEP_BYTES, keep_ids=False)
    stages = engine.stage_names()
    for index, stage in enumerate(stages):
        if stage in engine.progress()["finished"]:
            continue
        if not engine.skips(stage):
            epochs = engine.stage_epochs(stage)
            steps = epochs * steps_per_epoch(config["train_rows"], job.schedule.batch_size, world)
            # find_unused_parameters: a stage may hold modules no loss reaches for some batches
            # (e.g. hint adapters); DDP would otherwise stall waiting for their gradients.
            with timeline.span("prepare_model", stage):
                model = ray.train.torch.prepare_model(
                    engine.stage_module(stage, steps), parallel_strategy_kwargs={"find_unused_parameters": True}
                )
            for epoch in range(1, epochs + 1):
                with timeline.span("epoch", stage):
                    history["epochs"].append(run_epoch(engine, model, train, stage, epoch, epochs, world, reporter))
                if epoch < epochs and engine.keeps_best(stage):
                    with timeline.span("fidelity", stage):
                        engine.keep_if_best(_fidelity(engine, check)[0], epoch)
            with timeline.span("fidelity", stage):
                fidelity, samples = _fidelity(engine, check)
        else:
            fidelity, samples = {}, 0
        record = engine.finish_stage(stage, fidelity, samples)
        fidelity = record["fidelity"]  # the kept epoch's, where the stage returned to its best
        history["records"].append(record)
        metrics = stage_metrics(stage, index, len(stages), fidelity)
        reporter.send({"kind": "stage_done", "stage": stage, "stage_index": index, "stages": len(stages), "train_workers": world, "fidelity": fidelity}, force=True)
        # This report's own duration lands in the next stage's checkpoint (the driver times the last).
        with tempfile.TemporaryDirectory() as directory, timeline.span("report", stage):
            if rank == 0:
                save_state(directory, engine, history)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory), checkpoint_dir_name=f"stage-{index:02d}-{stage}")
            else:
                ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=f"stage-{index:02d}-{stage}")
