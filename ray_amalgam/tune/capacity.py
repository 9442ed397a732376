"""How many trials a cluster can run side by side without starving each other or Ray Data."""

from __future__ import annotations

import math
from typing import Literal

from ray.tune import PlacementGroupFactory

from ray_amalgam.distributed.resources import DATA_TASK_BUDGET, DATA_TASK_CPUS, ResourcePlan
from ray_amalgam.spec import BadInputError, JobSpec

TRIAL_CPUS = 0.01
"""What a trial's own process asks for when it only drives its Ray Train run (Tune refuses 0)."""

TrialRun = Literal["teachers", "store", "in_process"]
"""How a trial trains: a Ray Train run that runs its own teachers (stream mode), one that reads
the sweep's store, or in the trial's own process from the store read whole."""


IN_PROCESS_BYTES = 2 * 2**30
"""The most decoded training data (pixels and targets) a trial holds whole in its own process;
more streams through Ray Train and Ray Data."""


def trial_run(job: JobSpec, plan: ResourcePlan, has_store: bool, data_bytes: int | None) -> TrialRun:
    """In process when the trial would train on one CPU worker from the store without hints, on
    data (`data_bytes` decoded; None: unknown) that fits in memory: a Ray Train worker group and a
    Ray Data pipeline then cost more to start (tens of seconds on a small machine) than a small
    trial takes to train, and they add nothing one process lacks."""
    if not has_store:
        return "teachers"
    one_cpu_worker = plan.train_workers == 1 and plan.worker_gpus == 0
    fits = data_bytes is not None and data_bytes <= IN_PROCESS_BYTES
    return "in_process" if one_cpu_worker and fits and not job.hint.enabled else "store"


def trial_cpus(plan: ResourcePlan, run: TrialRun) -> float:
    """CPUs one trial holds while it trains. In process: what its one worker would. Otherwise its
    driver, its train workers, one data task (reads and decodes must always find a CPU) and, when
    it runs teachers itself, its teacher actors."""
    if run == "in_process":
        return plan.worker_cpus
    teachers = plan.teacher_actors_max * plan.teacher_actor_cpus if run == "teachers" else 0.0
    return TRIAL_CPUS + plan.train_workers * plan.worker_cpus + DATA_TASK_CPUS + teachers


def trial_gpus(plan: ResourcePlan, run: TrialRun) -> float:
    teachers = plan.teacher_actors_max * plan.teacher_actor_gpus if run == "teachers" else 0.0
    return plan.train_workers * plan.worker_gpus + teachers


def trial_bundles(plan: ResourcePlan, run: TrialRun) -> PlacementGroupFactory:
    """What Tune reserves for a trial. In process: one worker's request (custom node resources
    too), for the trial itself. Otherwise Tune starts the trial in a placement group that captures
    every task and actor the trial starts without a scheduling strategy of its own (Ray Train and
    Ray Data set theirs, teacher actors do not): a trial that runs teachers holds a bundle for each."""
    if run == "in_process":
        return PlacementGroupFactory([plan.worker_request])
    teacher = plan.teacher_actor_request  # custom node resources too: the actor must fit its bundle
    return PlacementGroupFactory([{"CPU": TRIAL_CPUS}] + ([teacher] * plan.teacher_actors_max if run == "teachers" else []))


def max_concurrent_trials(plan: ResourcePlan, run: TrialRun, totals: dict[str, float]) -> int:
    """Trials that fit the cluster at once, keeping DATA_TASK_BUDGET free for everyone's data
    tasks (in-process trials start none); BadInputError when not even one fits (Tune would
    otherwise wait forever)."""
    cpus, gpus = totals.get("CPU", 0.0), totals.get("GPU", 0.0)
    need_cpus, need_gpus = trial_cpus(plan, run), trial_gpus(plan, run)
    budget = 0.0 if run == "in_process" else DATA_TASK_BUDGET
    fits = math.floor((cpus - budget) / need_cpus + 1e-9)
    if need_gpus > 0:
        fits = min(fits, math.floor(gpus / need_gpus + 1e-9))
    if fits < 1:
        raise BadInputError(
            f"base.resources: one trial needs {need_cpus:g} CPUs and {need_gpus:g} GPUs (plus {budget:g} CPU kept "
            f"for data tasks), but the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs: no trial could ever start"
        )
    return fits
