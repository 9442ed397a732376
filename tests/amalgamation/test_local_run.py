"""A tiny whole job: teachers trained briefly on synthetic data, a student learns from them."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from rich.progress import Progress

from ray_amalgam.amalgamation import (
    TeacherRunner,
    amalgamate_local,
    kd_baseline,
    load_pool,
    load_student,
    predict,
    teacher_labelled_views,
)
from ray_amalgam.amalgamation.supervised import load_labelled
from ray_amalgam.io.images import to_tensor

CHANCE = {"color": 1 / 6, "position": 1 / 4}


@pytest.fixture(scope="module")
def afk_report(pool, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("afk"))
    return output, amalgamate_local(pool.job(output))


def test_student_fidelity_is_far_above_chance(pool, afk_report):
    output, report = afk_report
    for task, chance in CHANCE.items():
        assert pool.teacher_accuracy[{"color": "painter", "position": "locator"}[task]][task] > 2 * chance
        assert report["tasks"][task]["fidelity"] > 2 * chance, report["tasks"]
        assert report["tasks"][task]["student_accuracy"] > 1.5 * chance
    assert [r["stage"] for r in report["stages"]] == ["block1", "block2", "block3", "block4", "finetune"]
    saved = json.loads(open(f"{output}/report.json").read())
    assert saved["tasks"] == report["tasks"]
    assert "| color |" in open(f"{output}/report.md").read()
    assert report["student"]["flops"] > 0 and report["teachers"]["latency_ms"] > 0


def test_student_checkpoint_round_trip_and_predict(pool, afk_report, tmp_path):
    output, report = afk_report
    meta, student = load_student(f"{output}/student")
    assert [t.name for t in meta.tasks] == ["color", "position"]
    assert {b.task.name: b.branch_point for b in meta.branches} == report["branch_points"]
    assert set(meta.source_teachers) == {"painter", "locator"} and all(len(h) == 64 for h in meta.source_teachers.values())
    data = load_labelled(pool.eval_url, ["color"])
    with torch.inference_mode():
        logits = student(to_tensor(data.images, meta.mean, meta.std))
    accuracy = (logits["color"].argmax(1).numpy() == data.labels["color"]).mean()
    assert accuracy == pytest.approx(report["tasks"]["color"]["student_accuracy"], abs=1e-6)
    out = str(tmp_path / "predictions.parquet")
    assert predict(student, meta, pool.eval_url, out, batch_size=64) == len(data.ids)
    table = pq.read_table(out)
    assert table.column_names == ["id", "color", "color_prob", "position", "position_prob"]
    predicted = [meta.tasks[0].classes.index(c) for c in table.column("color").to_pylist()]
    assert predicted == logits["color"].argmax(1).tolist()
    assert table.column("id").to_pylist() == data.ids


def test_kd_baseline_uses_one_end_to_end_stage(pool, tmp_path):
    report = kd_baseline(pool.job(str(tmp_path), schedule=pool.job("x").schedule.model_copy(update={"finetune_epochs": 0})))
    assert report["method"] == "kd"
    assert report["branch_points"] == {"color": 4, "position": 4}
    assert [r["stage"] for r in report["stages"] if r["fidelity"]] == ["finetune"]
    assert report["tasks"]["position"]["fidelity"] > 2 * CHANCE["position"]


def test_auto_epochs_follow_the_training_rows(pool, tmp_path):
    """`auto` stage and finetune epochs come from the sample budget and the rows left after the
    hold-out; the progress bars show the samples each stage really trained on."""
    schedule = pool.job("x").schedule.model_copy(
        update={"stage_epochs": "auto", "finetune_epochs": "auto", "samples_per_stage": 800, "finetune_stages": 0.5}
    )
    with Progress(disable=True) as progress:
        report = amalgamate_local(pool.job(str(tmp_path), schedule=schedule), progress)
    rows = report["train_samples"]
    assert 350 < rows < 448  # the held-out tenth is not trained on
    assert (report["schedule"]["stage_epochs"], report["schedule"]["finetune_epochs"]) == (2, 1)
    totals = {task.description.split(" ")[0]: task.total for task in progress.tasks}
    assert totals == {"block1": 2 * rows, "block2": 2 * rows, "block3": 2 * rows, "block4": 2 * rows, "finetune": rows}


def test_augmented_views_are_labelled_by_the_teachers_on_the_view(pool, tmp_path):
    """With `schedule.augment`, each training batch is a random flip/shift of its images and its
    targets are the teachers' outputs on exactly those views, not the stored ones."""
    job = pool.job(str(tmp_path), teacher_outputs="stream", schedule=pool.job("x").schedule.model_copy(update={"augment": True}))
    plan, teachers = load_pool(job, "job")
    images = load_labelled(pool.train_url, []).images[:32]
    view = teacher_labelled_views(plan, teachers, torch.device("cpu"), np.random.default_rng(0))
    seen = view({"image": images})
    assert seen["image"].shape == images.shape and seen["image"].dtype == np.uint8
    changed = (seen["image"] != images).reshape(len(images), -1).any(1)
    assert changed.mean() > 0.5  # flips and shifts move most images
    original = {}
    for name, teacher in teachers.items():
        runner = TeacherRunner(name, teacher, plan, torch.device("cpu"))
        for key, value in runner.outputs(seen["image"]).items():
            np.testing.assert_allclose(seen[key], value, rtol=1e-5, atol=1e-5)
        original.update(runner.outputs(images))
    assert set(original) == set(seen) - {"image"}
    assert any(not np.allclose(original[k][changed], seen[k][changed], atol=1e-3) for k in original)
