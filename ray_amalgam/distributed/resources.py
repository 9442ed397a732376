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
import socket
import tempfile
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

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


GPU_WORKER_CPUS = 2.0
"""Per GPU train worker: its Python thread and its batch loader. The GPU does the math; every
other core of the node is worth more to Ray Data's reads and decodes and to the teacher actors,
which feed it (a GPU worker holding all cores starves them and the GPU idles)."""

PROCESS_MEMORY_BYTES = 1 << 30
"""What one train worker or teacher actor process takes here (measured: 1.0-1.3 GB with torch
loaded); a local Ray that would need more than the machine has is refused before it starts."""

ADDRESS_TIMEOUT_S = 5.0

TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_S = 0.5
"""How often Ray Train's controller polls its workers in a local Ray this package starts (Ray's
default, 2 s, is the delay before a run's end or a worker's start is noticed). Read from the
environment by the controller actor, which inherits the local Ray's environment."""

PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
"""Ray Train starts a preemption-watcher actor with every worker group (once per job here). A
one-node local Ray cannot be preempted, and on 2 cores the watcher's start (a new process
importing Ray Train, seen at 310% CPU in a profile) competed with block 1's first batches."""


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
    worker_resources: dict[str, float] = field(default_factory=dict)
    """Custom node resources per train worker (`resources.worker_resources`)."""
    teacher_actor_resources: dict[str, float] = field(default_factory=dict)
    """Custom node resources per teacher actor (`resources.teacher_resources`)."""

    @property
    def local(self) -> bool:
        """Whether Ray runs on this machine (sized for the job), not on a joined cluster."""
        return self.cluster_cpus > 0

    @property
    def worker_request(self) -> dict[str, float]:
        """Everything one train worker asks Ray for."""
        gpu = {"GPU": self.worker_gpus} if self.worker_gpus > 0 else {}
        return {"CPU": self.worker_cpus, **gpu, **self.worker_resources}

    @property
    def teacher_actor_request(self) -> dict[str, float]:
        """Everything one teacher actor asks Ray for."""
        gpu = {"GPU": self.teacher_actor_gpus} if self.teacher_actor_gpus > 0 else {}
        return {"CPU": self.teacher_actor_cpus, **gpu, **self.teacher_actor_resources}

    @property
    def needed_cpus(self) -> float:
        """CPUs for everything at its largest: what an embedded local Ray is started with."""
        return (
            self.train_workers * self.worker_cpus
            + self.teacher_actors_max * self.teacher_actor_cpus
            + DATA_TASK_BUDGET
        )

    @property
    def min_gpus(self) -> float:
        """GPUs the job holds at once with its smallest teacher pools: train workers and actors share them."""
        return self.train_workers * self.worker_gpus + self.teacher_actors_min * self.teacher_actor_gpus

    @property
    def min_cpus(self) -> float:
        """CPUs that train workers, the smallest teacher pools and the data tasks need side by side."""
        return self.train_workers * self.worker_cpus + self.teacher_actors_min * self.teacher_actor_cpus + DATA_TASK_BUDGET

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def split_actors(budget: int, costs: dict[str, float], low: int, high: int) -> dict[str, int]:
    """Actors per teacher: each at least `low` and at most `high`; the rest of `budget` goes one
    actor at a time to the teacher with the most cost per actor (slow teachers get more actors).
    `costs` are per-image costs (FLOPs); a missing or zero cost counts as the smallest one."""
    floor = min((c for c in costs.values() if c > 0), default=1.0)
    weight = {name: max(cost, floor) for name, cost in costs.items()}
    sizes = {name: low for name in costs}
    spare = max(0, budget - low * len(costs))
    while spare > 0:
        open_ = [n for n in sizes if sizes[n] < high]
        if not open_:
            break
        busiest = max(open_, key=lambda n: (weight[n] / sizes[n] if sizes[n] else float("inf"), n))
        sizes[busiest] += 1
        spare -= 1
    return sizes


def teacher_pool_sizes(plan: ResourcePlan, costs: dict[str, float]) -> dict[str, int]:
    """Actors per teacher pool, by cost: as many actors as can all be placed now (at least each
    pool's minimum), shared out in proportion to each teacher's per-image cost. Every actor of a
    pool gets calls, so one that could never start would stall them."""
    count = max(len(costs), 1)
    per_pool_min = plan.teacher_actors_min // count
    per_pool_max = plan.teacher_actors_max // count
    free = ray.available_resources()  # train workers start later: keep their share
    fits = [(free.get("CPU", 0.0) - plan.train_workers * plan.worker_cpus - DATA_TASK_BUDGET) / plan.teacher_actor_cpus]
    if plan.teacher_actor_gpus > 0:
        fits.append((free.get("GPU", 0.0) - plan.train_workers * plan.worker_gpus) / plan.teacher_actor_gpus)
    budget = max(per_pool_min * count, min(per_pool_max * count, int(min(fits))))
    return split_actors(budget, costs, per_pool_min, per_pool_max)


def check_placement(plan: ResourcePlan, sizes: dict[str, int], totals: dict[str, float]) -> None:
    """BadInputError with the numbers when the teacher actor pools, beside the train workers and the
    data tasks, need more CPUs or GPUs than the cluster has: checked before any actor starts."""
    actors = sum(sizes.values())
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:3]
    shown = ", ".join(f"{n} x{k}" for n, k in largest) + (", ..." if len(sizes) > 3 else "")
    cpus = actors * plan.teacher_actor_cpus + plan.train_workers * plan.worker_cpus + DATA_TASK_BUDGET
    if cpus > totals.get("CPU", 0.0):
        raise BadInputError(
            f"resources.teacher_actors: {len(sizes)} teacher pools of {actors} actors ({shown}) x {plan.teacher_actor_cpus:g} CPU, "
            f"{plan.train_workers} train workers x {plan.worker_cpus:g} CPU and {DATA_TASK_BUDGET:g} CPU for data tasks need "
            f"{cpus:g} CPUs, but the Ray cluster has {totals.get('CPU', 0.0):g}; expected fewer teachers or actors, or a larger cluster"
        )
    gpus = actors * plan.teacher_actor_gpus + plan.train_workers * plan.worker_gpus
    if gpus > totals.get("GPU", 0.0):
        raise BadInputError(
            f"resources.teacher_gpu_fraction: {actors} teacher actors ({shown}) x {plan.teacher_actor_gpus:g} GPU and "
            f"{plan.train_workers} train workers x {plan.worker_gpus:g} GPU need {gpus:g} GPUs, but the Ray cluster has "
            f"{totals.get('GPU', 0.0):g}; expected a smaller teacher_gpu_fraction or fewer teachers"
        )


def physical_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def fits(node: dict[str, float], request: dict[str, float]) -> bool:
    return all(node.get(name, 0.0) >= amount - 1e-9 for name, amount in request.items())


def _cluster_worker_cpus(job: JobSpec, num_teachers: int, nodes: list[dict[str, float]]) -> float:
    """A CPU train worker's share of a real node: the CPUs of the smallest node that may host
    one, less what teacher actors and data tasks need beside it, divided among the workers
    that land there when they spread over those nodes; at least 1."""
    res = job.resources
    hosts = [n for n in nodes if fits(n, {"CPU": 1.0, **res.worker_resources})]
    if not hosts:
        return 1.0  # check_cluster names what is missing
    per_node = math.ceil(res.num_workers / len(hosts))
    reserve = DATA_TASK_BUDGET + res.teacher_actors.max * num_teachers * TEACHER_ACTOR_CPUS
    return float(max(1, math.floor((min(n["CPU"] for n in hosts) - reserve) / per_node)))


def plan_resources(job: JobSpec, num_teachers: int, local: bool, nodes: list[dict[str, float]] | None = None) -> ResourcePlan:
    """Requests for a job with `num_teachers` teacher pools.

    A GPU train worker asks for GPU_WORKER_CPUS. A CPU train worker asks for a whole share of
    the machine when Ray is local (physical cores divided among the workers, at least 1)
    because its torch threads follow it; on a cluster whose `nodes` (their resources) are
    known, a share of a real node (`_cluster_worker_cpus`); otherwise 1 CPU, and Ray spreads
    workers over nodes. The local cluster is sized to max(physical cores, everything placed at once).
    """
    res = job.resources
    if res.gpus_per_worker > 0:
        worker_cpus = GPU_WORKER_CPUS
    elif local:
        worker_cpus = float(max(1, physical_cpus() // res.num_workers))
    else:
        worker_cpus = _cluster_worker_cpus(job, num_teachers, nodes) if nodes else 1.0
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
        worker_resources=dict(res.worker_resources),
        teacher_actor_resources=dict(res.teacher_resources),
    )
    cluster = float(max(physical_cpus(), math.ceil(plan.needed_cpus))) if local else 0.0
    return ResourcePlan(**{**plan.as_dict(), "cluster_cpus": cluster})


def submitted_job_address() -> str | None:
    """The cluster a Ray job's entrypoint runs in: Ray's job supervisor sets RAY_ADDRESS to its
    GCS address (an `http://` value is a Jobs API URL meant for `ray job submit`, not to join)."""
    value = os.environ.get("RAY_ADDRESS", "")
    return value if value and "://" not in value.replace("ray://", "") else None


RAY_WORKING_DIR_FILES = f"{os.sep}runtime_resources{os.sep}working_dir_files{os.sep}"
"""Where Ray unpacks a job's `working_dir` on each node (under its session directory)."""


def leave_replaceable_working_dir() -> None:
    """Step out of a Ray job's unpacked `working_dir` (where a submitted job's driver and its
    actors start). Ray removes and unpacks that directory again when it sets the job's
    environment up anew on a node, stranding any process whose cwd it was; Tune and Ray Train
    then fail resolving paths against the cwd (a submitted sweep ended in FileNotFoundError).
    A job's paths are absolute by the time it connects, so no relative path is lost."""
    try:
        cwd = os.getcwd()
    except FileNotFoundError:  # already removed under us
        cwd = RAY_WORKING_DIR_FILES
    if RAY_WORKING_DIR_FILES in cwd:
        os.chdir(tempfile.gettempdir())


def start_local_ray(num_cpus: int) -> None:
    """Start a local Ray with `num_cpus` CPUs, quiet (no dashboard, no worker logs on the driver),
    its Ray Train controller polling every TRAIN_POLL_S and without a preemption watcher."""
    os.environ.setdefault(TRAIN_POLL_ENV, str(TRAIN_POLL_S))  # a value the user set wins
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)


def connect(job: JobSpec, num_teachers: int, address: str | None) -> ResourcePlan:
    """Join `address`, reuse an already initialised Ray, or start a local one sized for the job.

    With no `address` inside a submitted Ray job (RAY_ADDRESS set), or with `auto`, the job joins
    the cluster it runs on and is planned for that cluster's nodes; no local Ray is sized.
    Then check that the cluster can place the job at all: GPUs requested where there are
    none, more train workers than the cluster holds, or a worker or actor that no node can hold
    fail here with BadInputError instead of waiting forever for resources that will never appear.
    """
    leave_replaceable_working_dir()
    if address is None and not ray.is_initialized():
        address = submitted_job_address()
    if address is not None:
        check_reachable(address)
    nodes: list[dict[str, float]] | None = None
    if ray.is_initialized():
        plan = plan_resources(job, num_teachers, local=address is None)
    elif address is None:
        plan = plan_resources(job, num_teachers, local=True)
        check_local_machine(plan)
        start_local_ray(int(plan.cluster_cpus))
    else:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise BadInputError(f"--address {address}: cannot join the Ray cluster ({str(error).splitlines()[0]})") from None
        nodes, totals = cluster_shape()
        plan = plan_resources(job, num_teachers, local=False, nodes=nodes)
        check_cluster(plan, totals, nodes)
        return plan
    check_cluster(plan, ray.cluster_resources())
    return plan


def cluster_shape() -> tuple[list[dict[str, float]], dict[str, float]]:
    """(the resources of each node the joined cluster has or its autoscaler may add, the most of
    each resource it can hold). An autoscaling cluster (cluster launcher, KubeRay) may have no
    GPU node yet: its node groups count as they are declared, as Ray Train counts them."""
    nodes = [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]
    totals = dict(ray.cluster_resources())
    try:
        from ray._private.state import state  # Ray Train reads the autoscaler's config the same way

        config = state.get_cluster_config()
        maxima = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # noqa: BLE001 - no autoscaler config (a static cluster): what runs is all there is
        config, maxima = None, {}
    for group in getattr(config, "node_group_configs", None) or []:
        if group.max_count != 0:
            nodes.append({name: float(amount) for name, amount in group.resources.items()})
    for name, amount in maxima.items():
        totals[name] = max(totals.get(name, 0.0), float(amount))
    return nodes, totals


def check_reachable(address: str) -> None:
    """BadInputError within ADDRESS_TIMEOUT_S when nothing listens at a host:port address or an
    http(s):// Jobs API URL (ray.init and the Jobs SDK would otherwise retry or wait for minutes);
    `auto` and `ray://` addresses pass through."""
    if address == "auto" or address.startswith("ray://"):
        return
    if address.startswith(("http://", "https://")):
        parts = urlsplit(address)
        host, port = parts.hostname or "", str(parts.port or (443 if parts.scheme == "https" else 80))
    elif "://" in address:
        return
    else:
        host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise BadInputError(f"--address {address}: expected HOST:PORT of a Ray head (GCS), 'auto' or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as error:
        raise BadInputError(f"--address {address}: no Ray cluster reachable there ({error.strerror or error})") from None


def total_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_local_machine(plan: ResourcePlan) -> None:
    """BadInputError naming the field when a local Ray on this machine could never hold the job."""
    cores = physical_cpus()
    if plan.worker_gpus == 0 and plan.train_workers > cores:
        raise BadInputError(
            f"resources.num_workers: {plan.train_workers} CPU train workers on a local Ray, but this machine has {cores} cores; "
            f"expected at most {cores} (or join a larger cluster with --address)"
        )
    processes = plan.train_workers + plan.teacher_actors_min
    needed, total = processes * PROCESS_MEMORY_BYTES, total_memory_bytes()
    if needed > total:
        raise BadInputError(
            f"resources.num_workers, resources.teacher_actors.min: {plan.train_workers} train workers and "
            f"{plan.teacher_actors_min} teacher actors need about "
            f"{needed / 2**30:.0f} GiB, but this machine has {total / 2**30:.0f} GiB"
        )


def check_cluster(plan: ResourcePlan, totals: dict[str, float], nodes: list[dict[str, float]] | None = None) -> None:
    """BadInputError naming the resources field when the cluster can never place the job; with
    `nodes` (each node's resources), also when no single node can hold a train worker or a
    teacher actor, or no node declares a custom resource the job asks for."""
    for field_name, custom in (("worker_resources", plan.worker_resources), ("teacher_resources", plan.teacher_actor_resources)):
        for name, amount in custom.items():
            if totals.get(name, 0.0) < amount:
                declared = sorted(k for k in totals if k not in ("CPU", "GPU", "memory", "object_store_memory") and not k.startswith("node:"))
                raise BadInputError(
                    f"resources.{field_name}.{name}: no node of the Ray cluster declares the resource '{name}' "
                    f"(custom resources there: {', '.join(declared) or 'none'})"
                )
    gpus = totals.get("GPU", 0.0)
    cpus = totals.get("CPU", 0.0)
    if plan.worker_gpus > 0 and gpus == 0:
        raise BadInputError(f"resources.gpus_per_worker: {plan.worker_gpus} GPUs per worker requested, but the Ray cluster has no GPU")
    if plan.teacher_actor_gpus > 0 and gpus == 0:
        raise BadInputError(f"resources.teacher_gpu_fraction: {plan.teacher_actor_gpus} requested, but the Ray cluster has no GPU")
    # Train workers, the smallest teacher pools and the data tasks must fit side by side
    # (stream mode runs them together); otherwise the job would wait forever.
    if plan.min_gpus > gpus:
        raise BadInputError(
            f"resources.num_workers: {plan.train_workers} train workers x {plan.worker_gpus:g} GPU and "
            f"{plan.teacher_actors_min} teacher actors x {plan.teacher_actor_gpus:g} GPU need {plan.min_gpus:g} GPUs at once, "
            f"but the Ray cluster has {gpus:g}"
        )
    needed = plan.min_cpus
    if needed > cpus:
        raise BadInputError(
            f"resources.num_workers: {plan.train_workers} train workers x {plan.worker_cpus:g} CPU, "
            f"{plan.teacher_actors_min} teacher actors x {plan.teacher_actor_cpus:g} CPU and {DATA_TASK_BUDGET:g} CPU for data tasks "
            f"need {needed:g} CPUs, but the Ray cluster has {cpus:g}"
        )
    for field_name, what, request in (
        ("num_workers, gpus_per_worker, worker_resources", "a train worker", plan.worker_request),
        ("teacher_gpu_fraction, teacher_resources", "a teacher actor", plan.teacher_actor_request),
    ):
        if nodes and not any(fits(node, request) for node in nodes):
            raise BadInputError(
                f"resources ({field_name}): {what} asks for {_shown(request)}, but no node of the Ray cluster has that much "
                f"(nodes: {'; '.join(_shown({k: v for k, v in n.items() if k in request}) for n in nodes)})"
            )


def _shown(resources: dict[str, float]) -> str:
    return ", ".join(f"{name} {amount:g}" for name, amount in sorted(resources.items())) or "nothing"
