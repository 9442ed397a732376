"""Ray Data's two Parquet readers, timed in ONE Ray session on the same shards: the v2 reader
(Ray 2.60's default: a pool of FooterReader actors per read) against the v1 reader (footers read in
the read tasks) that `configure_ray_data` chooses. A stream-mode job reads its shards once per
epoch of every stage, so a read's fixed cost is paid many times per job.

    python -m benchmarks.parquet_read [--rows 2048] [--shards 4] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.data

from benchmarks import report
from ray_amalgam.cli.console import print_table
from ray_amalgam.io.synth import synthesize

READ_TASK_CPUS = 0.25  # what the pipeline's read tasks ask for (DATA_TASK_CPUS)


def timed_read(paths: list[str], use_v2: bool) -> tuple[float, float, int]:
    """Seconds to the first batch and to the last, and the rows read."""
    ray.data.DataContext.get_current().use_datasource_v2 = use_v2
    started = time.perf_counter()
    first, rows = None, 0
    for batch in ray.data.read_parquet(paths, num_cpus=READ_TASK_CPUS).iter_batches(batch_size=256):
        first = first if first is not None else time.perf_counter() - started
        rows += len(batch["id"])
    return first or 0.0, time.perf_counter() - started, rows


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        synthesize(str(Path(scratch) / "train"), args.rows, args.shards, seed=0)
        paths = sorted(str(p) for p in (Path(scratch) / "train").glob("*.parquet"))
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        try:
            timed_read(paths, use_v2=False)  # unmeasured: starts Ray's worker processes for both
            runs: dict[str, list[tuple[float, float, int]]] = {"v1": [], "v2": []}
            for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
                runs["v2"].append(timed_read(paths, use_v2=True))
                runs["v1"].append(timed_read(paths, use_v2=False))
        finally:
            ray.shutdown()
    result: dict[str, Any] = {"rows": args.rows, "shards": args.shards, "cpus": args.cpus, "repeats": args.repeats}
    for name, samples in runs.items():
        assert all(rows == args.rows for _, _, rows in samples), f"{name} read the wrong number of rows"
        result[name] = {
            "first_batch_s": statistics.median(s[0] for s in samples),
            "read_s": statistics.median(s[1] for s in samples),
        }
    result["v2_vs_v1_read"] = result["v2"]["read_s"] / result["v1"]["read_s"]
    return result


def show(result: dict[str, Any]) -> None:
    rows = [
        [f"{name} reader", f"{result[name]['first_batch_s']:.2f}", f"{result[name]['read_s']:.2f}"]
        for name in ("v2", "v1")
    ]
    print_table(
        f"read + iterate {result['rows']} rows in {result['shards']} shards, {result['cpus']} Ray CPUs, "
        f"median of {result['repeats']}", ["reader", "first batch s", "whole read s"], rows,
    )
    print(f"v2 / v1 whole read: {result['v2_vs_v1_read']:.1f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2, help="the local Ray's CPUs")
    parser.add_argument("--json", action="store_true")
    report(parser.parse_args(argv), measure, show)


if __name__ == "__main__":
    main()
