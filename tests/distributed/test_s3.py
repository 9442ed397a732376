"""Every URL of a job on s3:// (the session's local S3 server): store and stream runs, resume from
checkpoints on S3, predict from S3, nothing half-written or secret left in the bucket, and the
one-line errors for a missing bucket and an unreachable endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest

from ray_amalgam.amalgamation import STUDENT_META, load_student
from ray_amalgam.distributed import run_job
from ray_amalgam.io import WEIGHTS, read_bytes
from ray_amalgam.spec import BadInputError, JobSpec, dump_spec_json

from .conftest import TEACHER_TASKS, job_dict
from .test_distributed_run import STAGES


@pytest.fixture(scope="module")
def s3_pool(pool: Path, s3_server) -> str:
    """The distributed tests' teachers and data, uploaded to a fresh bucket."""
    root = f"{s3_server.new_bucket()}/pool"
    s3 = _s3()
    for local in sorted(p for p in pool.rglob("*") if p.is_file()):
        s3.put_file(str(local), f"{root[5:]}/{local.relative_to(pool).as_posix()}")
    return root


def _s3_job(pool: str, output: str, **overrides) -> JobSpec:
    job = job_dict(Path("/unused"), Path("/unused"), **overrides)
    job["teachers"] = [{"name": n, "checkpoint": f"{pool}/teacher_{n}"} for n in TEACHER_TASKS]
    job["data"] = {"train": f"{pool}/train", "eval": f"{pool}/eval"}
    job["output"] = output
    return JobSpec.model_validate(job)


def _s3() -> fsspec.AbstractFileSystem:
    """The test's own S3 client; uncached listings, since Ray workers and subprocesses write too."""
    return fsspec.filesystem("s3", use_listings_cache=False)


def _keys(url: str) -> list[str]:
    return sorted(_s3().find(url[5:]))


def _assert_no_secret_or_leftover(bucket: str, secret: str, *local: Path) -> None:
    s3 = _s3()
    keys = _keys(bucket)
    assert not [k for k in keys if ".tmp-" in k], "no temporary prefix is left in the bucket"
    for key in keys:
        assert secret.encode() not in s3.cat_file(key), f"{key} holds the secret access key"
    for path in (p for root in local for p in root.rglob("*") if p.is_file()):
        assert secret.encode() not in path.read_bytes(), f"{path} holds the secret access key"


@pytest.mark.timeout(420)
def test_store_run_with_every_url_on_s3(ray_cluster, s3_pool, s3_server, tmp_path, write_then_die):
    output = f"{s3_pool.rsplit('/', 1)[0]}/runs/store"
    report = run_job(_s3_job(s3_pool, output, teacher_outputs="store"), "job.yaml")
    assert [s["stage"] for s in report["stages"]] == STAGES
    assert report["store_rebuilt"]
    saved = json.loads(read_bytes(f"{output}/report.json"))
    assert saved["stages"] == report["stages"]
    for name in ("job.json", "report.md", "metrics.json", "metrics_epochs.parquet", "student/student.json", "student/model.safetensors"):
        assert f"{output[5:]}/{name}" in _keys(output), name
    # One teacher store per teacher, both of the training split.
    assert [k.split("/")[-2].split("-")[:2] for k in _keys(output) if k.endswith("/store.json")] == [["train", "teacher"]] * 2
    epochs = json.loads(read_bytes(f"{output}/metrics.json"))["epochs"]
    assert all(e["ids_exact"] for e in epochs)

    # predict reads the student and the data from S3 and writes its Parquet there.
    predictions = f"{output}/predictions.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "ray_amalgam.cli.main", "predict", "--student", f"{output}/student",
         "--data", f"{s3_pool}/eval", "--out", predictions, "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 48
    meta, _ = load_student(f"{output}/student")
    assert [t.name for t in meta.tasks] == ["shape", "position"]
    _assert_no_secret_or_leftover(s3_pool.rsplit("/", 1)[0], s3_server.secret, tmp_path)
    assert s3_server.secret not in done.stdout + done.stderr

    # What a run killed inside save_student leaves on S3: the new weights, no manifest. No reader
    # accepts it, and the rerun (resume: nothing is trained again) writes a whole student.
    write_then_die(f"{output}/student", STUDENT_META, WEIGHTS, b"half a checkpoint")
    with pytest.raises(BadInputError, match=r"student: missing student\.json"):
        load_student(f"{output}/student")
    rerun = run_job(_s3_job(s3_pool, output, teacher_outputs="store"), "job.yaml", resume=True)
    assert rerun["resumed_from"].startswith("s3://") and rerun["resumed_from"].endswith("-finetune")
    assert json.loads(read_bytes(f"{output}/metrics.json"))["epochs"] == epochs, "nothing is trained again"
    assert load_student(f"{output}/student")[0] == meta


@pytest.mark.timeout(420)
def test_killed_stream_run_on_s3_resumes_from_s3_checkpoints(ray_cluster, s3_pool, s3_server, tmp_path):
    output = f"{s3_pool.rsplit('/', 1)[0]}/runs/stream"
    job = _s3_job(s3_pool, output, teacher_outputs="stream")
    spec = tmp_path / "job.json"
    spec.write_text(dump_spec_json(job))
    script = (
        "import sys, ray_amalgam.distributed as d, ray_amalgam.spec as s;"
        "job = s.load_spec_text(s.JobSpec, open(sys.argv[1]).read(), sys.argv[1]);"
        "d.run_job(job, sys.argv[1], address=sys.argv[2])"
    )
    driver = subprocess.Popen([sys.executable, "-c", script, str(spec), ray_cluster])
    s3 = _s3()
    try:
        deadline = time.monotonic() + 240
        while not s3.glob(f"{output[5:]}/ray_train/amalgamate/stage-01-block2/progress.json"):
            assert driver.poll() is None, "the first run ended before it could be killed"
            assert time.monotonic() < deadline, "no stage checkpoint appeared on S3"
            time.sleep(0.5)
    finally:
        driver.kill()
        driver.wait()
    report = run_job(job, "job.yaml", resume=True)
    assert report["resumed_from"].startswith("s3://")
    assert report["restored_after_stage"] in ("block2", "block3", "block4")
    assert [s["stage"] for s in report["stages"]] == STAGES
    epochs = json.loads(read_bytes(f"{output}/metrics.json"))["epochs"]
    trained = [e["stage"] for e in epochs]
    assert len(trained) == len(set(trained)), "finished stages are not trained again"
    assert all(e["ids_exact"] for e in epochs)
    load_student(f"{output}/student")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ray_amalgam.cli.main", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.timeout(120)
def test_missing_bucket_and_unreachable_endpoint_exit_2_in_seconds(s3_server, tmp_path):
    missing = _cli("data", "synth", "--out", "s3://ra-no-such-bucket/data", "--num-samples", "8")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "error: s3://ra-no-such-bucket/data: bucket 'ra-no-such-bucket' does not exist (or these credentials cannot see it)"
    ]
    started = time.monotonic()
    closed = _cli("data", "inspect", "s3://ra-bucket/data", env={"AWS_ENDPOINT_URL": "http://127.0.0.1:1"})
    assert closed.returncode == 2
    assert time.monotonic() - started < 45
    (line,) = closed.stderr.strip().splitlines()
    assert line.startswith("error: s3://ra-bucket/data") and ": storage endpoint not reachable (EndpointConnectionError" in line
    assert "Traceback" not in closed.stderr
