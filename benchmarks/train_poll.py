"""Whole store-job time with Ray Train's controller polling its workers every 2 s (Ray's default)
and every `TRAIN_POLL_S` (what a local Ray started by this package uses), in ONE run: each job in
a fresh process with its own local Ray, the two settings taking turns.

    python -m benchmarks.train_poll [--rows 2048] [--repeats 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RAY_DEFAULT_POLL_S = 2.0


def one_job(root: Path, batch_size: int) -> dict[str, Any]:
    """Start a local Ray, run the store job, and return its timings (runs in a child process)."""
    from benchmarks.throughput import TEACHERS, fixed_costs, make_job
    from ray_amalgam.distributed import connect, run_job

    job = make_job(root, "store", batch_size).model_copy(update={"output": str(root / f"out_store_{os.getpid()}")})
    started = time.perf_counter()
    connect(job, len(TEACHERS), None)
    ray_start_s = time.perf_counter() - started
    report = run_job(job, "bench")
    metrics = json.loads((Path(job.output) / "metrics.json").read_text())
    costs = fixed_costs(report, metrics["epochs"], metrics["timeline"])
    return {"job_s": ray_start_s + report["seconds"], "fit_s": report["fit_seconds"],
            "worker_start_s": costs["worker_start_s"], "after_last_report_s": costs["after_last_report_s"]}


def run_child(root: Path, poll_s: float, batch_size: int) -> dict[str, Any]:
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(poll_s)}
    command = [sys.executable, "-m", "benchmarks.train_poll", "--child", str(root), "--batch-size", str(batch_size)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="jobs per setting (they alternate)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_job(Path(args.child), args.batch_size)))
        return
    from benchmarks.throughput import prepare
    from ray_amalgam.distributed.resources import TRAIN_POLL_S

    settings = {"ray_default": RAY_DEFAULT_POLL_S, "ours": TRAIN_POLL_S}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(root, args.rows, 32)
        for repeat in range(args.repeats):
            for name, poll_s in settings.items():
                runs[name].append(run_child(root, poll_s, args.batch_size))
                print(f"{name} (poll {poll_s} s) #{repeat + 1}: {json.dumps(runs[name][-1])}", file=sys.stderr, flush=True)
    medians = {name: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for name, rows in runs.items()}
    result = {
        "poll_s": settings,
        "median_s": medians,
        "ratios": {"job_default_vs_ours": medians["ray_default"]["job_s"] / medians["ours"]["job_s"]},
        "runs": runs,
        "setup": {"rows": args.rows, "batch_size": args.batch_size, "repeats": args.repeats},
    }
    if args.json:
        print(json.dumps(result))
        return
    for name, figures in medians.items():
        print(f"{name:12s} poll {settings[name]} s  " + "  ".join(f"{k} {v:.1f}" for k, v in figures.items()))
    print(f"job time, Ray's default over ours: {result['ratios']['job_default_vs_ours']:.2f}")


if __name__ == "__main__":
    main()
