"""The teacher-output store: reused when current, rebuilt when stale or half-written."""

from __future__ import annotations

import os

import pytest

from ray_amalgam.amalgamation import make_plan
from ray_amalgam.distributed.resources import plan_resources
from ray_amalgam.distributed.store import (
    MANIFEST,
    ensure_store,
    read_store,
    target_columns,
)
from ray_amalgam.io.checkpoints import read_teacher_meta

from .conftest import TEACHER_TASKS, make_teacher


@pytest.mark.timeout(240)
def test_store_reused_then_rebuilt_when_a_teacher_changes_or_half_written(ray_cluster, new_job, pool, tmp_path):
    teacher_b = tmp_path / "teacher_B"
    make_teacher(str(teacher_b), TEACHER_TASKS["B"], seed=1)
    job = new_job(teachers=[{"name": "A", "checkpoint": str(pool / "teacher_A")}, {"name": "B", "checkpoint": str(teacher_b)}])
    plan = make_plan(job, {t.name: read_teacher_meta(t.checkpoint) for t in job.teachers})
    resources = plan_resources(job, 2, local=True)
    root = str(tmp_path / "store")

    def build():
        return ensure_store(job, plan, "train", job.data.train, root, resources, [], None)

    first = build()
    assert first.rebuilt and first.num_rows == 160
    assert build() == first.__class__(**{**first.__dict__, "rebuilt": False})

    # Only the needed columns are read back, with one logits column per chosen head.
    batch = read_store(first, ["id", *target_columns(plan)], resources).take_batch(8, batch_format="numpy")
    assert sorted(batch) == ["id", "logits/A/shape", "logits/B/position"]
    assert batch["logits/A/shape"].shape == (8, 4)

    make_teacher(str(teacher_b), TEACHER_TASKS["B"], seed=7)  # new weights, same path
    second = build()
    assert second.rebuilt and second.url != first.url
    assert not os.path.exists(first.url), "the stale store is removed, never used again"

    os.remove(os.path.join(second.url, MANIFEST))  # as if the writer died before the manifest
    third = build()
    assert third.rebuilt and third.url == second.url
