"""End-to-end runs on the session's local Ray: stream and store, 1 and 2 train workers,
a teacher actor killed mid-epoch, and a driver killed mid-way then resumed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from ray_amalgam.amalgamation import load_student
from ray_amalgam.distributed import run_job
from ray_amalgam.spec import dump_spec_json

STAGES = ["block1", "block2", "block3", "block4", "finetune"]


def _check_outputs(report: dict, output: Path, workers: int) -> None:
    assert [s["stage"] for s in report["stages"]] == STAGES
    assert report["train_workers"] == workers
    for name in ("job.json", "report.md", "report.json", "metrics.json", "branch_out.json", "metrics_epochs.parquet", "metrics_stages.parquet"):
        assert (output / name).exists(), name
    meta, student = load_student(str(output / "student"))
    assert [t.name for t in meta.tasks] == ["shape", "position"]
    assert set(report["tasks"]) == {"shape", "position"}
    assert "student_accuracy" in report["tasks"]["shape"]  # the eval data carries labels
    # Each trained stage's epochs in order; a block stage left with no task on the trunk is skipped.
    epochs = pq.read_table(output / "metrics_epochs.parquet").column("stage").to_pylist()
    assert epochs == [s["stage"] for s in report["stages"] for _ in range(s["epochs"])]
    assert "| shape |" in (output / "report.md").read_text()


def _kill_one_teacher_actor(stop: threading.Event, killed: list[str]) -> None:
    """Once training runs, kill the newest teacher actor after it has processed a batch."""
    while not stop.is_set() and not killed:
        time.sleep(0.2)
        names = [n for n in ray.util.list_named_actors() if n.startswith("ray_amalgam_progress_")]
        if not names:
            continue
        board = ray.get_actor(names[0])
        if ray.get(board.snapshot.remote()).get("kind") != "train":
            continue
        for actor_id, _, batches, handle in reversed(ray.get(board.teacher_actors.remote())):
            if batches >= 1:
                ray.kill(handle, no_restart=False)
                killed.append(actor_id)
                break


@pytest.mark.timeout(300)
def test_stream_one_worker_survives_a_killed_teacher_actor(ray_cluster, new_job, tmp_path):
    # Augmented views are new at every epoch, so the teachers answer every epoch (none is replayed)
    # and the kill lands in an epoch they feed, whenever it comes.
    job = new_job(teacher_outputs="stream", schedule={"augment": True})
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_teacher_actor, args=(stop, killed), daemon=True)
    killer.start()
    events: list[dict] = []
    try:
        report = run_job(job, "job.yaml", progress_callback=events.append)
    finally:
        stop.set()
        killer.join()
    assert killed, "no teacher actor was killed"
    _check_outputs(report, tmp_path / "out", workers=1)
    epochs = json.loads((tmp_path / "out" / "metrics.json").read_text())["epochs"]
    # Every training row exactly once per epoch, the killed actor's epoch included.
    assert all(e["rows_seen"] == report["expected_rows"] and e["ids_exact"] for e in epochs)
    assert not any(e["replayed"] for e in epochs)
    assert any(e.get("kind") == "train" and "eta_s" in e for e in events)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["store", "stream"])
def test_two_workers(ray_cluster, new_job, tmp_path, mode):
    report = run_job(new_job(teacher_outputs=mode, resources={"num_workers": 2}), "job.yaml")
    _check_outputs(report, tmp_path / "out", workers=2)
    assert report.get("store_rebuilt", False) == (mode == "store")
    # The store pass ran in the driver and handed its decoded rows on: the store was not read back.
    assert report.get("rows_from_pass", False) == (mode == "store")
    epochs = json.loads((tmp_path / "out" / "metrics.json").read_text())["epochs"]
    # 144 training rows split evenly over 2 workers: nothing dropped, nothing repeated.
    assert report["expected_rows"] % 2 == 0
    assert all(e["ids_exact"] for e in epochs)
    # Both workers kept their rows after the first epoch, so every later epoch and stage replays them.
    assert [e["replayed"] for e in epochs] == [False] + [True] * (len(epochs) - 1)


@pytest.mark.timeout(420)
def test_killed_run_resumes_after_last_finished_stage(ray_cluster, new_job, tmp_path):
    job = new_job()
    spec = tmp_path / "job.json"
    spec.write_text(dump_spec_json(job))
    storage = tmp_path / "out" / "ray_train" / "amalgamate"
    script = (
        "import sys, ray_amalgam.distributed as d, ray_amalgam.spec as s;"
        "job = s.load_spec_text(s.JobSpec, open(sys.argv[1]).read(), sys.argv[1]);"
        "d.run_job(job, sys.argv[1], address=sys.argv[2])"
    )
    driver = subprocess.Popen([sys.executable, "-c", script, str(spec), ray_cluster])
    try:
        deadline = time.monotonic() + 240
        while not list(storage.glob("stage-01-block2/progress.json")):
            assert driver.poll() is None, "the first run ended before it could be killed"
            assert time.monotonic() < deadline, "no stage checkpoint appeared"
            time.sleep(0.5)
    finally:
        driver.kill()  # the driver dies: its Train controller and workers go with it
        driver.wait()
    report = run_job(job, "job.yaml", resume=True)
    assert report["resumed_from"] and report["restored_after_stage"] in ("block2", "block3", "block4")
    epochs = json.loads((tmp_path / "out" / "metrics.json").read_text())["epochs"]
    trained = [e["stage"] for e in epochs]
    assert len(trained) == len(set(trained)), "finished stages are not trained again"
    _check_outputs(report, tmp_path / "out", workers=1)


def _kill_train_worker_after(stage_dir: str, snapshot: Path, stop: threading.Event, killed: list[int]) -> None:
    """Once Ray Train's controller has registered the checkpoint in `stage_dir` (it then writes its
    checkpoint-manager snapshot naming it), kill the rank-0 train worker process."""
    while not stop.is_set() and not killed:
        time.sleep(0.2)
        names = [n for n in ray.util.list_named_actors() if n.startswith("ray_amalgam_progress_")]
        if not names or not snapshot.exists() or stage_dir not in snapshot.read_text():
            continue
        workers = ray.get(ray.get_actor(names[0]).workers.remote())
        ray.kill(workers[0])
        killed.append(0)


@pytest.mark.timeout(420)
def test_killed_train_worker_continues_from_the_last_stage_checkpoint(ray_cluster, new_job, tmp_path):
    stop, killed = threading.Event(), []
    snapshot = tmp_path / "out" / "ray_train" / "amalgamate" / "checkpoint_manager_snapshot.json"
    killer = threading.Thread(target=_kill_train_worker_after, args=("stage-01-block2", snapshot, stop, killed), daemon=True)
    killer.start()
    try:
        # Three epochs a stage keep the run going while the checkpoint is registered.
        report = run_job(new_job(schedule={"stage_epochs": 3, "finetune_epochs": 3}), "job.yaml")
    finally:
        stop.set()
        killer.join()
    assert killed, "no train worker was killed"
    # Ray Train restarted the worker group (FailureConfig) from the newest registered checkpoint.
    assert report["restored_after_stage"] in ("block2", "block3", "block4")
    epochs = json.loads((tmp_path / "out" / "metrics.json").read_text())["epochs"]
    trained = [(e["stage"], e["epoch"]) for e in epochs]
    assert len(trained) == len(set(trained)), "finished stages are not trained again"
    assert all(e["ids_exact"] for e in epochs)
    _check_outputs(report, tmp_path / "out", workers=1)
