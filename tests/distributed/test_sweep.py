"""`ray-amalgam sweep` on the session's local Ray: one teacher pass for a whole sweep, a killed
sweep resumed without rerunning finished trials, ASHA stopping a bad trial, bad sweep specs."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from ray_amalgam.cli.main import main

from .conftest import job_dict


def _write_sweep(path: Path, pool: Path, output: Path, **fields: Any) -> Path:
    spec = {"base": job_dict(pool, output), **fields}
    path.write_text(yaml.safe_dump(spec))
    return path


def _run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    """Exit code, the JSON document, stderr. Ray's log thread in this test process may print
    raylet warnings to stdout before the document (the program's own stdout is kept for it alone)."""
    code = main(args)
    captured = capsys.readouterr()
    start = captured.out.find("{\n")
    return code, json.loads(captured.out[start:]) if start >= 0 else None, captured.err


def _terminated_trials(tune_dir: Path) -> list[str]:
    """Trials Tune's saved experiment state records as finished (what a restore will not rerun)."""
    finished = []
    for state_file in glob.glob(str(tune_dir / "experiment_state-*.json")):
        try:
            state = json.loads(Path(state_file).read_text())
        except json.JSONDecodeError:
            continue  # caught mid-write
        for trial_json, _ in state["trial_data"]:
            trial = json.loads(trial_json)
            if trial["status"] == "TERMINATED":
                finished.append(trial["trial_id"])
    return finished


@pytest.mark.timeout(600)
def test_killed_sweep_resumes_with_one_teacher_pass(ray_cluster, pool, tmp_path, capsys):
    """2 widths x 2 task subsets; the driver is killed once a trial finished, --resume runs the
    rest. The store is built once; no trial runs a teacher; the finished trial is not rerun."""
    out = tmp_path / "sweep"
    spec = _write_sweep(tmp_path / "sweep.yaml", pool, out, searcher="grid", scheduler="fifo",
                        axes={"width": [0.25, 0.5], "tasks": [["shape"], ["shape", "position"]]})
    driver = subprocess.Popen([sys.executable, "-m", "ray_amalgam.cli.main", "sweep", str(spec), "--address", ray_cluster, "--json"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (first := _terminated_trials(out / "tune")):
            assert driver.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no trial finished"
            time.sleep(0.5)
    finally:
        driver.kill()
        driver.wait()
    first_report = out / "trials" / first[0] / "report.json"
    written = first_report.stat().st_mtime_ns

    code, summary, _ = _run_cli(["sweep", str(spec), "--resume", "--json"], capsys)
    assert code == 0, summary
    assert summary["trials"] == summary["finished"] == 4 and summary["trial_run"] == "in_process"
    assert first_report.stat().st_mtime_ns == written, "a finished trial ran again"
    assert summary["store_passes"] == 1 and summary["teacher_passes_per_sample"] == 1
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    assert sorted((r["tasks"], r["width"]) for r in rows) == [("shape", 0.25), ("shape", 0.5), ("shape+position", 0.25), ("shape+position", 0.5)]
    for row in rows:
        assert row["teacher_batches"] == 0 and row["teacher_passes"] == 0, "a trial ran a teacher"
        assert (Path(row["student"]) / "student.json").exists()
        assert not (out / "trials" / row["trial_id"] / "ray_train").exists(), "stage checkpoints outlive the sweep"
        assert row["fidelity/shape"] is not None and row["params"] > 0 and row["latency_ms"] > 0
    for name in ("trials.csv", "report.md", "pareto.png", "summary.json"):
        assert (out / name).exists(), name
    assert summary["pareto"] and set(summary["pareto"]) <= {r["trial_id"] for r in rows}

    (out / "pareto.png").unlink()
    code, rendered, _ = _run_cli(["sweep-report", str(out), "--json"], capsys)
    assert code == 0 and len(rendered["trial_rows"]) == 4 and (out / "pareto.png").exists()


@pytest.mark.timeout(420)
def test_asha_stops_a_diverging_trial_early(ray_cluster, pool, tmp_path, capsys):
    """A sane learning rate runs first; an absurd one is stopped before it finishes. Five epochs
    a stage: with one, neither student learns enough to tell them apart on 16 held-out rows."""
    out = tmp_path / "sweep"
    spec = _write_sweep(tmp_path / "sweep.yaml", pool, out, searcher="grid", scheduler="asha", max_concurrent_trials=1,
                        axes={"lr": {"choice": [3e-3, 1e6]}})
    job = yaml.safe_load(spec.read_text())
    job["base"]["schedule"]["stage_epochs"] = 5
    spec.write_text(yaml.safe_dump(job))
    code, summary, _ = _run_cli(["sweep", str(spec), "--json"], capsys)
    assert code == 0, summary
    rows = {r["lr"]: r for r in pq.read_table(out / "trials.parquet").to_pylist()}
    assert rows[3e-3]["status"] == "finished"
    assert rows[1e6]["status"] == "stopped" and rows[1e6]["stage"] != "finetune"
    assert rows[1e6].get("student") is None and not (out / "trials" / rows[1e6]["trial_id"] / "student").exists()


@pytest.mark.timeout(420)
def test_a_two_worker_trial_trains_on_ray_train_from_the_shared_store(ray_cluster, pool, tmp_path, capsys):
    """One-CPU-worker trials train in their own process (the tests above); a trial of two workers
    is a Ray Train run that reads the sweep's store and runs no teacher."""
    out = tmp_path / "sweep"
    spec = _write_sweep(tmp_path / "sweep.yaml", pool, out, searcher="grid", scheduler="fifo", axes={"tasks": [["shape"]]})
    job = yaml.safe_load(spec.read_text())
    job["base"]["resources"]["num_workers"] = 2
    spec.write_text(yaml.safe_dump(job))
    code, summary, _ = _run_cli(["sweep", str(spec), "--json"], capsys)
    assert code == 0, summary
    assert summary["trial_run"] == "store" and summary["finished"] == 1 and summary["teacher_passes_per_sample"] == 1
    [row] = pq.read_table(out / "trials.parquet").to_pylist()
    assert row["teacher_batches"] == 0 and row["teacher_passes"] == 0
    report = json.loads((out / "trials" / row["trial_id"] / "report.json").read_text())
    assert report["train_workers"] == 2 and report["all_epochs_ids_exact"]


@pytest.mark.timeout(420)
def test_optuna_searcher_draws_every_trial_within_its_ranges(ray_cluster, pool, tmp_path, capsys):
    """The model-based searcher (Optuna's TPE) proposes the trials: a continuous and a discrete axis."""
    out = tmp_path / "sweep"
    spec = _write_sweep(tmp_path / "sweep.yaml", pool, out, searcher="optuna", scheduler="fifo", num_samples=2,
                        axes={"lr": {"loguniform": [1e-3, 1e-2]}, "width": [0.25, 0.5]})
    code, summary, _ = _run_cli(["sweep", str(spec), "--json"], capsys)
    assert code == 0, summary
    assert summary["searcher"] == "optuna" and summary["trials"] == summary["finished"] == 2
    rows = pq.read_table(out / "trials.parquet").to_pylist()
    assert all(1e-3 <= row["lr"] <= 1e-2 and row["width"] in (0.25, 0.5) for row in rows)
    assert rows[0]["lr"] != rows[1]["lr"], "both trials got the same draw"


BAD_SPECS = {
    "unknown task": ({"axes": {"tasks": [["shape", "colour"]]}}, "axes.tasks: no teacher owns task 'colour'"),
    "empty subset": ({"axes": {"tasks": [["shape"], []]}}, "axes.tasks: "),
    "width out of range": ({"axes": {"width": {"min": 0.5, "max": 1.5, "step": 0.5}}}, "axes.width: "),
    "unknown searcher": ({"searcher": "bayes"}, "searcher: "),
    "unknown scheduler": ({"scheduler": "pbt"}, "scheduler: "),
    "metric naming no task": ({"metric": "fidelity/colour"}, "metric: "),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_sweep_spec_is_one_line_and_exit_2(pool, tmp_path, capsys, case):
    fields, expected = BAD_SPECS[case]
    spec = _write_sweep(tmp_path / "sweep.yaml", pool, tmp_path / "out", **fields)
    code, document, err = _run_cli(["sweep", str(spec), "--json"], capsys)
    assert code == 2
    assert document["exit_code"] == 2 and expected in document["error"] and str(spec) in document["error"]
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
