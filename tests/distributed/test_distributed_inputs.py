"""Bad inputs fail fast with one-line BadInputErrors naming the field (exit code 2 at the CLI)."""

from __future__ import annotations

import pytest

from ray_amalgam.distributed import run_job
from ray_amalgam.spec import BadInputError

from .conftest import train_with_a_late_bad_image


@pytest.mark.timeout(60)
def test_missing_teacher_checkpoint(new_job, tmp_path):
    job = new_job(teachers=[{"name": "A", "checkpoint": str(tmp_path / "nowhere")}, {"name": "B", "checkpoint": str(tmp_path / "nowhere")}])
    with pytest.raises(BadInputError, match=r"job.yaml: teachers\[0\].checkpoint: .*nowhere: checkpoint not found"):
        run_job(job, "job.yaml")


@pytest.mark.timeout(60)
def test_task_not_in_pool(new_job):
    with pytest.raises(BadInputError, match=r"job.yaml: tasks: no teacher owns task 'texture'"):
        run_job(new_job(tasks=["shape", "texture"]), "job.yaml")


@pytest.mark.timeout(60)
def test_unreachable_data_url(new_job, tmp_path):
    job = new_job(data={"train": str(tmp_path / "no_data")})
    with pytest.raises(BadInputError, match=r"job.yaml: data.train: .*no_data/_?dataset.json: not found"):
        run_job(job, "job.yaml")


@pytest.mark.timeout(60)
def test_unknown_url_scheme(new_job):
    with pytest.raises(BadInputError, match=r"job.yaml: data.train: nosuch://bucket/data"):
        run_job(new_job(data={"train": "nosuch://bucket/data"}), "job.yaml")


@pytest.mark.timeout(60)
def test_unwritable_output_url(ray_cluster, new_job, tmp_path):
    """The output is first written once the cluster is known to fit the job, so Ray is up by then."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    job = new_job().model_copy(update={"output": str(blocker / "out")})
    with pytest.raises(BadInputError, match=r"job.yaml: output: cannot write to .*a_file/out"):
        run_job(job, "job.yaml")


@pytest.mark.timeout(120)
def test_gpus_on_cpu_only_cluster(ray_cluster, new_job, tmp_path):
    with pytest.raises(BadInputError, match=r"resources.gpus_per_worker: 1.0 GPUs per worker requested, but the Ray cluster has no GPU"):
        run_job(new_job(resources={"gpus_per_worker": 1.0}), "job.yaml")
    assert not (tmp_path / "out").exists(), "a job the cluster cannot place writes nothing"
    with pytest.raises(BadInputError, match=r"resources.teacher_gpu_fraction"):
        run_job(new_job(resources={"teacher_gpu_fraction": 0.5}), "job.yaml")


@pytest.mark.timeout(120)
def test_more_train_workers_than_the_cluster_holds(ray_cluster, new_job):
    # Refused before any placement group waits: never a silent hang.
    with pytest.raises(BadInputError, match=r"resources.num_workers: 64 train workers .* but the Ray cluster has \d+"):
        run_job(new_job(resources={"num_workers": 64}), "job.yaml")


@pytest.mark.timeout(120)
def test_ray_data_reads_a_dataset_directory(ray_cluster, pool):
    """The metadata file (`_dataset.json`) is skipped by Parquet directory readers such as Ray Data's."""
    import pyarrow.parquet as pq
    import ray.data

    assert (pool / "train" / "_dataset.json").exists()
    rows = sum(pq.ParquetFile(shard).metadata.num_rows for shard in (pool / "train").glob("part-*.parquet"))
    ds = ray.data.read_parquet(str(pool / "train"))
    assert ds.count() == rows
    assert {"id", "image", "shape"} <= set(ds.schema().names)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["store", "stream"])
def test_an_image_that_fails_only_in_the_data_pass_stops_the_job_with_its_own_error(ray_cluster, new_job, pool, tmp_path, mode):
    """The job's datasets are built while Ray Train starts (`handoff`): a row the up-front checks
    do not read (they decode each shard's first rows) fails in the data pass, and the job ends
    with that error, naming the data, rather than with Ray Train's or a hang."""
    train = train_with_a_late_bad_image(pool, tmp_path)
    job = new_job(teacher_outputs=mode, data={"train": str(train)})
    with pytest.raises(BadInputError, match=r"row \d+: not a decodable image") as error:
        run_job(job, "job.yaml")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out" / "report.json").exists()
