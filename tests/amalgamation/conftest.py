"""Shared tiny fixtures: synthetic data and two briefly trained teachers with different tasks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from ray_amalgam.amalgamation.supervised import load_labelled, train_teacher
from ray_amalgam.io.checkpoints import save_teacher
from ray_amalgam.io.synth import synthesize
from ray_amalgam.spec import (
    BackboneSpec,
    DataSpec,
    JobSpec,
    ScheduleSpec,
    StudentSpec,
    TeacherRef,
)

TINY = BackboneSpec(arch="resnet18", width=0.25)


@dataclass
class Pool:
    train_url: str
    eval_url: str
    teacher_urls: dict[str, str]
    teacher_accuracy: dict[str, dict[str, float]]

    def job(self, output: str, tasks: tuple[str, ...] = ("color", "position"), **overrides) -> JobSpec:
        fields = dict(
            teachers=tuple(TeacherRef(name=n, checkpoint=u) for n, u in self.teacher_urls.items()),
            tasks=tasks,
            data=DataSpec(train=self.train_url, eval=self.eval_url),
            student=StudentSpec(width=0.25),
            # Two epochs: with one (about 12 steps a stage) the cosine decay leaves too little learning.
            schedule=ScheduleSpec(stage_epochs=2, finetune_epochs=2, batch_size=32, lr=3e-3),
            output=output,
        )
        fields.update(overrides)
        return JobSpec(**fields)


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Pool:
    root = tmp_path_factory.mktemp("pool")
    train_url, eval_url = str(root / "train"), str(root / "eval")
    synthesize(train_url, num_samples=448, num_shards=2, seed=0)
    synthesize(eval_url, num_samples=128, num_shards=1, seed=1)
    urls, accuracy = {}, {}
    torch.set_num_threads(2)
    for name, tasks in {"painter": ["color", "shape"], "locator": ["position", "attributes"]}.items():
        result = train_teacher(load_labelled(train_url, tasks), TINY, epochs=5, batch_size=32, lr=5e-3)
        urls[name] = str(root / name)
        save_teacher(urls[name], result.model.state_dict(), result.meta)
        accuracy[name] = result.accuracy
    return Pool(train_url, eval_url, urls, accuracy)
