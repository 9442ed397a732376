"""`amalgamate`, `predict` and `run` through the CLI: a tiny local job end to end, and job-file errors."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from ray_amalgam.cli.main import main


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_pool")
    assert main(["data", "synth", "--out", str(root / "train"), "--num-samples", "192", "--shards", "2", "--json"]) == 0
    assert main(["data", "synth", "--out", str(root / "eval"), "--num-samples", "64", "--shards", "1", "--seed", "1", "--json"]) == 0
    for name, tasks in {"A": "color,size", "B": "position,attributes"}.items():
        code = main(["teachers", "train", "--data", str(root / "train"), "--tasks", tasks, "--width", "0.25",
                     "--epochs", "2", "--out", str(root / f"teacher_{name}"), "--json"])
        assert code == 0
    return root


def write_job(root: Path, path: Path, **changes) -> Path:
    job = {
        "teachers": [{"name": n, "checkpoint": str(root / f"teacher_{n}")} for n in ("A", "B")],
        "tasks": ["color", "position"],
        "data": {"train": str(root / "train"), "eval": str(root / "eval")},
        "student": {"width": 0.25},
        "schedule": {"stage_epochs": 1, "finetune_epochs": 1, "batch_size": 32},
        "output": str(path.parent / "out"),
    }
    job.update(changes)
    path.write_text(yaml.safe_dump(job))
    return path


def test_amalgamate_then_predict(capsys, tiny_pool, tmp_path):
    job = write_job(tiny_pool, tmp_path / "job.yaml")
    assert main(["amalgamate", str(job), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["tasks"]) == {"color", "position"}
    assert all(0.0 <= row["fidelity"] <= 1.0 for row in report["tasks"].values())
    assert report["student"]["params"] < report["teachers"]["params"]
    student = report["student"]["checkpoint"]
    assert (Path(student) / "model.safetensors").exists() and (tmp_path / "out" / "report.md").exists()

    out = tmp_path / "predictions.parquet"
    assert main(["predict", "--student", student, "--data", str(tiny_pool / "eval"), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    table = pq.read_table(out)
    assert summary["rows"] == table.num_rows == 64
    assert {"id", "color", "color_prob", "position", "position_prob"} <= set(table.column_names)
    assert set(table.column("color").to_pylist()) <= {"red", "yellow", "green", "cyan", "blue", "magenta"}


@pytest.mark.parametrize("command", ["run", "amalgamate"])
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tasks": ["color", "smell"]}, "tasks: no teacher owns task 'smell'; the pool offers"),
        ({"teachers": [{"name": "A", "checkpoint": "/nowhere/teacher"}]}, "/nowhere/teacher"),
        ({"student": {"width": 7}}, "student.width: Input should be less than or equal to 1"),
        ({"schedule": {"epochs": 3}}, "schedule.epochs: Extra inputs are not permitted"),
    ],
)
@pytest.mark.timeout(60)
def test_job_errors_exit_2_naming_the_job_file(capsys, tiny_pool, tmp_path, command, changes, message):
    job = write_job(tiny_pool, tmp_path / "job.yaml", **changes)
    assert main([command, str(job)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(job) in err.replace("\n", "")
    assert len(err.strip().splitlines()) == 1


def test_missing_job_file_exits_2(capsys, tmp_path):
    assert main(["run", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_unreachable_address_exits_2_within_seconds(capsys, tiny_pool, tmp_path):
    """Ray itself would retry for minutes ("Failed to get cluster ID from GCS server"); the timeout
    above is the bound the user gets."""
    job = write_job(tiny_pool, tmp_path / "job.yaml")
    assert main(["run", str(job), "--address", "127.0.0.1:1"]) == 2
    assert "--address 127.0.0.1:1: no Ray cluster reachable there" in capsys.readouterr().err
    assert not list(tmp_path.glob("**/job.json")), "nothing is written for a job that cannot run"
