"""One sweep of N trials (widths x task subsets), three ways, on the same data and teachers:

(a) store: `run_sweep` with one teacher-output store for the union of the tasks, shared by every trial;
(b) stream: `run_sweep` with `teacher_outputs: stream`, the teachers running in every trial (in its
    first epoch: the train worker replays the answered rows in later ones);
(c) sequential: the N jobs one after another with `amalgamate` (one process, no Ray; each job runs
    its teachers once over the data).

Prints wall times, teacher forward passes per sample for the whole sweep, and the ratios
(how many times longer the other way took than the shared store).

    python -m benchmarks.sweep [--rows 4096] [--image-size 32] [--widths 0.25,0.5] [--skip stream] [--json]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.throughput import make_job, prepare
from ray_amalgam.amalgamation.runner import amalgamate_local
from ray_amalgam.cli.console import print_table
from ray_amalgam.spec.sweep import SweepSpec
from ray_amalgam.tune import run_sweep
from ray_amalgam.tune.space import job_for_tasks

SUBSETS = [["shape"], ["position"], ["shape", "position"]]


def sweep_spec(root: Path, mode: str, widths: list[float], batch_size: int) -> SweepSpec:
    base = make_job(root, mode, batch_size).model_copy(update={"output": str(root / f"sweep_{mode}")})
    return SweepSpec.model_validate({
        "base": base.model_dump(mode="json"), "axes": {"width": widths, "tasks": SUBSETS}, "searcher": "grid", "scheduler": "fifo",
    })


def sweep_way(root: Path, mode: str, widths: list[float], batch_size: int) -> dict[str, Any]:
    started = time.perf_counter()
    summary = run_sweep(sweep_spec(root, mode, widths, batch_size), source=f"benchmark {mode}")
    assert summary["finished"] == summary["trials"], summary
    return {"seconds": time.perf_counter() - started, "trials": summary["trials"], "teacher_passes_per_sample": summary["teacher_passes_per_sample"]}


def sequential_way(root: Path, widths: list[float], batch_size: int) -> dict[str, Any]:
    base = make_job(root, "store", batch_size)
    started = time.perf_counter()
    jobs = [job_for_tasks(base, tuple(s), str(root / f"sequential_{i}"), width=w)
            for i, (w, s) in enumerate((w, s) for w in widths for s in SUBSETS)]
    for job in jobs:
        amalgamate_local(job, source="benchmark sequential")
    # Each job computes its teachers' targets over the training data once.
    return {"seconds": time.perf_counter() - started, "trials": len(jobs), "teacher_passes_per_sample": float(len(jobs))}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    widths = [float(w) for w in args.widths.split(",")]
    root = Path(tempfile.mkdtemp(prefix="ra_sweep_bench_"))
    try:
        prepare(root, args.rows, args.image_size, teacher_width=0.25)
        runs = {
            "store": lambda: sweep_way(root, "store", widths, args.batch_size),
            "stream": lambda: sweep_way(root, "stream", widths, args.batch_size),
            "sequential": lambda: sequential_way(root, widths, args.batch_size),
        }
        ways = {name: run() for name, run in runs.items() if name == "store" or name not in args.skip}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    store = ways["store"]["seconds"]
    return {
        "rows": args.rows,
        "trials": ways["store"]["trials"],
        "ways": ways,
        "teacher_passes_per_sample": ways["store"]["teacher_passes_per_sample"],
        "ratios": {f"store_vs_{name}": way["seconds"] / store for name, way in ways.items() if name != "store"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--widths", default="0.25,0.5", help="comma-separated student widths (x 3 task subsets = trials)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["stream", "sequential"],
                        help="ways left out (the stream sweep takes many minutes at larger sizes); the store sweep always runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    def show(result: dict[str, Any]) -> None:
        print_table(f"sweep of {result['trials']} trials, {args.rows} rows", ["way", "seconds", "teacher passes / sample", "x store time"], [
            [name, way["seconds"], way["teacher_passes_per_sample"], way["seconds"] / result["ways"]["store"]["seconds"]]
            for name, way in result["ways"].items()
        ])

    report(args, measure, show)


if __name__ == "__main__":
    main()
