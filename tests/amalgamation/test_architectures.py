"""Every registered architecture learns, and teachers of different families amalgamate into one student."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ray_amalgam.amalgamation import amalgamate_local, load_student
from ray_amalgam.amalgamation.supervised import load_labelled, train_teacher
from ray_amalgam.io.shards import holdout_mask
from ray_amalgam.io import save_teacher, synthesize
from ray_amalgam.models import list_backbones
from ray_amalgam.spec import BackboneSpec, StudentSpec, TeacherRef


@pytest.fixture(scope="module")
def small_images(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("arch") / "data")
    synthesize(url, num_samples=480, num_shards=1, seed=0, image_size=16)
    return load_labelled(url, ["position"])


@pytest.mark.parametrize("arch", list_backbones())
def test_every_architecture_beats_the_majority_class_after_a_short_run(small_images, arch):
    # The small-input stem keeps 16 px images large enough for four blocks. MobileNetV3 used to
    # give the majority class here: its BatchNorm running statistics had barely moved.
    torch.manual_seed(0)
    result = train_teacher(small_images, BackboneSpec(arch=arch, width=0.125, small_input_stem=True), epochs=8, batch_size=32, lr=5e-3)
    held = small_images.labels["position"][holdout_mask(small_images.ids, 0.2)]
    majority = np.bincount(held).max() / len(held)
    assert result.accuracy["position"] > majority + 0.4, (arch, result.accuracy, majority)


def test_a_resnet_and_a_mobilenet_teacher_amalgamate_into_one_student(pool, tmp_path):
    data = load_labelled(pool.train_url, ["position"])
    # The pool's teachers are resnet18 with the standard stem; this one has the same output strides.
    mobile = train_teacher(data, BackboneSpec(arch="mobilenet_v3_small", width=0.25), epochs=5, batch_size=32, lr=5e-3)
    assert mobile.accuracy["position"] > 0.5
    mobile_url = str(tmp_path / "mobile")
    save_teacher(mobile_url, mobile.model.state_dict(), mobile.meta)
    teachers = (TeacherRef(name="painter", checkpoint=pool.teacher_urls["painter"]), TeacherRef(name="mobile", checkpoint=mobile_url))
    for student_arch in ("resnet18", "mobilenet_v3_small"):
        output = tmp_path / student_arch
        report = amalgamate_local(pool.job(str(output), teachers=teachers, student=StudentSpec(arch=student_arch, width=0.25)))
        assert report["teachers"]["names"] == ["painter", "mobile"]
        assert set(report["tasks"]) == {"color", "position"}
        assert all(0.0 <= row["fidelity"] <= 1.0 for row in report["tasks"].values()), report["tasks"]
        meta, _ = load_student(report["student"]["checkpoint"])
        assert meta.backbone.arch == student_arch
        assert {b.task.name: b.teacher_backbone.arch for b in meta.branches} == {"color": "resnet18", "position": "mobilenet_v3_small"}
        assert Path(output, "report.json").exists()
