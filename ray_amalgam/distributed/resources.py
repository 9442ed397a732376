"""How much of the cluster each part of a job asks for, and starting or joining Ray.

Ray Data + Ray Train on a small machine hang silently when the pieces of a streaming job
cannot all be placed at once: read/decode tasks wait for a CPU that teacher actors and train
workers already hold. So every piece asks for a fixed, known amount, and an embedded local
Ray gets enough *logical* CPUs for all of them together (logical CPUs are scheduling tokens,
not pinned cores: the OS shares the physical cores among the processes).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import ray

from ray_amalgam.spec import BadInputError, JobSpec

TEACHER_ACTOR_CPUS = 0.5
"""Per teacher actor. Teachers only run inference; half a CPU lets two share a core's token
while the train workers keep theirs."""

DATA_TASK_CPUS = 0.25
"""Per read / decode task: Parquet reads and PNG decodes are short and mostly I/O."""

DATA_TASK_BUDGET = 1.0
"""Logical CPUs kept free for read/decode tasks (four at a time), so they can always run
even while every teacher actor and train worker is placed: this is what prevents the
'Cluster resources are not enough to run any task' hang."""


@dataclass(frozen=True)
class ResourcePlan:
    """What each part of the job requests; `cluster_cpus` is what the local Ray was started with."""

    train_workers: int
    worker_cpus: float
    worker_gpus: float
    teacher_actor_cpus: float
    teacher_actor_gpus: float
    data_task_cpus: float
    teacher_actors_min: int
    teacher_actors_max: int
    """Over all teacher pools together."""
    cluster_cpus: float

    @property
    def needed_cpus(self) -> float:
        return (
            self.train_workers * self.worker_cpus
            + self.teacher_actors_max * self.teacher_actor_cpus
            + DATA_TASK_BUDGET
        )

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def physical_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def plan_resources(job: JobSpec, num_teachers: int, local: bool) -> ResourcePlan:
    """Requests for a job with `num_teachers` teacher pools.

    A train worker asks for a whole share of the machine when Ray is local (physical cores
    divided among the workers, at least 1) because Ray sets its torch thread count from it;
    on a cluster it asks for 1 CPU and Ray spreads workers over nodes. The local cluster is
    sized to max(physical cores, everything placed at once).
    """
    res = job.resources
    worker_cpus = float(max(1, physical_cpus() // res.num_workers)) if local else 1.0
    actors_max = res.teacher_actors.max * num_teachers
    plan = ResourcePlan(
        train_workers=res.num_workers,
        worker_cpus=worker_cpus,
        worker_gpus=res.gpus_per_worker,
        teacher_actor_cpus=TEACHER_ACTOR_CPUS,
        teacher_actor_gpus=res.teacher_gpu_fraction,
        data_task_cpus=DATA_TASK_CPUS,
        teacher_actors_min=res.teacher_actors.min * num_teachers,
        teacher_actors_max=actors_max,
        cluster_cpus=0.0,
    )
    cluster = float(max(physical_cpus(), math.ceil(plan.needed_cpus))) if local else 0.0
    return ResourcePlan(**{**plan.as_dict(), "cluster_cpus": cluster})


def connect(job: JobSpec, num_teachers: int, address: str | None) -> ResourcePlan:
    """Join `address`, reuse an already initialised Ray, or start a local one sized for the job.

    Then check that the cluster can place the job at all: GPUs requested where there are
    none, or more train workers than the cluster holds, fail here with BadInputError instead
    of waiting forever for resources that will never appear.
    """
    if ray.is_initialized():
        plan = plan_resources(job, num_teachers, local=address is None)
    elif address is None:
        plan = plan_resources(job, num_teachers, local=True)
        ray.init(
            num_cpus=int(plan.cluster_cpus),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        plan = plan_resources(job, num_teachers, local=False)
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise BadInputError(f"--address {address}: cannot join the Ray cluster ({str(error).splitlines()[0]})") from None
    check_cluster(plan, ray.cluster_resources())
    return plan


def check_cluster(plan: ResourcePlan, totals: dict[str, float]) -> None:
    """BadInputError naming the resources field when the cluster can never place the job."""
    gpus = totals.get("GPU", 0.0)
    cpus = totals.get("CPU", 0.0)
    if plan.worker_gpus > 0 and gpus == 0:
        raise BadInputError(f"resources.gpus_per_worker: {plan.worker_gpus} GPUs per worker requested, but the Ray cluster has no GPU")
    if plan.teacher_actor_gpus > 0 and gpus == 0:
        raise BadInputError(f"resources.teacher_gpu_fraction: {plan.teacher_actor_gpus} requested, but the Ray cluster has no GPU")
    if plan.train_workers * plan.worker_gpus > gpus:
        raise BadInputError(
            f"resources.num_workers: {plan.train_workers} workers x {plan.worker_gpus} GPUs exceed the cluster's {gpus:g} GPUs"
        )
    # Train workers, the smallest teacher pools and the data tasks must fit side by side
    # (stream mode runs them together); otherwise the job would wait forever.
    needed = plan.train_workers * plan.worker_cpus + plan.teacher_actors_min * plan.teacher_actor_cpus + DATA_TASK_BUDGET
    if needed > cpus:
        raise BadInputError(
            f"resources.num_workers: {plan.train_workers} train workers x {plan.worker_cpus:g} CPU, "
            f"{plan.teacher_actors_min} teacher actors x {plan.teacher_actor_cpus:g} CPU and {DATA_TASK_BUDGET:g} CPU for data tasks "
            f"need {needed:g} CPUs, but the Ray cluster has {cpus:g}"
        )
