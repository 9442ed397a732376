"""The foundation commands end to end through `ray-amalgam`, and their bad-input contract."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ray_amalgam.cli.main import main
from ray_amalgam.io import LISTED_FILES


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("data") / "synth")
    assert main(["data", "synth", "--out", out, "--num-samples", "240", "--shards", "3", "--seed", "1", "--json"]) == 0
    return out


@pytest.fixture(scope="module")
def teacher_dir(synth_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("teacher") / "t")
    code = main(["teachers", "train", "--data", synth_dir, "--tasks", "color,position,attributes", "--arch", "resnet18",
                 "--width", "0.25", "--epochs", "2", "--out", out, "--json"])
    assert code == 0
    return out


def test_synth_then_inspect_reports_rows_shards_and_tasks(capsys, synth_dir):
    code, out, _ = run_cli(capsys, "data", "inspect", synth_dir, "--json")
    info = json.loads(out)
    assert code == 0
    assert info["rows"] == 240 and info["shards"] == 3 and info["image_size"] == [32, 32]
    assert {"shape", "color", "size", "position", "background", "attributes"} <= {t["name"] for t in info["tasks"]}
    assert {"id", "image", "shape", "attributes"} <= set(info["columns"])


def test_teacher_train_json_summary_and_inspect(capsys, teacher_dir):
    code, out, _ = run_cli(capsys, "teachers", "inspect", teacher_dir, "--json")
    info = json.loads(out)
    assert code == 0
    assert info["arch"] == "resnet18" and info["width"] == 0.25
    assert [b["stride"] for b in info["blocks"]] == [4, 8, 16, 32]
    assert [t["name"] for t in info["tasks"]] == ["color", "position", "attributes"]
    assert info["params"] > 100_000


def test_pack_folder_then_inspect(capsys, tmp_path):
    src = tmp_path / "photos"
    (src / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(src / f"a{i}.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(src / "nested" / "b.jpg")
    code, out, _ = run_cli(capsys, "data", "pack", "--from", str(src), "--out", str(tmp_path / "packed"), "--shards", "2", "--json")
    assert code == 0 and json.loads(out)["rows"] == 6
    code, out, _ = run_cli(capsys, "data", "inspect", str(tmp_path / "packed"), "--json")
    assert json.loads(out)["rows"] == 6 and json.loads(out)["image_size"] == [20, 20]


def _mixed_size_folder(tmp_path: Path) -> str:
    src = tmp_path / "mixed"
    src.mkdir()
    Image.new("RGB", (16, 16)).save(src / "a.png")
    Image.new("RGB", (24, 24)).save(src / "b.png")
    return str(src)


def _pickled_teacher(teacher_dir: str, tmp_path: Path) -> str:
    bad = tmp_path / "pickled"
    bad.mkdir()
    meta = json.loads(Path(teacher_dir, "teacher.json").read_text())
    del meta[LISTED_FILES]  # made by hand: no file list to catch the swap first
    (bad / "teacher.json").write_text(json.dumps(meta))
    torch.save({"w": torch.zeros(2)}, bad / "model.safetensors")
    return str(bad)


def _old_version_teacher(teacher_dir: str, tmp_path: Path) -> str:
    bad = tmp_path / "old"
    bad.mkdir()
    meta = json.loads(Path(teacher_dir, "teacher.json").read_text())
    meta["format_version"] = 99
    (bad / "teacher.json").write_text(json.dumps(meta))
    (bad / "model.safetensors").write_bytes(Path(teacher_dir, "model.safetensors").read_bytes())
    return str(bad)


def _corrupt_shards(synth_dir: str, tmp_path: Path) -> str:
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "_dataset.json").write_text(Path(synth_dir, "_dataset.json").read_text())
    (bad / "part-00000.parquet").write_bytes(b"PAR1 this is not parquet")
    return str(bad)


BAD_INPUTS = [
    (lambda s, t, p: ["data", "inspect", str(p / "missing")], "missing/_dataset.json: not found"),
    (lambda s, t, p: ["data", "synth", "--out", str(p / "x"), "--num-samples", "0"], "--num-samples: expected a positive integer"),
    (lambda s, t, p: ["data", "inspect", _corrupt_shards(s, p)], "part-00000.parquet"),
    (lambda s, t, p: ["data", "pack", "--from", str(p / "nowhere"), "--out", str(p / "o")], "nowhere"),
    (lambda s, t, p: ["data", "pack", "--from", _mixed_size_folder(p), "--out", str(p / "o")], "b.png"),
    (lambda s, t, p: ["teachers", "train", "--data", s, "--tasks", "shape", "--arch", "vgg11", "--out", str(p / "o")], "--arch: unknown architecture 'vgg11'"),
    (lambda s, t, p: ["teachers", "train", "--data", s, "--tasks", "shape", "--width", "2", "--out", str(p / "o")], "--width: expected a multiplier in 0.125..1.0"),
    (lambda s, t, p: ["teachers", "train", "--data", s, "--tasks", "smell", "--out", str(p / "o")], "no label column for task 'smell'"),
    (lambda s, t, p: ["teachers", "train", "--data", s, "--tasks", "shape", "--holdout", "1.5", "--out", str(p / "o")], "--holdout: expected a fraction"),
    (lambda s, t, p: ["teachers", "train", "--data", s, "--tasks", ",", "--out", str(p / "o")], "--tasks: expected at least one task name"),
    (lambda s, t, p: ["teachers", "inspect", str(p / "none")], "none"),
    (lambda s, t, p: ["teachers", "inspect", _pickled_teacher(t, p)], "not a safetensors file"),
    (lambda s, t, p: ["teachers", "inspect", _old_version_teacher(t, p)], "format_version"),
    (lambda s, t, p: ["bogus"], "invalid choice: 'bogus'"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_message(capsys, synth_dir, teacher_dir, tmp_path, argv, message):
    code, out, err = run_cli(capsys, *argv(synth_dir, teacher_dir, tmp_path))
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out == ""


def test_real_process_bad_input_has_no_traceback_unless_debug(tmp_path):
    argv = [sys.executable, "-m", "ray_amalgam.cli.main", "data", "inspect", str(tmp_path / "missing")]
    plain = subprocess.run(argv, capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "dataset.json" in plain.stderr
    debug = subprocess.run([*argv, "--debug"], capture_output=True, text=True)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_json_mode_keeps_stdout_for_the_summary_only(capsys, synth_dir, monkeypatch):
    import ray_amalgam.cli.data as data_commands

    real_inspect = data_commands.inspect_dataset

    def chatty_inspect(url):
        print("a library printing to stdout")  # as Ray's raylet warnings do
        return real_inspect(url)

    monkeypatch.setattr(data_commands, "inspect_dataset", chatty_inspect)
    code, out, err = run_cli(capsys, "data", "inspect", synth_dir, "--json")
    assert code == 0 and json.loads(out)["rows"] == 240
    assert "a library printing to stdout" in err


def test_inspect_reports_duplicate_ids(capsys, synth_dir, tmp_path):
    copy = tmp_path / "copied"
    shutil.copytree(synth_dir, copy)
    shutil.copy(copy / "part-00001.parquet", copy / "part-00003.parquet")
    code, out, _ = run_cli(capsys, "data", "inspect", str(copy), "--json")
    info = json.loads(out)
    assert code == 0 and info["rows"] == 320 and info["duplicate_ids"] == 80
    assert [Path(s).name for s in info["duplicate_example"]["shards"]] == ["part-00001.parquet", "part-00003.parquet"]
    code, _, err = run_cli(capsys, "data", "inspect", str(copy))
    assert code == 0 and "duplicate ids" in err and "80" in err
