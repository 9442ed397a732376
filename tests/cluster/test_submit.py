"""`ray-amalgam submit | jobs` against a real two-node Ray cluster (tests/cluster/conftest.py), as a
person runs them: real processes, the Ray Jobs API with token authentication.

One cluster serves every test here; the jobs are tiny (160 16-px images, width-0.25 networks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from distributed.conftest import job_dict
from distributed.test_distributed_run import _check_outputs

from .conftest import TEACHER_NODE, TRAIN_NODE
from .multinode import MultiNodeCluster, free_ports


def _cli(*args: str, token_file: Path | None = None, timeout: float = 400, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    environment.update(env or {})
    extra = ["--token-file", str(token_file)] if token_file else []
    return subprocess.run([sys.executable, "-m", "ray_amalgam.cli.main", *args, *extra], capture_output=True, text=True,
                          timeout=timeout, env=environment)


def _document(done: subprocess.CompletedProcess) -> dict[str, Any]:
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def token_file(multinode: MultiNodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token") / "auth_token"
    path.write_text(multinode.token + "\n")
    return path


def _write(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.timeout(300)  # five CLI processes; each imports torch and Ray (10-20 s on a busy 2-core machine)
def test_errors_are_one_line_and_submit_nothing(multinode, token_file, pool, tmp_path):
    url = multinode.dashboard_url
    (dead_port,) = free_ports(1)
    started = time.monotonic()
    done = _cli("jobs", "list", "--address", f"http://127.0.0.1:{dead_port}", token_file=token_file)
    assert done.returncode == 2 and time.monotonic() - started < 30
    assert done.stderr.strip().splitlines() == [f"error: --address http://127.0.0.1:{dead_port}: no Ray cluster reachable there (Connection refused)"]

    wrong = tmp_path / "wrong_token"
    wrong.write_text("not-the-token")
    done = _cli("jobs", "list", "--address", url, token_file=wrong)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "the cluster refused the auth token" in lines[0], done.stderr

    before = len(_document(_cli("jobs", "list", "--address", url, "--json", env={"RAY_AUTH_TOKEN": multinode.token}))["jobs"])
    spec = _write(tmp_path / "job.yaml", job_dict(pool, tmp_path / "out"))
    done = _cli("submit", str(spec), "--address", url, "--wait", token_file=token_file)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {spec}: teachers[0].checkpoint: '{pool / 'teacher_A'}' is a local path the cluster's nodes cannot see; "
        "expected an s3:// or gs:// URL (or --allow-local-paths for a directory every node mounts at the same place) [+4 more]"
    ]
    assert len(_document(_cli("jobs", "list", "--address", url, "--json", token_file=token_file))["jobs"]) == before

    done = _cli("jobs", "status", "raysubmit_no_such_job", "--address", url, token_file=token_file)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "raysubmit_no_such_job" in done.stderr


def _wait_for_file(pattern: str, root: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not list(root.glob(pattern)):
        assert process.poll() is None, f"the job ended before {pattern} appeared: {process.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"{pattern} did not appear"
        time.sleep(1)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_follow_stop_and_resume_with_teachers_and_workers_on_different_nodes(multinode, token_file, pool, tmp_path):
    """submit --follow; jobs stop once block1 is checkpointed (the follower exits 1 saying STOPPED);
    submit --resume --wait continues after the last finished stage. Teacher actors are pinned to
    the head's `teacher_node`, the train worker to the other node's `train_node`: stream mode with
    augmentation (no epoch is replayed), so every batch crosses nodes, and every epoch still sees
    each training row exactly once."""
    url, out, sid = multinode.dashboard_url, tmp_path / "pinned", "ra-test-pinned"
    spec = _write(tmp_path / "pinned.yaml", job_dict(
        pool, out, teacher_outputs="stream", schedule={"stage_epochs": 20, "augment": True},  # time to stop it mid-way
        resources={"teacher_resources": {TEACHER_NODE: 0.01}, "worker_resources": {TRAIN_NODE: 0.01}},
    ))
    environment = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    follower = subprocess.Popen(
        [sys.executable, "-m", "ray_amalgam.cli.main", "submit", str(spec), "--address", url, "--follow", "--allow-local-paths",
         "--submission-id", sid, "--token-file", str(token_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
    )
    try:
        _wait_for_file("ray_train/amalgamate/stage-00-block1/progress.json", out, follower, timeout=400)
        stopped = _cli("jobs", "stop", sid, "--address", url, "--json", token_file=token_file)
        assert stopped.returncode == 0, stopped.stderr
        assert _document(stopped)["status"] == "STOPPED" and _document(stopped)["stop_requested"] is True
        _, followed = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 1
    assert f"Running entrypoint for job {sid}: ray-amalgam run pinned.yaml --address auto" in followed  # the logs streamed
    assert followed.strip().splitlines()[-1].startswith(f"failed: job {sid} was STOPPED before it finished;")
    status = _document(_cli("jobs", "status", sid, "--address", url, "--json", token_file=token_file))
    assert status["status"] == "STOPPED" and status["kind"] == "job" and status["output"] == str(out)

    resumed = _cli("submit", str(spec), "--address", url, "--resume", "--wait", "--allow-local-paths", "--json", token_file=token_file)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = _document(resumed)
    assert summary["status"] == "SUCCEEDED" and summary["exit_code"] == 0
    assert summary["entrypoint"] == "ray-amalgam run pinned.yaml --address auto --resume"

    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from"] and report["restored_after_stage"] in ("block1", "block2", "block3", "block4")
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    trained = [(e["stage"], e["epoch"]) for e in epochs]
    assert len(trained) == len(set(trained)), "finished stages are not trained again"
    assert report["all_epochs_ids_exact"] and all(e["ids_exact"] for e in epochs)
    _check_outputs(report, out, workers=1)
    placement = report["placement"]
    worker_nodes = set(placement["train_workers"])
    teacher_nodes = {node for nodes in placement["teacher_actors"].values() for node in nodes}
    assert set(placement["teacher_actors"]) == {"A", "B"}
    assert all(TRAIN_NODE in placement["nodes"][n] for n in worker_nodes)
    assert all(TEACHER_NODE in placement["nodes"][n] for n in teacher_nodes)
    assert worker_nodes and teacher_nodes and not worker_nodes & teacher_nodes

    listed = _document(_cli("jobs", "list", "--address", url, "--json", env={"RAY_AUTH_TOKEN": multinode.token}))["jobs"]
    assert {(j["submission_id"], j["status"]) for j in listed} >= {(sid, "STOPPED"), (summary["submission_id"], "SUCCEEDED")}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sweep_is_detected_and_runs_with_one_teacher_pass(multinode, token_file, pool, tmp_path):
    """A two-trial sweep: detected as a sweep, run by `ray-amalgam sweep`; one teacher pass, both trials finish."""
    out = tmp_path / "sweep"
    spec = _write(tmp_path / "sweep.yaml", {
        "base": job_dict(pool, out), "searcher": "grid", "scheduler": "fifo", "axes": {"tasks": [["shape"], ["position"]]},
    })
    done = _cli("submit", str(spec), "--address", multinode.dashboard_url, "--wait", "--allow-local-paths", "--json",
                token_file=token_file, timeout=850)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = _document(done)
    assert summary["kind"] == "sweep" and summary["status"] == "SUCCEEDED"
    assert summary["entrypoint"] == "ray-amalgam sweep sweep.yaml --address auto"
    result = json.loads((out / "summary.json").read_text())
    assert result["finished"] == 2 and result["teacher_passes_per_sample"] == 1
