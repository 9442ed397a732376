"""`run_sweep`: check the sweep, build (or reuse) ONE teacher-output store for the union of its
tasks, run the trials with Ray Tune, and write the results into the sweep's output."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import time
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, SearchAlgorithm, Searcher

from ray_amalgam.amalgamation import AmalgamationPlan, resolve_pool_job
from ray_amalgam.amalgamation.validation import validate_job, with_absolute_paths
from ray_amalgam.distributed.pipeline import arrow_filesystem
from ray_amalgam.distributed.resources import ResourcePlan, connect, plan_resources
from ray_amalgam.distributed.runner import STORE_DIR, TRAIN_STORAGE, configure_ray_data, decoded_row_bytes, with_hints
from ray_amalgam.distributed.store import Store, ensure_store
from ray_amalgam.io.fs import atomic_write_text, exists, join, read_text, resolve
from ray_amalgam.io.shards import read_dataset_meta
from ray_amalgam.models import create_backbone
from ray_amalgam.spec import BadInputError, JobSpec, load_spec_text
from ray_amalgam.spec.sweep import SweepSpec
from ray_amalgam.tune.capacity import TrialRun, max_concurrent_trials, trial_bundles, trial_run
from ray_amalgam.tune.progress import SweepProgress
from ray_amalgam.tune.results import FINISHED_STATUS, pareto_front, ranked, write_report
from ray_amalgam.tune.score import QUALITY, SCORE
from ray_amalgam.tune.space import AXIS_FIELDS, check_against_pool, job_for_tasks, param_space, trial_job, union_tasks
from ray_amalgam.tune.trial import FINISHED, TRIALS_DIR, TrialSetup, run_trial, trial_output

TUNE_DIR = "tune"
TEACHER_PASSES = "teacher_passes.json"
STATE_SAVE_PERIOD_S = "5"
"""Tune saves the experiment state this often (default: every 10 s or more); a killed sweep
loses at most this much of its record of finished trials."""


def load_sweep(path: str) -> SweepSpec:
    """Read and validate a sweep YAML file (a path or fsspec URL)."""
    return load_spec_text(SweepSpec, read_text(path), path)


def _in_base(source: str, action: Any) -> Any:
    """Run a check of the base job; its errors name `base.<field>`, the field in the sweep file."""
    try:
        return action()
    except BadInputError as error:
        message = str(error)
        prefix = f"{source}: "
        raise BadInputError(prefix + "base." + message.removeprefix(prefix) if message.startswith(prefix) else message) from None


def _expected_trials(spec: SweepSpec, space: dict[str, Any]) -> int:
    grid = [len(v["grid_search"]) for v in space.values() if isinstance(v, dict) and "grid_search" in v]
    return math.prod(grid) * spec.num_samples


def _scheduler(spec: SweepSpec, plan: AmalgamationPlan) -> TrialScheduler:
    """ASHA over stage reports (training_iteration counts them; the finished report comes last)."""
    if spec.scheduler == "fifo":
        return FIFOScheduler()
    stages = create_backbone(plan.student).num_blocks + 1
    # stop_last_trials=False: a trial that survived every rung finishes and writes its student.
    return ASHAScheduler(time_attr="training_iteration", max_t=stages + 1, grace_period=spec.asha.grace_period,
                         reduction_factor=spec.asha.reduction_factor, stop_last_trials=False)


def _check_searcher_installed(spec: SweepSpec, source: str) -> None:
    if spec.searcher == "optuna" and importlib.util.find_spec("optuna") is None:
        raise BadInputError(f"{source}: searcher: 'optuna' needs the optuna package; install it with pip install 'ray_amalgam[optuna]'")


def _search_algorithm(spec: SweepSpec, concurrency: int) -> SearchAlgorithm | Searcher:
    """Seeded from the base job. The limit goes to the searcher itself: Tune ignores
    max_concurrent_trials beside a given search algorithm."""
    seed = spec.base.schedule.seed
    if spec.searcher != "optuna":
        return BasicVariantGenerator(random_state=seed, max_concurrent=concurrency)
    from optuna.samplers import TPESampler
    from ray.tune.search.optuna import OptunaSearch

    return ConcurrencyLimiter(OptunaSearch(sampler=TPESampler(seed=seed)), max_concurrent=concurrency)


def _teacher_store(union: JobSpec, plan: AmalgamationPlan, resources: Any, output: str, resume: bool) -> tuple[Store | None, int]:
    """The sweep's store (store mode) and the teacher passes spent on it so far in this sweep:
    one when this call built it, plus any an interrupted run of the same sweep recorded."""
    if union.teacher_outputs != "store":
        return None, 0
    store = ensure_store(union, plan, "train", union.data.train, join(output, STORE_DIR), resources, [], None)
    record = join(output, TEACHER_PASSES)
    earlier = json.loads(read_text(record))["passes"] if resume and exists(record) else 0
    passes = earlier + int(store.rebuilt)
    atomic_write_text(record, json.dumps({"passes": passes}))
    return store, passes


def _fresh_start(output: str) -> None:
    """A new sweep must not inherit an older one's trials (Tune restores them by name)."""
    for name in (TUNE_DIR, TRIALS_DIR):
        fs, path = resolve(join(output, name))
        if fs.exists(path):
            fs.rm(path, recursive=True)


def _trial_id(trial: Any) -> str:
    return trial.trial_id


def _tuner(
    spec: SweepSpec, setup: TrialSetup, plan: AmalgamationPlan, trial_plan: ResourcePlan, concurrency: int, resume: bool,
) -> tuple[tune.Tuner, int]:
    space = param_space(spec)
    bundles = trial_bundles(trial_plan, setup.run)
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), bundles)
    fs, path = resolve(setup.output)
    storage = arrow_filesystem(fs)
    experiment = join(setup.output, TUNE_DIR)
    expected = _expected_trials(spec, space)
    if resume and tune.Tuner.can_restore(resolve(experiment)[1], storage_filesystem=storage):
        return tune.Tuner.restore(resolve(experiment)[1], trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=storage), expected
    _fresh_start(setup.output)
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=SCORE, mode="max", num_samples=spec.num_samples, scheduler=_scheduler(spec, plan),
            search_alg=_search_algorithm(spec, concurrency),
            trial_dirname_creator=_trial_id, trial_name_creator=_trial_id,
            # An in-process trial's actor (a process with torch loaded) serves the next trial:
            # starting one costs seconds of CPU, as much as a small trial's training.
            reuse_actors=setup.run == "in_process",
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=path, storage_filesystem=storage,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=[SweepProgress(expected, concurrency)], verbose=0,
        ),
    )
    return tuner, expected


def _trial_row(result: tune.Result, base: JobSpec, output: str) -> dict[str, Any]:
    """One trial's effective settings (axis values or the base's) and its last metrics."""
    metrics = result.metrics or {}
    trial_id = os.path.basename(result.path.rstrip("/"))  # trial directories are named by trial id
    job = trial_job(base, result.config, trial_output(output, trial_id))
    status = FINISHED_STATUS if metrics.get(FINISHED) else "error" if result.error else "stopped"
    settings = {}
    for key, path in AXIS_FIELDS.items():
        value: Any = job
        for part in path:
            value = getattr(value, part)
        settings[key] = "+".join(value) if key == "tasks" else value
    kept = {k: v for k, v in metrics.items() if "/" in k or k in (
        SCORE, QUALITY, "stage", "params", "flops", "latency_ms", "teacher_params", "branch_points", "teacher_passes", "teacher_batches", "student",
    )}
    kept.pop("config", None)
    if status != FINISHED_STATUS:
        kept.pop("student", None)
    return {"trial_id": trial_id, "status": status, **settings, **kept, "error": str(result.error).splitlines()[0] if result.error else None}


def _remove_stage_checkpoints(rows: list[dict[str, Any]], output: str) -> None:
    """Stage checkpoints only serve a retry or --resume: gone once the sweep ended. A trial that
    did not finish keeps no student either."""
    for row in rows:
        names = [TRAIN_STORAGE] + ([] if row["status"] == FINISHED_STATUS else ["student"])
        for name in names:
            fs, path = resolve(join(trial_output(output, row["trial_id"]), name))
            if fs.exists(path):
                fs.rm(path, recursive=True)


def _with_pool_teachers(spec: SweepSpec, source: str) -> SweepSpec:
    """A base job drawn from a pool names, instead, the teachers chosen for the union of the swept
    tasks (and which owner each task learns from): every trial then reads its tasks from the same
    teachers' stores, and each teacher runs once for the whole sweep."""
    if spec.base.pool is None:
        return spec
    union = job_for_tasks(spec.base, union_tasks(spec), spec.base.output)
    resolved, _ = _in_base(source, lambda: resolve_pool_job(union, source))
    update = {"teachers": resolved.teachers, "pool": None, "task_teachers": resolved.task_teachers}
    return spec.model_copy(update={"base": spec.base.model_copy(update=update)})


def run_sweep(spec: SweepSpec, source: str = "sweep", address: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Run a sweep on Ray; returns its summary (also `<output>/summary.json`).

    `address`: a Ray cluster to join (None: start or reuse a local Ray). `resume`: restore the
    sweep's Tune experiment; finished trials are not run again, unfinished ones continue after
    their last finished stage.
    """
    started = time.perf_counter()
    spec = spec.model_copy(update={"base": with_absolute_paths(spec.base)})
    _check_searcher_installed(spec, source)
    spec = _with_pool_teachers(spec, source)
    base, output = spec.base, spec.base.output
    check_against_pool(spec, source)
    union = job_for_tasks(base, union_tasks(spec), output)
    plan = _in_base(source, lambda: validate_job(union, source))
    plan = with_hints(union, plan)
    resources = _in_base(source, lambda: connect(union, len(plan.teachers), address))
    # As a trial asks for them (see trial.IN_CLUSTER).
    trial_plan = plan_resources(base, len(plan.teachers), local=False)
    rows = read_dataset_meta(base.data.train).num_rows
    run: TrialRun = trial_run(base, trial_plan, has_store=base.teacher_outputs == "store",
                              data_bytes=None if rows is None else rows * decoded_row_bytes(plan))
    fits = max_concurrent_trials(trial_plan, run, totals=ray.cluster_resources())
    concurrency = spec.max_concurrent_trials or fits
    configure_ray_data(union, plan)
    store, store_passes = _teacher_store(union, plan, resources, output, resume)
    # Trials read the store; none of them built it.
    setup = TrialSetup(base, output, spec.metric, store and dataclasses.replace(store, rebuilt=False), source, run,
                       threads=max(1, int(trial_plan.worker_cpus)))
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", STATE_SAVE_PERIOD_S)
    # Tune's newer console output prints its experiment box and paths even at verbose=0; the
    # older one is silent there. The sweep's own live table is the progress.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tuner, expected = _tuner(spec, setup, plan, trial_plan, concurrency, resume)
    results = tuner.fit()
    rows = [_trial_row(result, base, output) for result in results]
    _remove_stage_checkpoints(rows, output)
    finished = [r for r in rows if r["status"] == FINISHED_STATUS]
    summary = {
        "output": output,
        "trials": len(rows),
        "expected_trials": expected,
        "finished": len(finished),
        "stopped": sum(r["status"] == "stopped" for r in rows),
        "errors": sum(r["status"] == "error" for r in rows),
        "searcher": spec.searcher,
        "metric": spec.metric.quality + (f" - {spec.metric.size_penalty:g} x params share" if spec.metric.size_penalty else ""),
        "best": ranked(finished)[0] if finished else None,
        "pareto": pareto_front(rows),
        "store": store.url if store else None,
        "store_passes": store_passes,
        "teacher_passes_per_sample": store_passes + sum(r.get("teacher_passes") or 0.0 for r in finished),
        "trial_run": run,
        "max_concurrent_trials": concurrency,
        "resumed": resume,
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_report(output, rows, summary)
    return summary
