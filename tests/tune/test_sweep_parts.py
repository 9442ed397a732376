"""The sweep's pure parts: search space, trial jobs, concurrency from the cluster, Pareto front, score."""

from __future__ import annotations

import pytest

from ray_amalgam.distributed.resources import ResourcePlan
from ray_amalgam.spec import BadInputError, JobSpec
from ray_amalgam.spec.sweep import MetricSpec, SweepSpec
from ray_amalgam.tune.capacity import IN_PROCESS_BYTES, max_concurrent_trials, trial_bundles, trial_run
from ray_amalgam.tune.results import pareto_front
from ray_amalgam.tune.score import final_score, quality
from ray_amalgam.tune.space import param_space, trial_job, union_tasks
from ray_amalgam.tune.trial import teacher_passes

BASE = {
    "teachers": [{"name": "A", "checkpoint": "/a"}, {"name": "B", "checkpoint": "/b"}],
    "tasks": ["shape", "position"],
    "task_teachers": {"shape": "A"},
    "data": {"train": "/train", "eval": "/eval"},
    "output": "/out",
}


def _sweep(**fields) -> SweepSpec:
    return SweepSpec.model_validate({"base": BASE, **fields})


def test_grid_space_and_trial_jobs():
    spec = _sweep(searcher="grid", axes={"width": {"min": 0.25, "max": 0.75, "step": 0.25},
                                         "tasks": {"every_subset_of": ["shape", "position"]}, "lr": {"choice": [0.01]}})
    space = param_space(spec)
    assert space["width"] == {"grid_search": [0.25, 0.5, 0.75]}
    assert space["tasks"] == {"grid_search": ["shape", "position", "shape+position"]}
    assert union_tasks(spec) == ("shape", "position")
    job = trial_job(spec.base, {"width": 0.5, "tasks": "position", "lr": 0.01}, "/out/trials/t1")
    assert (job.tasks, job.student.width, job.schedule.lr, job.output) == (("position",), 0.5, 0.01, "/out/trials/t1")
    assert job.task_teachers == {}  # settings of tasks the trial does not learn are dropped


def test_choose_k_subsets_are_string_keys():
    spec = _sweep(axes={"tasks": {"choose": 2, "of": ["shape", "position", "color"]}})
    assert sorted(param_space(spec)["tasks"].categories) == ["position+color", "shape+color", "shape+position"]


def _plan(worker_cpus: float, worker_gpus: float = 0.0) -> ResourcePlan:
    return ResourcePlan(train_workers=1, worker_cpus=worker_cpus, worker_gpus=worker_gpus, teacher_actor_cpus=0.5,
                        teacher_actor_gpus=0.0, data_task_cpus=0.25, teacher_actors_min=2, teacher_actors_max=2, cluster_cpus=0.0)


def test_concurrency_follows_the_cluster():
    assert max_concurrent_trials(_plan(1.0), "store", totals={"CPU": 4.0}) == 2
    assert max_concurrent_trials(_plan(1.0), "teachers", totals={"CPU": 4.0}) == 1
    assert max_concurrent_trials(_plan(2.0, 1.0), "store", totals={"CPU": 64.0, "GPU": 3.0}) == 3
    # In process: the trial is its one worker, and starts no data task.
    assert max_concurrent_trials(_plan(1.0), "in_process", totals={"CPU": 4.0}) == 4
    assert trial_bundles(_plan(1.0), "in_process").bundles == [{"CPU": 1.0}]
    with pytest.raises(BadInputError, match="no trial could ever start"):
        max_concurrent_trials(_plan(4.0), "store", totals={"CPU": 4.0})


def test_a_trial_trains_in_process_only_from_the_store_on_one_cpu_worker_with_data_that_fits():
    base, small = JobSpec.model_validate(BASE), 2**20
    assert trial_run(base, _plan(1.0), has_store=True, data_bytes=small) == "in_process"
    assert trial_run(base, _plan(1.0), has_store=False, data_bytes=small) == "teachers"
    assert trial_run(base, _plan(1.0, 0.5), has_store=True, data_bytes=small) == "store"  # a GPU worker keeps Ray Train's device handling
    two = ResourcePlan(**{**_plan(1.0).__dict__, "train_workers": 2})
    assert trial_run(base, two, has_store=True, data_bytes=small) == "store"
    hinted = base.model_copy(update={"hint": base.hint.model_copy(update={"enabled": True})})
    assert trial_run(hinted, _plan(1.0), has_store=True, data_bytes=small) == "store"
    assert trial_run(base, _plan(1.0), has_store=True, data_bytes=IN_PROCESS_BYTES + 1) == "store"  # streams instead
    assert trial_run(base, _plan(1.0), has_store=True, data_bytes=None) == "store"  # size unknown


def test_pareto_front_keeps_only_undominated_finished_trials():
    rows = [
        {"trial_id": "small", "status": "finished", "quality": 0.7, "params": 1},
        {"trial_id": "big", "status": "finished", "quality": 0.9, "params": 3},
        {"trial_id": "worse", "status": "finished", "quality": 0.6, "params": 2},
        {"trial_id": "stopped", "status": "stopped", "quality": 1.0, "params": 0},
    ]
    assert pareto_front(rows) == ["small", "big"]


def test_score_ignores_nan_and_penalizes_size():
    assert quality(MetricSpec(), {"a": 1.0, "b": float("nan")}) == 0.5
    assert quality(MetricSpec(quality="fidelity/b"), {"a": 1.0}) is None
    assert final_score(MetricSpec(size_penalty=0.5), {"a": 0.8}, params=50, teacher_params=100) == (0.8, 0.55)


def test_base_is_a_job():
    assert isinstance(_sweep().base, JobSpec)


def test_a_sweep_from_a_pool_learns_every_subset_from_the_union_choice(tmp_path):
    """Each teacher runs once for the whole sweep: trials learn from the teachers chosen for the
    union of the swept tasks, not each from its own (possibly other) choice."""
    from ray_amalgam.io.catalogue import write_catalogue
    from ray_amalgam.spec import Catalogue, CatalogueEntry, TaskSpec
    from ray_amalgam.tune.sweep import _with_pool_teachers

    shape = TaskSpec(name="shape", kind="multiclass", classes=("a", "b"))
    color = TaskSpec(name="color", kind="multiclass", classes=("r", "g"))

    def entry(name, tasks, params):
        return CatalogueEntry(name=name, url=f"/pool/{name}", status="ok", fingerprint=name, hash=name, arch="resnet18",
                              width=0.25, small_input_stem=False, input_size=16, tasks=tasks, params=params, flops=params)

    catalogue = str(tmp_path / "c.parquet")
    # Alone, shape would learn from the small 'shape_only'; with color in the union, 'both' covers the two.
    write_catalogue(catalogue, Catalogue(prefix="/pool", entries=(entry("shape_only", (shape,), 10), entry("both", (shape, color), 99))))
    base = {**{k: v for k, v in BASE.items() if k not in ("teachers", "task_teachers")}, "pool": catalogue, "tasks": ["shape"]}
    spec = SweepSpec.model_validate({"base": base, "axes": {"tasks": [["shape"], ["color"], ["shape", "color"]]}})
    resolved = _with_pool_teachers(spec, "sweep.yaml").base
    assert resolved.pool is None and [t.name for t in resolved.teachers] == ["both"]
    for subset in ("shape", "color", "shape+color"):
        assert trial_job(resolved, {"tasks": subset}, "/out/t").teachers == resolved.teachers


def test_optuna_without_its_package_is_one_line_naming_the_extra(monkeypatch):
    from ray_amalgam.tune import sweep as sweep_module

    real_find_spec = sweep_module.importlib.util.find_spec
    monkeypatch.setattr(sweep_module.importlib.util, "find_spec", lambda name: None if name == "optuna" else real_find_spec(name))
    with pytest.raises(BadInputError, match=r"^sweep.yaml: searcher: 'optuna' needs .*ray_amalgam\[optuna\]"):
        sweep_module.run_sweep(_sweep(searcher="optuna"), source="sweep.yaml")


def test_teacher_passes_count_only_the_epochs_that_read_their_rows():
    stream = {"mode": "stream", "stages": [{"epochs": 2, "replayed_epochs": 1}, {"epochs": 3, "replayed_epochs": 3}]}
    assert teacher_passes(stream) == 1
    augmented = {"mode": "stream", "stages": [{"epochs": 2, "replayed_epochs": 0}, {"epochs": 3, "replayed_epochs": 0}]}
    assert teacher_passes(augmented) == 5
    assert teacher_passes({"mode": "store", "stages": stream["stages"], "store_rebuilt": True}) == 1
    assert teacher_passes({"targets": "stored"}) == 0
