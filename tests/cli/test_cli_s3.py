"""Every non-Ray command with its URLs on s3:// (the session's local S3 server)."""

import json

import fsspec
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from ray_amalgam.cli.main import main


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


@pytest.mark.timeout(300)
def test_data_teachers_amalgamate_predict_on_s3(capsys, s3_server, tmp_path):
    bucket = s3_server.new_bucket()
    for split, rows, seed in (("train", 128, 0), ("eval", 32, 1)):
        assert main(["data", "synth", "--out", f"{bucket}/{split}", "--num-samples", str(rows), "--shards", "2",
                     "--seed", str(seed), "--image-size", "16", "--json"]) == 0
        capsys.readouterr()
    assert main(["data", "inspect", f"{bucket}/train", "--json"]) == 0
    assert _json(capsys)["rows"] == 128

    folder = tmp_path / "photos" / "cat"
    folder.mkdir(parents=True)
    for index in range(3):
        Image.new("RGB", (20, 20), (index * 80, 10, 10)).save(folder / f"{index}.png")
    assert main(["data", "pack", "--from", str(tmp_path / "photos"), "--out", f"{bucket}/packed", "--shards", "1",
                 "--image-size", "16", "--json"]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", f"{bucket}/packed", "--json"]) == 0
    assert _json(capsys)["rows"] == 3

    for name, tasks in {"A": "color,size", "B": "position"}.items():
        assert main(["teachers", "train", "--data", f"{bucket}/train", "--tasks", tasks, "--width", "0.25", "--epochs", "1",
                     "--out", f"{bucket}/teachers/{name}", "--json"]) == 0
        capsys.readouterr()
    assert main(["teachers", "inspect", f"{bucket}/teachers/A", "--json"]) == 0
    assert [t["name"] for t in _json(capsys)["tasks"]] == ["color", "size"]

    job = {
        "teachers": [{"name": n, "checkpoint": f"{bucket}/teachers/{n}"} for n in ("A", "B")],
        "tasks": ["color", "position"],
        "data": {"train": f"{bucket}/train", "eval": f"{bucket}/eval"},
        "student": {"width": 0.25},
        "schedule": {"stage_epochs": 1, "finetune_epochs": 1, "batch_size": 32},
        "output": f"{bucket}/out",
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["amalgamate", str(tmp_path / "job.yaml"), "--json"]) == 0
    report = _json(capsys)
    assert report["student"]["checkpoint"] == f"{bucket}/out/student"

    assert main(["predict", "--student", f"{bucket}/out/student", "--data", f"{bucket}/eval",
                 "--out", f"{bucket}/out/predictions.parquet", "--json"]) == 0
    assert _json(capsys)["rows"] == 32
    s3 = fsspec.filesystem("s3", use_listings_cache=False)
    with s3.open(f"{bucket[5:]}/out/predictions.parquet", "rb") as handle:
        assert {"id", "color", "position"} <= set(pq.read_table(handle).column_names)

    keys = s3.find(bucket[5:])
    assert f"{bucket[5:]}/out/report.json" in keys and f"{bucket[5:]}/out/job.json" in keys
    assert not [k for k in keys if ".tmp-" in k]
    for key in keys:
        assert s3_server.secret.encode() not in s3.cat_file(key), key
