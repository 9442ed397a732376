"""Tiny data and teachers for the distributed tests: 16 px images, width-0.25 teachers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ray_amalgam.io.checkpoints import save_teacher
from ray_amalgam.io.synth import SYNTH_TASKS, synthesize
from ray_amalgam.models import build_teacher
from ray_amalgam.spec import BackboneSpec, JobSpec, TeacherMeta

TRAIN_ROWS = 160
TEACHER_TASKS = {"A": ("shape", "color", "size"), "B": ("position", "background", "attributes")}


def make_teacher(url: str, tasks: tuple[str, ...], seed: int) -> None:
    """An untrained width-0.25 resnet18 teacher: the pipeline does not care how good it is."""
    by_name = {t.name: t for t in SYNTH_TASKS}
    meta = TeacherMeta(backbone=BackboneSpec(arch="resnet18", width=0.25), tasks=tuple(by_name[t] for t in tasks), input_size=16)
    torch.manual_seed(seed)
    save_teacher(url, build_teacher(meta).state_dict(), meta)


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pool")
    synthesize(str(root / "train"), TRAIN_ROWS, 2, seed=0, image_size=16)
    synthesize(str(root / "eval"), 48, 1, seed=1, image_size=16)
    for index, (name, tasks) in enumerate(TEACHER_TASKS.items()):
        make_teacher(str(root / f"teacher_{name}"), tasks, seed=index)
    return root


def train_with_a_late_bad_image(pool: Path, into: Path) -> Path:
    """A copy of the pool's training data whose second shard's last image is not an image: a row
    the up-front checks (each shard's first rows) never decode, so only a data pass meets it."""
    import json
    import shutil

    import pyarrow.parquet as pq

    from ray_amalgam.io.metafile import LISTED_FILES

    train = into / "train"
    shutil.copytree(pool / "train", train)
    manifest = json.loads((train / "_dataset.json").read_text())
    del manifest[LISTED_FILES]  # as in a directory edited by hand
    (train / "_dataset.json").write_text(json.dumps(manifest))
    shard = train / "part-00001.parquet"
    table = pq.read_table(shard)
    images = table.column("image").to_pylist()
    pq.write_table(table.set_column(table.schema.get_field_index("image"), "image", [[*images[:-1], b"not an image"]]), shard)
    return train


def job_dict(pool: Path, output: Path, **overrides: Any) -> dict[str, Any]:
    """A tiny job: shape (teacher A) + position (teacher B), 1 epoch per stage."""
    job: dict[str, Any] = {
        "teachers": [{"name": n, "checkpoint": str(pool / f"teacher_{n}")} for n in TEACHER_TASKS],
        "tasks": ["shape", "position"],
        "data": {"train": str(pool / "train"), "eval": str(pool / "eval")},
        "student": {"width": 0.25},
        "schedule": {"stage_epochs": 1, "finetune_epochs": 1, "batch_size": 16},
        "resources": {"teacher_batch_size": 16},
        "output": str(output),
    }
    for key, value in overrides.items():
        job[key] = {**job[key], **value} if isinstance(value, dict) and isinstance(job.get(key), dict) else value
    return job


def make_job(pool: Path, output: Path, **overrides: Any) -> JobSpec:
    return JobSpec.model_validate(job_dict(pool, output, **overrides))


@pytest.fixture
def new_job(pool: Path, tmp_path: Path):
    """`new_job(name, **overrides)`: a tiny JobSpec writing to `tmp_path / name`."""
    return lambda name="out", **overrides: make_job(pool, tmp_path / name, **overrides)
