import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ray_amalgam.amalgamation import amalgamate_local, validate_job, write_job_record
from ray_amalgam.amalgamation.validation import with_absolute_paths
from ray_amalgam.io import LISTED_FILES, encode_image
from ray_amalgam.spec import BadInputError, JobSpec, StudentSpec


def test_local_paths_become_absolute_and_urls_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = JobSpec.model_validate({
        "teachers": [{"name": "A", "checkpoint": "teachers/A"}, {"name": "B", "checkpoint": "s3://bucket/B"}],
        "tasks": ["shape"],
        "data": {"train": "data/train", "eval": "gs://bucket/eval"},
        "output": "runs/one",
    })
    fixed = with_absolute_paths(job)
    assert [t.checkpoint for t in fixed.teachers] == [str(tmp_path / "teachers" / "A"), "s3://bucket/B"]
    assert fixed.data.train == str(tmp_path / "data" / "train") and fixed.data.eval == "gs://bucket/eval"
    assert fixed.output == str(tmp_path / "runs" / "one")


# ----- invalid jobs: refused before anything is written -------------------------------------------
# Each case makes a broken copy of one input of the tiny pool and returns the job's changed fields.


def _without_file_list(manifest: Path) -> None:
    """Drop the manifest's file list, as in a directory made or edited by hand: the checks below
    then meet the broken file itself rather than the size the list recorded."""
    meta = json.loads(manifest.read_text())
    del meta[LISTED_FILES]
    manifest.write_text(json.dumps(meta))


def _teacher_copy(pool, tmp: Path, keep_file_list: bool = False) -> Path:
    copy = tmp / "painter"
    shutil.copytree(pool.teacher_urls["painter"], copy)
    if not keep_file_list:
        _without_file_list(copy / "teacher.json")
    return copy


def _with_teacher(pool, copy: Path) -> dict:
    refs = pool.job("-").teachers
    return {"teachers": (refs[0].model_copy(update={"checkpoint": str(copy)}), *refs[1:])}


def _pickled_weights(pool, tmp):
    copy = _teacher_copy(pool, tmp)
    torch.save({"w": torch.zeros(2)}, copy / "model.safetensors")
    return _with_teacher(pool, copy)


def _truncated_weights(pool, tmp, keep_file_list: bool = False):
    copy = _teacher_copy(pool, tmp, keep_file_list)
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    return _with_teacher(pool, copy)


def _width_disagrees_with_weights(pool, tmp):
    copy = _teacher_copy(pool, tmp)
    meta = json.loads((copy / "teacher.json").read_text())
    meta["backbone"]["width"] = 0.5  # the weights are those of width 0.25
    (copy / "teacher.json").write_text(json.dumps(meta))
    return _with_teacher(pool, copy)


def _train_copy(pool, tmp: Path, change_first_shard, keep_file_list: bool = False) -> dict:
    copy = tmp / "train"
    shutil.copytree(pool.train_url, copy)
    if not keep_file_list:
        _without_file_list(copy / "_dataset.json")
    shard = copy / "part-00000.parquet"
    change_first_shard(shard)
    return {"data": pool.job("-").data.model_copy(update={"train": str(copy)})}


def _rewrite(shard: Path, change) -> None:
    pq.write_table(change(pq.read_table(shard)), shard)


def _set_first_image(table, data: bytes):
    images = table.column("image").to_pylist()
    return table.set_column(table.schema.get_field_index("image"), "image", [[data, *images[1:]]])


def _no_image_column(pool, tmp):
    return _train_copy(pool, tmp, lambda shard: _rewrite(shard, lambda t: t.drop_columns(["image"])))


def _corrupt_image(pool, tmp):
    return _train_copy(pool, tmp, lambda shard: _rewrite(shard, lambda t: _set_first_image(t, b"not an image")))


def _truncated_shard(pool, tmp, keep_file_list: bool = False):
    return _train_copy(pool, tmp, lambda shard: shard.write_bytes(shard.read_bytes()[:2000]), keep_file_list)


def _image_of_another_size(pool, tmp):
    other = encode_image(np.zeros((24, 24, 3), dtype=np.uint8))
    return _train_copy(pool, tmp, lambda shard: _rewrite(shard, lambda t: _set_first_image(t, other)))


def _shard_copied_under_a_second_name(pool, tmp):
    return _train_copy(pool, tmp, lambda shard: shutil.copy(shard, shard.with_name("part-00002.parquet")))


INVALID_JOBS = {
    "unknown student arch": (lambda pool, tmp: {"student": StudentSpec(arch="vgg11", width=0.25)},
                             "student.arch: unknown architecture 'vgg11'"),
    "branch block 0": (lambda pool, tmp: {"student": StudentSpec(width=0.25, branch_out={"color": 0})},
                       "student.branch_out.color: expected a trunk block 1..4, got 0"),
    "branch block beyond the trunk": (lambda pool, tmp: {"student": StudentSpec(width=0.25, branch_out={"position": 5})},
                                      "student.branch_out.position: expected a trunk block 1..4, got 5"),
    "pickled weights": (_pickled_weights, "teachers[0].checkpoint: "),
    "truncated weights": (_truncated_weights, "model.safetensors is not a safetensors file"),
    "truncated weights, sizes listed": (lambda pool, tmp: _truncated_weights(pool, tmp, keep_file_list=True),
                                        "painter: model.safetensors is missing or not the"),
    "teacher.json width disagrees with the weights": (_width_disagrees_with_weights, "has shape"),
    "shard without an image column": (_no_image_column, "part-00000.parquet: no column 'image'"),
    "corrupt image": (_corrupt_image, "part-00000.parquet row 0: not a decodable image"),
    "truncated shard": (_truncated_shard, "part-00000.parquet: not a readable Parquet file"),
    "truncated shard, sizes listed": (lambda pool, tmp: _truncated_shard(pool, tmp, keep_file_list=True),
                                      "train: part-00000.parquet is missing or not the"),
    "image of another size": (_image_of_another_size, "part-00000.parquet row 0: image is 24x24, expected 32x32"),
    "shard copied under a second name": (_shard_copied_under_a_second_name,
                                         "part-00000.parquet and part-00002.parquet; expected unique ids"),
}


@pytest.mark.parametrize("case", list(INVALID_JOBS))
def test_invalid_job_is_refused_and_writes_nothing(pool, tmp_path, case):
    make, message = INVALID_JOBS[case]
    output = tmp_path / "out"
    job = pool.job(str(output), **make(pool, tmp_path))
    with pytest.raises(BadInputError) as refused:
        amalgamate_local(job, source="job.yaml")
    text = str(refused.value)
    assert text.startswith("job.yaml: ") and message in text and "\n" not in text
    assert not output.exists() or not any(output.iterdir())


def test_a_valid_job_validates_without_writing_then_records_itself(pool, tmp_path):
    output = tmp_path / "out"
    job = pool.job(str(output))
    plan = validate_job(job, "job.yaml")
    assert plan.task_names == ("color", "position")
    assert not output.exists()
    write_job_record(job, "job.yaml")
    assert JobSpec.model_validate_json((output / "job.json").read_text()) == job


def test_an_unwritable_output_is_bad_input(pool, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BadInputError, match=r"job.yaml: output: cannot write to .*file/out"):
        write_job_record(pool.job(str(blocker / "out")), "job.yaml")
