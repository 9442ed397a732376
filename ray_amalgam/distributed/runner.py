"""`run_job`: validate a job, start or join Ray, feed teacher outputs (stream or store) to ONE
Ray Train run that holds every stage, then write the student, metrics and report."""

from __future__ import annotations

import functools
import json
import logging
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
import ray.train
import torch
from ray.data.context import DEFAULT_TARGET_MAX_BLOCK_SIZE
from ray.train.torch import TorchTrainer
from ray.util.debug import log_once

from ray_amalgam.amalgamation import (
    FINETUNE,
    AmalgamationPlan,
    Amalgamator,
    concrete_schedule,
    rank_hint_channels,
)
from ray_amalgam.amalgamation.runner import HOLDOUT_FRACTION, report_tables, save_and_evaluate
from ray_amalgam.amalgamation.validation import load_teachers, validate_job, with_absolute_paths, write_job_record
from ray_amalgam.distributed.handoff import Built, DatasetHandoff
from ray_amalgam.distributed.pipeline import (
    TeacherPools,
    arrow_filesystem,
    decoded,
    decoded_in_driver,
    holdout_split,
    id_digest,
    read_rows,
    split_in_driver,
)
from ray_amalgam.distributed.progress import (
    ProgressBoard,
    ProgressCallback,
    ProgressPoller,
)
from ray_amalgam.distributed.resources import ResourcePlan, connect
from ray_amalgam.distributed.store import Store, ensure_store, read_store, store_hint_channels, store_tables, target_columns
from ray_amalgam.distributed.train_loop import PROGRESS, read_state, train_loop
from ray_amalgam.io.fs import (
    atomic_write_bytes,
    atomic_write_text,
    exists,
    files_not_as_listed,
    join,
    resolve,
)
from ray_amalgam.io.images import decode_batch
from ray_amalgam.io.metafile import LISTED_FILES
from ray_amalgam.io.shards import (
    ID,
    IMAGE,
    holdout_mask,
    iter_batches,
    iter_shard_batches,
    list_shards,
    read_ids,
)
from ray_amalgam.models import create_backbone
from ray_amalgam.spec import JobSpec

_log = logging.getLogger(__name__)

RUN_NAME = "amalgamate"
TRAIN_STORAGE = "ray_train"
STORE_DIR = "teacher_store"
MAX_FAILURES = 2
"""Worker-group failures Ray Train recovers from (restarting from the last stage checkpoint)."""


def with_hints(job: JobSpec, plan: AmalgamationPlan, store: Store | None = None) -> AmalgamationPlan:
    """Rank the kept hint channels once, on the driver, from the first training images; with a
    shared `store`, take the channels its hint columns hold (they were ranked when it was built)."""
    if not job.hint.enabled:
        return plan
    if store is not None:
        return plan.with_hint_channels({t: c for t, c in store_hint_channels(store).items() if t in plan.teachers})
    table = next(iter_batches(job.data.train, [IMAGE], batch_size=job.hint.calibration_samples))
    images = decode_batch(table.column(IMAGE).to_pylist(), job.data.train)
    return plan.with_hint_channels(rank_hint_channels(plan, load_teachers(plan), images, job.hint.keep_fraction))


def _train_ids(url: str) -> tuple[list[str], int]:
    """The training rows' ids (held-out rows excluded) and how many rows are held out."""
    ids = read_ids(url)
    held = holdout_mask(ids, HOLDOUT_FRACTION)
    return [i for i, h in zip(ids, held) if not h], int(held.sum())


MATERIALIZE_FRACTION = 0.5
"""Share of the object store that a job's decoded rows may fill to be kept there for the whole
job; larger data is read from its files (and decoded) every epoch."""


def decoded_row_bytes(plan: AmalgamationPlan) -> int:
    """Object-store bytes of one decoded row: pixels, float32 logits, float16 hints, id."""
    pixels = plan.input_size**2
    logits = sum(len(task.classes) * len(plan.sources[task.name]) for task in plan.tasks) * 4
    hint_channels = sum(len(channels) for blocks in plan.hint_channels.values() for channels in blocks.values())
    return pixels * 3 + logits + hint_channels * pixels * 2 + 64  # a block's map is never larger than the input


def fits_in_memory(rows: int, plan: AmalgamationPlan) -> bool:
    budget = ray.cluster_resources().get("object_store_memory", 0.0) * MATERIALIZE_FRACTION
    return rows * decoded_row_bytes(plan) <= budget


def split_and_decode(
    rows: ray.data.Dataset, where: str, held: bool, resources: ResourcePlan, batch_size: int, augment: bool = False,
) -> ray.data.Dataset:
    """The training rows (or, `held`, the held-out ones) with their images decoded."""
    return decoded(holdout_split(rows, held, resources), where, resources, batch_size, keep_encoded=False, augment=augment)


def rows_in_driver(job: JobSpec, plan: AmalgamationPlan, resources: ResourcePlan, total_rows: int) -> bool:
    """Whether the driver reads, splits and decodes the rows itself and the train workers read
    them from the object store (`DriverRows`), with no Ray Data task or pipeline: rows that fit
    in memory on a one-node Ray, unless stream mode augments them (new views every epoch)."""
    return resources.local and not job.schedule.augment and fits_in_memory(total_rows, plan)


def build_datasets(
    job: JobSpec, plan: AmalgamationPlan, resources: ResourcePlan, total_rows: int, held_rows: int, in_driver: bool,
    board: str, emit: Callable[[dict[str, Any]], None], shared_store: Store | None = None,
) -> Built:
    """The `train` and `check` rows in the engine's batch format, and how they were made.

    Data that fits MATERIALIZE_FRACTION of the object store is read once and kept there: every
    read of Parquet files starts with a listing and footer pass (seconds, whatever the size),
    which would otherwise come back at every epoch's first batch. On a one-node cluster the
    driver reads, splits and decodes it itself (`rows_in_driver`, `decoded_in_driver`): no Ray
    Data task, and the workers read `DriverRows`; otherwise the rows are Ray Datasets.
    `store`: one teacher pass writes (or reuses) the store; in memory, the training rows are
    split off and decoded once, so epochs run no task at all.
    `stream`: the training rows only (decoded; in memory, only augmentation is repeated): the
    train workers ask the job's long-lived teacher actors for every batch's outputs themselves,
    the check rows' too (at their first fidelity check), so the build never waits for the actors.
    The check rows (the small held-out share for fidelity) are materialized in both modes.
    `shared_store`: a store built beforehand for a superset of the job's tasks (a sweep's); the
    job reads its own columns from it and runs no teacher.
    """
    batch = job.resources.teacher_batch_size
    held = held_rows > 0  # with no held-out row, fidelity is measured on the training rows
    in_memory = fits_in_memory(total_rows, plan)
    workers = job.resources.num_workers
    info: dict[str, Any] = {"in_memory": in_memory, "decoded_in": "driver" if in_driver else "ray_data"}
    if job.teacher_outputs == "store":
        emit({"kind": "store", "phase": "checking"})
        started = time.perf_counter()
        passed: list[pa.Table] = []  # the rows of a teacher pass run in this process, decoded
        store = shared_store or ensure_store(job, plan, "train", job.data.train, join(job.output, STORE_DIR), resources, [], board,
                                             passed.append if in_driver else None)
        info.update({"store": store.url, "store_rebuilt": store.rebuilt, "store_computed": list(store.computed),
                     "store_seconds": round(time.perf_counter() - started, 2)})
        emit({"kind": "store", "phase": "ready", **info})
        started = time.perf_counter()
        columns = [ID, IMAGE, *target_columns(plan)]
        if passed and set(columns) <= set(passed[0].column_names):  # every teacher ran here: no store read
            info["rows_from_pass"] = True
            train, check = split_in_driver((table.select(columns) for table in _drained(passed)), held, workers)
        elif in_driver:
            train, check = decoded_in_driver(store_tables(store, columns, batch), held, workers)
        else:
            rows = read_store(store, columns, resources, batch)
            rows = rows.materialize() if in_memory else rows
            train = split_and_decode(rows, store.url, False, resources, batch)
            train = train.materialize() if in_memory else train
            check = split_and_decode(rows, store.url, held, resources, batch).materialize()
        info["store_load_seconds"] = round(time.perf_counter() - started, 2)
        return {"train": train, "check": check}, info
    augment = job.schedule.augment
    if in_driver:
        shards = list_shards(job.data.train)
        tables = ((shard, pa.Table.from_batches([b])) for shard in shards for b in iter_shard_batches(shard, [ID, IMAGE], batch))
        train, check = decoded_in_driver(tables, held, workers)
        return {"train": train, "check": check}, info
    rows = read_rows(list_shards(job.data.train), [ID, IMAGE], resources)
    rows = rows.materialize() if in_memory else rows
    train = split_and_decode(rows, job.data.train, False, resources, batch, augment=augment)
    train = train.materialize() if in_memory and not augment else train
    check = split_and_decode(rows, job.data.train, held, resources, batch).materialize()
    return {"train": train, "check": check}, info  # the train workers ask the pools themselves (TeacherFeed)


def _drained(tables: list[pa.Table]) -> Iterator[pa.Table]:
    """`tables` in order, each let go of as it is handed on."""
    tables.reverse()
    while tables:
        yield tables.pop()


def latest_checkpoint(storage: str) -> str | None:
    """The whole stage checkpoint with the most finished stages under the run's storage, if any."""
    fs, path = resolve(join(storage, RUN_NAME))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    best, best_done = None, -1
    for progress_path in fs.glob(posixpath.join(path, "*", PROGRESS)):
        directory = posixpath.dirname(progress_path)
        url = directory if protocol in ("file", "local") else f"{protocol}://{directory}"
        try:
            with fs.open(progress_path, "r") as handle:
                progress = json.load(handle)
        except json.JSONDecodeError:
            progress = None
        if progress is None or files_not_as_listed(url, progress.get(LISTED_FILES, {})):
            _log.warning("%s: skipped, its upload was interrupted", url)
            continue
        done = len(progress["engine"]["finished"])
        if done > best_done:
            best, best_done = url, done
    return best


def _eta_fields(event: dict[str, Any], stage_epochs: list[int], rows: int) -> dict[str, Any]:
    """Seconds left, from the epochs finished so far and the current samples/s."""
    if event.get("kind") != "train" or not event.get("samples_per_s"):
        return {}
    stage_names = [f"block{i + 1}" for i in range(len(stage_epochs) - 1)] + [FINETUNE]
    index = stage_names.index(event["stage"])
    done_epochs = sum(stage_epochs[:index]) + event["epoch"] - 1 + event["epoch_samples"] / max(rows, 1)
    remaining = max(sum(stage_epochs) - done_epochs, 0.0)
    return {"eta_s": remaining * rows / event["samples_per_s"], "stage_count": len(stage_names)}


def _placement(board: Any) -> dict[str, Any]:
    """Where the job's train workers and teacher actors ran: node ids, and each node's resources
    (custom ones included), so a cluster user can check that pinned parts landed apart."""
    placed = ray.get(board.placement.remote(), timeout=30)
    used = set(placed["train_workers"]) | {node for nodes in placed["teacher_actors"].values() for node in nodes}
    resources = {
        node["NodeID"]: {name: amount for name, amount in node["Resources"].items() if not name.startswith("node:")}
        for node in ray.nodes() if node["NodeID"] in used
    }
    return {**placed, "nodes": resources}


def _write_metrics(job: JobSpec, history: dict[str, Any]) -> None:
    out = job.output
    atomic_write_text(join(out, "metrics.json"), json.dumps(history, indent=2, sort_keys=True))
    for name, rows in (("epochs", history["epochs"]), ("stages", history["stages"])):
        flat = [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in row.items()} for row in rows]
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(flat), sink)
        atomic_write_bytes(join(out, f"metrics_{name}.parquet"), sink.getvalue().to_pybytes())
    atomic_write_text(join(out, "branch_out.json"), json.dumps(history["branch_out"], indent=2, sort_keys=True))


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Amalgamation report ({report['mode']} mode, {report['train_workers']} train worker(s))",
        "",
        *report_tables(report),
        "| stage | epochs | samples/s | fidelity | left trunk |",
        "|---|---|---|---|---|",
    ]
    for stage in report["stages"]:
        fidelity = ", ".join(f"{t} {v:.3f}" for t, v in stage["fidelity"].items()) or "-"
        left = ", ".join(f"{t}@{p}" for t, p in stage["left_trunk"].items()) or "-"
        rate = f"{stage['samples_per_s']:,.0f}" if stage.get("samples_per_s") else "-"
        lines.append(f"| {stage['stage']} | {stage['epochs']} | {rate} | {fidelity} | {left} |")
    return "\n".join(lines) + "\n"


BLOCK_BATCHES = 4
"""Teacher batches per Ray Data block. Ray's default block (128 MiB) holds a whole small-image
dataset, and a block leaves a map task only when done: every epoch in stream mode then waited
for the teachers to see ALL rows before its first batch."""


def configure_ray_data(job: JobSpec, plan: AmalgamationPlan) -> None:
    """Blocks of a few teacher batches; no progress bars or per-dataset log lines (they would bury
    the job's own progress view)."""
    context = ray.data.DataContext.get_current()
    block_bytes = BLOCK_BATCHES * job.resources.teacher_batch_size * decoded_row_bytes(plan)
    context.target_max_block_size = min(DEFAULT_TARGET_MAX_BLOCK_SIZE, max(block_bytes, 1 << 20))
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # A task's own error (a BadInputError naming the shard and row), not Ray Data's UserCodeException.
    context.raise_original_map_exception = True
    # Ray Data's v2 Parquet reader starts 32 FooterReader actors per read (every stream epoch),
    # each needing a whole free CPU to be placed: minutes of worker start-up on a small machine,
    # and a hang on a cluster whose free CPUs are split below 1 per node (benchmarks/parquet_read.py).
    # The v1 reader lists footers in our data tasks, at their CPU share.
    context.use_datasource_v2 = False
    # Ray Data warns once per process that its bars are off, at the first execution, through a
    # logger it configures itself on import: claim that once-only slot so the job's view stays clean.
    log_once("ray_data_progress_manager_disabled")
    for name in ("ray.data", "ray.train"):  # raise to WARNING, never lower what the caller chose
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))


def run_job(
    job: JobSpec,
    source: str = "job",
    address: str | None = None,
    resume: bool = False,
    progress_callback: ProgressCallback | None = None,
    shared_store: Store | None = None,
    train_callbacks: list[ray.train.UserCallback] | None = None,
) -> dict[str, Any]:
    """Run an amalgamation job on Ray and return its summary (also written to `<output>/report.json`).

    `address`: a Ray cluster to join; None starts (or reuses) a local Ray sized for the job.
    `resume`: continue after the last finished stage found in the output's storage.
    `progress_callback(event)`: called about once a second with the latest progress event.
    `shared_store`: a teacher-output store built for a superset of the job's tasks (a sweep's):
    read instead of running teachers (store mode only).
    `train_callbacks`: added to the Ray Train run (a sweep trial forwards its reports to Tune).
    """
    started = time.perf_counter()
    emit = progress_callback or (lambda event: None)
    job = with_absolute_paths(job)
    plan = validate_job(job, source)
    plan = with_hints(job, plan, shared_store)
    ray_started = time.perf_counter()
    resources = connect(job, len(plan.teachers), address)
    ray_seconds = time.perf_counter() - ray_started
    write_job_record(job, source)  # the first write: the job and the cluster's fit are checked
    configure_ray_data(job, plan)
    storage = join(job.output, TRAIN_STORAGE)
    storage_fs, storage_path = resolve(storage)
    resume_from = latest_checkpoint(storage) if resume else None
    if not resume and exists(join(storage, RUN_NAME)):
        # A fresh run must not inherit an old run's checkpoints (Ray Train restores them by name).
        fs, path = resolve(join(storage, RUN_NAME))
        fs.rm(path, recursive=True)
    board_name = f"ray_amalgam_progress_{uuid.uuid4().hex[:12]}"
    board = ProgressBoard.options(name=board_name).remote()
    pools = None
    if job.teacher_outputs == "stream":  # started first: the actors load while the ids are listed
        pools = TeacherPools(plan, resources, None, board_name)
    try:
        train_ids, held_rows = _train_ids(job.data.train)
        expected_count, expected_digest = id_digest(train_ids)
        job = job.model_copy(update={"schedule": concrete_schedule(job.schedule, expected_count)})
        num_blocks = create_backbone(plan.student).num_blocks
        stage_epochs = [job.schedule.stage_epochs] * num_blocks + [job.schedule.finetune_epochs]
        extra = {"mode": job.teacher_outputs, "train_workers": job.resources.num_workers, "rows": expected_count}

        def forward(event: dict[str, Any]) -> None:
            emit({**event, **_eta_fields(event, stage_epochs, expected_count)})

        in_driver = rows_in_driver(job, plan, resources, expected_count + held_rows)
        with ProgressPoller(board, forward, extra) as poller:
            build = functools.partial(
                build_datasets, job, plan, resources, expected_count + held_rows, held_rows, in_driver, board_name, poller.emit,
                shared_store,
            )
            fit_started_at = time.time()  # the origin of the workers' timeline (wall clock: they run elsewhere)
            handoff = DatasetHandoff(board, board_name, build)  # builds while Ray Train starts its workers
            trainer = TorchTrainer(
                train_loop,
                train_loop_config={
                    "job": job.model_dump(mode="json"),
                    "plan": plan,
                    "threads": max(1, int(resources.worker_cpus)),
                    "train_rows": expected_count,
                    "board": board_name,
                    "resume_from": resume_from,
                    "fit_started_at": fit_started_at,
                    "teacher_actors": pools.actors if pools is not None else None,
                    "rows_from_driver": in_driver,
                },
                scaling_config=ray.train.ScalingConfig(
                    num_workers=resources.train_workers,
                    use_gpu=resources.worker_gpus > 0,
                    resources_per_worker=resources.worker_request,
                ),
                run_config=ray.train.RunConfig(
                    name=RUN_NAME,
                    # Ray Train reaches the storage through the same fsspec configuration as the rest.
                    storage_path=storage_path,
                    storage_filesystem=arrow_filesystem(storage_fs),
                    failure_config=ray.train.FailureConfig(max_failures=MAX_FAILURES),
                    # The latest stage checkpoint is all a retry or --resume needs.
                    checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                    callbacks=train_callbacks,
                ),
                # Rows in the driver's objects reach the workers through the board, not Ray Train.
                datasets={} if in_driver else handoff.factories(),
                # A lone worker reads the datasets whole: a split would start a coordinator actor
                # per dataset (a process each, seconds on a small machine) to feed one reader.
                dataset_config=ray.train.DataConfig(datasets_to_split="all" if resources.train_workers > 1 else []),
            )
            fit_started = time.perf_counter()
            try:
                result = trainer.fit()
            except Exception:
                handoff.result()  # a failed build raises its own error (it names the file or field)
                raise
            fit_seconds = time.perf_counter() - fit_started
            data_info = handoff.result()
            placement = _placement(board)
    finally:
        if pools is not None:
            pools.close()
        ray.kill(board)
    with result.checkpoint.as_directory() as directory:
        weights, saved = read_state(directory)
    return _finish(job, plan, weights, saved, resources, {
        **data_info,
        "ray_start_seconds": round(ray_seconds, 2),
        "fit_started_at": fit_started_at,
        "fit_seconds": round(fit_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
        "resumed_from": resume_from,
        "restored_after_stage": saved.get("restored_from"),
        "placement": placement,
        "expected_rows": expected_count,
        "expected_id_digest": str(expected_digest),
    }, source)


def _finish(
    job: JobSpec, plan: AmalgamationPlan, weights: dict[str, torch.Tensor], saved: dict[str, Any],
    resources: ResourcePlan, info: dict[str, Any], source: str,
) -> dict[str, Any]:
    """Rebuild the engine from the final checkpoint on the driver; write student, metrics and report."""
    device = torch.device("cpu")
    teachers = load_teachers(plan)
    engine = Amalgamator(plan, teachers, job, device)
    engine.load(weights, saved["engine"])
    evaluation = save_and_evaluate(engine, teachers, job, device)
    epochs = saved["epochs"]
    stages = []
    for record in saved["records"]:
        runs = [e for e in epochs if e["stage"] == record["stage"]]
        rate = sum(e["samples"] for e in runs) / max(sum(e["seconds"] for e in runs), 1e-9) if runs else None
        stages.append({**record, "epochs": len(runs), "replayed_epochs": sum(bool(e.get("replayed")) for e in runs), "samples_per_s": rate})
    for epoch in epochs:
        epoch["ids_exact"] = epoch["rows_seen"] == info["expected_rows"] and epoch["id_digest"] == info["expected_id_digest"]
    history = {"stages": stages, "epochs": epochs, "timeline": saved.get("timeline", []), "branch_out": {"branch_points": engine.branch_points(), "decisions": [
        {"stage": s["stage"], "fidelity": s["fidelity"], "left_trunk": s["left_trunk"]} for s in stages
    ], "mode": "manual" if isinstance(job.student.branch_out, dict) else "auto", "tolerance": job.student.branch_tolerance}}
    _write_metrics(job, history)
    report = {
        "source": source,
        "mode": job.teacher_outputs,
        "train_workers": resources.train_workers,
        "resources": resources.as_dict(),
        "stages": stages,
        **evaluation,
        "schedule": job.schedule.model_dump(mode="json"),
        "all_epochs_ids_exact": all(e["ids_exact"] for e in epochs),
        **info,
    }
    atomic_write_text(join(job.output, "report.json"), json.dumps(report, indent=2, sort_keys=True))
    atomic_write_text(join(job.output, "report.md"), _markdown(report))
    return report
