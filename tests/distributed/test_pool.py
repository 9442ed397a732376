"""Teacher pools on the session's Ray: index a pool of 12 tiny teachers (3 architectures,
overlapping tasks) plus broken checkpoints, re-index incrementally, and run a job drawn from it."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from ray_amalgam.amalgamation.pool import select_teachers, synthesize_pool
from ray_amalgam.cli.main import main
from ray_amalgam.distributed.pool_index import CATALOGUE_NAME, index_pool
from ray_amalgam.io.catalogue import read_catalogue
from ray_amalgam.io.checkpoints import TEACHER_META, WEIGHTS
from ray_amalgam.models import build_teacher
from ray_amalgam.spec import TeacherMeta

from .conftest import job_dict


def _pickled_checkpoint(source: Path, target: Path) -> None:
    """A checkpoint directory whose weights file is a torch pickle, its manifest listing that file's size."""
    shutil.copytree(source, target)
    meta = json.loads((target / TEACHER_META).read_text())
    buffer = io.BytesIO()
    torch.save(build_teacher(TeacherMeta.model_validate({k: v for k, v in meta.items() if k != "files"})).state_dict(), buffer)
    (target / WEIGHTS).write_bytes(buffer.getvalue())
    meta["files"][WEIGHTS] = len(buffer.getvalue())
    (target / TEACHER_META).write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def teacher_pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[str, ...]]]:
    root = tmp_path_factory.mktemp("teacher_pool")
    tasks = synthesize_pool(str(root), 12)
    _pickled_checkpoint(root / "teacher_00", root / "pickled")
    shutil.copytree(root / "teacher_01", root / "truncated")
    weights = root / "truncated" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    torch.save({"w": torch.zeros(2)}, root / "legacy.pt")
    return root, tasks


@pytest.mark.timeout(180)
def test_index_lists_refused_checkpoints_and_rereads_only_a_changed_one(ray_cluster, teacher_pool):
    root, tasks = teacher_pool
    first = index_pool(str(root), use_ray=True)
    assert first["ray"] and first["checkpoints"] == 15 and first["accepted"] == 12
    refused = {r["name"]: r["reason"] for r in first["refused"]}
    assert set(refused) == {"legacy.pt", "pickled", "truncated"}
    assert "pickled weights file" in refused["legacy.pt"]
    assert "pickled checkpoints are refused" in refused["pickled"]
    assert "model.safetensors is missing or not the" in refused["truncated"]

    catalogue = read_catalogue(str(root / CATALOGUE_NAME))
    accepted = catalogue.accepted
    assert len({e.arch for e in accepted}) == 3
    assert {e.name: e.task_names for e in accepted} == tasks
    assert all(e.params and e.flops and len(e.hash) == 64 for e in accepted)
    old_hash = catalogue.entry("teacher_03").hash

    # Rewrite one teacher with other weights: only it is read again.
    meta = TeacherMeta.model_validate({k: v for k, v in json.loads((root / "teacher_03" / TEACHER_META).read_text()).items() if k != "files"})
    torch.manual_seed(99)
    from ray_amalgam.io.checkpoints import save_teacher

    save_teacher(str(root / "teacher_03"), build_teacher(meta).state_dict(), meta)
    second = index_pool(str(root))
    assert second["read"] == ["teacher_03"] and second["unchanged"] == 14
    assert read_catalogue(str(root / CATALOGUE_NAME)).entry("teacher_03").hash != old_hash


@pytest.mark.timeout(300)
def test_job_from_the_pool_runs_through_run_and_loads_only_chosen_teachers(ray_cluster, pool, teacher_pool, tmp_path, capsys):
    root, _ = teacher_pool
    work = tmp_path / "pool"
    shutil.copytree(root, work, ignore=shutil.ignore_patterns(CATALOGUE_NAME))
    catalogue_url = str(work / CATALOGUE_NAME)
    index_pool(str(work), use_ray=False)
    chosen = select_teachers(read_catalogue(catalogue_url), ["shape", "position"], {}, "test")
    assert len(chosen.teachers) == 2, "shape and position: no teacher owns both, two cover them"
    # Teachers that are not chosen are never read: their weights can go.
    for entry in read_catalogue(catalogue_url).accepted:
        if entry.name not in chosen.teachers:
            os.remove(work / entry.name / WEIGHTS)
    job = job_dict(pool, tmp_path / "out")
    del job["teachers"]
    job["pool"] = catalogue_url
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    capsys.readouterr()
    assert main(["run", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["teacher_selection"]["teachers"] == list(chosen.teachers)
    assert report["teachers"]["names"] == list(chosen.teachers)
    assert set(report["tasks"]) == {"shape", "position"}
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert f"Teachers chosen from pool {work}" in markdown and chosen.reasons["shape"] in markdown
