"""The resource plan: what each part of a job asks for, and the jobs a cluster could never place."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from ray_amalgam.distributed.resources import (
    GPU_WORKER_CPUS,
    PREEMPTION_WATCHER_ENV,
    TRAIN_POLL_ENV,
    TRAIN_POLL_S,
    check_cluster,
    check_local_machine,
    check_placement,
    check_reachable,
    leave_replaceable_working_dir,
    physical_cpus,
    plan_resources,
    split_actors,
    submitted_job_address,
)
from ray_amalgam.spec import BadInputError, JobSpec


def _job(**resources) -> JobSpec:
    return JobSpec.model_validate({
        "teachers": [{"name": "A", "checkpoint": "-"}, {"name": "B", "checkpoint": "-"}],
        "tasks": ["t"], "data": {"train": "-", "eval": "-"}, "output": "-", "resources": resources,
    })


def test_gpu_worker_leaves_the_node_cpus_to_data_and_teachers():
    """On a 16-core GPU node a GPU worker must not hold every core (the GPU then idles)."""
    plan = plan_resources(_job(gpus_per_worker=0.5, teacher_gpu_fraction=0.1), num_teachers=2, local=True)
    assert plan.worker_cpus == GPU_WORKER_CPUS
    assert plan.worker_gpus == 0.5
    cpu_plan = plan_resources(_job(), num_teachers=2, local=True)
    assert cpu_plan.worker_cpus == max(1, physical_cpus())  # CPU training keeps its whole share


def test_gpus_of_workers_and_teacher_actors_count_together():
    # 1 worker x 0.8 GPU fits alone, 2 actors x 0.2 fit alone; together they need 1.2 of 1 GPU.
    plan = plan_resources(_job(gpus_per_worker=0.8, teacher_gpu_fraction=0.2), num_teachers=2, local=False)
    with pytest.raises(BadInputError, match=r"need 1.2 GPUs at once, but the Ray cluster has 1"):
        check_cluster(plan, {"CPU": 16.0, "GPU": 1.0})
    check_cluster(plan, {"CPU": 16.0, "GPU": 2.0})


def test_gpus_on_a_cpu_cluster_are_refused():
    plan = plan_resources(_job(gpus_per_worker=1.0), num_teachers=2, local=False)
    with pytest.raises(BadInputError, match=r"resources.gpus_per_worker: .* the Ray cluster has no GPU"):
        check_cluster(plan, {"CPU": 16.0})


def test_local_machine_refuses_more_cpu_workers_than_cores():
    cores = physical_cpus()
    plan = plan_resources(_job(num_workers=cores + 1), num_teachers=2, local=True)
    with pytest.raises(BadInputError, match=rf"resources.num_workers: {cores + 1} CPU train workers .* has {cores} cores"):
        check_local_machine(plan)
    check_local_machine(plan_resources(_job(num_workers=1), num_teachers=2, local=True))


def test_local_machine_refuses_what_its_memory_cannot_hold():
    plan = plan_resources(_job(num_workers=1, teacher_actors={"min": 4000, "max": 4000}), 2, local=True)
    with pytest.raises(BadInputError, match=r"resources.teacher_actors.min: 1 train workers and 8000 teacher actors need about .* GiB, but this machine has"):
        check_local_machine(plan)


@pytest.mark.timeout(30)
def test_unreachable_address_is_refused_quickly():
    with pytest.raises(BadInputError, match=r"--address 127.0.0.1:1: no Ray cluster reachable there"):
        check_reachable("127.0.0.1:1")
    with pytest.raises(BadInputError, match=r"--address nonsense: expected HOST:PORT"):
        check_reachable("nonsense")
    check_reachable("auto")  # joins the cluster this command runs on: nothing to probe here


def test_actor_pools_sized_by_teacher_cost():
    # 12 teachers, each at least 1 actor, at most 4: the 8 spare actors go to the costly ones.
    costs = {f"t{i:02d}": 1e6 for i in range(10)} | {"slow": 8e6, "slower": 16e6}
    sizes = split_actors(20, costs, low=1, high=4)
    assert sum(sizes.values()) == 20
    assert sizes["slower"] == 4 and sizes["slow"] == 4, "the slowest teachers fill up first"
    assert all(sizes[f"t{i:02d}"] in (1, 2) for i in range(10))
    assert split_actors(3, {"a": 1.0, "b": 0.0}, low=2, high=3) == {"a": 2, "b": 2}, "never below the minimum"


def test_pools_that_cannot_be_placed_are_refused_with_the_numbers():
    plan = plan_resources(_job(teacher_actors={"min": 1, "max": 2}), num_teachers=12, local=False)
    sizes = {f"t{i:02d}": 1 for i in range(12)} | {"t00": 2}
    with pytest.raises(BadInputError, match=(
            r"resources.teacher_actors: 12 teacher pools of 13 actors \(t00 x2, t01 x1, t02 x1, \.\.\.\) x 0.5 CPU, "
            r"1 train workers x 1 CPU and 1 CPU for data tasks need 8.5 CPUs, but the Ray cluster has 8")):
        check_placement(plan, sizes, {"CPU": 8.0})
    check_placement(plan, sizes, {"CPU": 9.0})
    gpu_plan = plan_resources(_job(teacher_gpu_fraction=0.1, gpus_per_worker=0.5), num_teachers=12, local=False)
    with pytest.raises(BadInputError, match=r"teacher_gpu_fraction: 13 teacher actors .* need 1.8 GPUs, but the Ray cluster has 1"):
        check_placement(gpu_plan, sizes, {"CPU": 64.0, "GPU": 1.0})
    with pytest.raises(BadInputError, match=r"--address http://127.0.0.1:1: no Ray cluster reachable there"):
        check_reachable("http://127.0.0.1:1")  # a Jobs API URL is probed the same way


def test_a_worker_no_node_can_hold_is_refused_per_node():
    """8 GPUs in total, but on 1-GPU nodes: a 2-GPU train worker could never be placed."""
    plan = plan_resources(_job(gpus_per_worker=2.0), num_teachers=2, local=False)
    nodes = [{"CPU": 8.0, "GPU": 1.0}] * 8
    with pytest.raises(BadInputError, match=r"resources \(num_workers, gpus_per_worker, worker_resources\): a train worker asks for CPU 2, GPU 2, but no node"):
        check_cluster(plan, {"CPU": 64.0, "GPU": 8.0}, nodes)
    check_cluster(plan, {"CPU": 64.0, "GPU": 8.0}, [{"CPU": 8.0, "GPU": 2.0}] * 4)


def test_custom_node_resources_must_be_declared_and_pin_the_requests():
    job = _job(worker_resources={"train_node": 0.01}, teacher_resources={"teacher_node": 0.01})
    plan = plan_resources(job, num_teachers=2, local=False)
    assert plan.worker_request == {"CPU": 1.0, "train_node": 0.01}
    assert plan.teacher_actor_request == {"CPU": 0.5, "teacher_node": 0.01}
    with pytest.raises(BadInputError, match=r"resources.teacher_resources.teacher_node: no node of the Ray cluster declares .* \(custom resources there: train_node\)"):
        check_cluster(plan, {"CPU": 8.0, "train_node": 1.0})
    nodes = [{"CPU": 4.0, "teacher_node": 1.0}, {"CPU": 4.0, "train_node": 1.0}]
    check_cluster(plan, {"CPU": 8.0, "teacher_node": 1.0, "train_node": 1.0}, nodes)


def test_cpu_workers_on_a_cluster_take_a_share_of_a_real_node():
    """Two CPU workers over two 16-CPU nodes: one each, the node's cores less teachers and data tasks."""
    nodes = [{"CPU": 0.0}, {"CPU": 16.0}, {"CPU": 16.0}]  # a head with no task resources
    plan = plan_resources(_job(num_workers=2), num_teachers=2, local=False, nodes=nodes)
    assert plan.worker_cpus == 16 - 1 - 2 * 0.5
    assert plan_resources(_job(num_workers=2), num_teachers=2, local=False).worker_cpus == 1.0  # nodes unknown


def test_inside_a_submitted_job_the_cluster_is_joined(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # what Ray's job supervisor sets
    assert submitted_job_address() == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.1:8265")  # a Jobs API URL, for `ray job submit`: not joined
    assert submitted_job_address() is None


@pytest.mark.parametrize("removed", [False, True])
def test_a_driver_leaves_the_working_dir_ray_may_replace(tmp_path, monkeypatch, removed):
    """A submitted job starts in Ray's unpacked working_dir, which Ray may remove and unpack again
    mid-job: the driver moves out (even when it is already gone); any other cwd is kept."""
    unpacked = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123"
    unpacked.mkdir(parents=True)
    monkeypatch.chdir(unpacked)
    if removed:
        shutil.rmtree(unpacked)
    leave_replaceable_working_dir()
    assert os.getcwd() == os.path.realpath(tempfile.gettempdir())
    monkeypatch.chdir(tmp_path)
    leave_replaceable_working_dir()
    assert os.getcwd() == str(tmp_path)


@pytest.mark.timeout(60)
def test_a_local_ray_polls_its_workers_often_and_watches_no_preemption(ray_cluster):
    """Ray Train's controller reads both settings from the environment its local Ray gave it."""
    import ray

    @ray.remote(num_cpus=0)
    def environment(names: list[str]) -> list[str | None]:
        return [os.environ.get(name) for name in names]

    assert ray.get(environment.remote([TRAIN_POLL_ENV, PREEMPTION_WATCHER_ENV])) == [str(TRAIN_POLL_S), "0"]
