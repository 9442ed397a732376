"""How many trials a cluster can run side by side without starving each other or Ray Data."""

from __future__ import annotations

import math

from ray.tune import PlacementGroupFactory

from ray_amalgam.distributed.resources import DATA_TASK_BUDGET, DATA_TASK_CPUS, ResourcePlan
from ray_amalgam.spec import BadInputError

TRIAL_CPUS = 0.01
"""What a trial's own process asks for: it only drives its Ray Train run (Tune refuses 0)."""


def trial_cpus(plan: ResourcePlan, runs_teachers: bool) -> float:
    """CPUs one trial holds while it trains: its driver, its train workers, one data task (reads
    and decodes must always find a CPU) and, when it runs teachers itself, its teacher actors."""
    teachers = plan.teacher_actors_max * plan.teacher_actor_cpus if runs_teachers else 0.0
    return TRIAL_CPUS + plan.train_workers * plan.worker_cpus + DATA_TASK_CPUS + teachers


def trial_gpus(plan: ResourcePlan, runs_teachers: bool) -> float:
    teachers = plan.teacher_actors_max * plan.teacher_actor_gpus if runs_teachers else 0.0
    return plan.train_workers * plan.worker_gpus + teachers


def trial_bundles(plan: ResourcePlan, runs_teachers: bool) -> PlacementGroupFactory:
    """What Tune reserves for a trial. Tune starts a trial in a placement group that captures every
    task and actor the trial starts without a scheduling strategy of its own (Ray Train and Ray
    Data set theirs, teacher actors do not): a trial that runs teachers holds a bundle for each."""
    teacher = plan.teacher_actor_request  # custom node resources too: the actor must fit its bundle
    return PlacementGroupFactory([{"CPU": TRIAL_CPUS}] + ([teacher] * plan.teacher_actors_max if runs_teachers else []))


def max_concurrent_trials(plan: ResourcePlan, runs_teachers: bool, totals: dict[str, float]) -> int:
    """Trials that fit the cluster at once, keeping DATA_TASK_BUDGET free for everyone's data
    tasks; BadInputError when not even one fits (Tune would otherwise wait forever)."""
    cpus, gpus = totals.get("CPU", 0.0), totals.get("GPU", 0.0)
    need_cpus, need_gpus = trial_cpus(plan, runs_teachers), trial_gpus(plan, runs_teachers)
    fits = math.floor((cpus - DATA_TASK_BUDGET) / need_cpus + 1e-9)
    if need_gpus > 0:
        fits = min(fits, math.floor(gpus / need_gpus + 1e-9))
    if fits < 1:
        raise BadInputError(
            f"base.resources: one trial needs {need_cpus:g} CPUs and {need_gpus:g} GPUs (plus {DATA_TASK_BUDGET:g} CPU kept "
            f"for data tasks), but the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs: no trial could ever start"
        )
    return fits
