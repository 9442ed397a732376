"""A store job's data load, the two routes timed in ONE Ray session on the same store: Ray Data
tasks (read and join, split off the held-out rows, decode; each materialized), which a joined
cluster uses, against the driver reading, splitting and decoding the rows itself, which a
one-node job whose rows fit in memory uses. Both end with the training and check rows in the
object store; the train workers then read the driver's blocks directly (`DriverRows`) and
Ray Data's through a Ray Data pipeline.

    python -m benchmarks.store_load [--rows 32768] [--repeats 2] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from benchmarks import report
from benchmarks.throughput import TEACHERS, make_job, prepare
from ray_amalgam.amalgamation.validation import validate_job, with_absolute_paths
from ray_amalgam.cli.console import print_table
from ray_amalgam.distributed import connect
from ray_amalgam.distributed.pipeline import decoded_in_driver
from ray_amalgam.distributed.runner import configure_ray_data, split_and_decode
from ray_amalgam.distributed.store import ensure_store, read_store, store_tables, target_columns
from ray_amalgam.io.shards import ID, IMAGE


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        prepare(root, args.rows, 32)
        job = with_absolute_paths(make_job(root, "store", 64))
        plan = validate_job(job, "bench")
        resources = connect(job, len(TEACHERS), None)
        configure_ray_data(job, plan)
        batch = job.resources.teacher_batch_size
        try:
            started = time.perf_counter()
            store = ensure_store(job, plan, "train", job.data.train, str(root / "store"), resources, [], None)
            pass_s = time.perf_counter() - started
            columns = [ID, IMAGE, *target_columns(plan)]

            def ray_data() -> tuple[Any, Any]:
                rows = read_store(store, columns, resources, batch).materialize()
                return (split_and_decode(rows, store.url, False, resources, batch).materialize(),
                        split_and_decode(rows, store.url, True, resources, batch).materialize())

            def driver() -> tuple[Any, Any]:
                return decoded_in_driver(store_tables(store, columns, batch), True, job.resources.num_workers)

            read_store(store, [ID], resources, batch).materialize()  # unmeasured: starts Ray Data's worker processes
            times: dict[str, list[float]] = {"ray_data": [], "driver": []}
            counts: dict[str, tuple[int, int]] = {}
            for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
                for name, load in (("ray_data", ray_data), ("driver", driver)):
                    started = time.perf_counter()
                    train, check = load()
                    times[name].append(time.perf_counter() - started)
                    counts[name] = (train.count(), check.count())
                    del train, check
        finally:
            ray.shutdown()
    assert counts["ray_data"] == counts["driver"], f"the routes kept different rows: {counts}"
    result: dict[str, Any] = {"rows": args.rows, "repeats": args.repeats, "store_pass_s": pass_s,
                              "train_rows": counts["driver"][0], "check_rows": counts["driver"][1]}
    for name, samples in times.items():
        result[name] = {"load_s": statistics.median(samples), "runs_s": samples}
    result["driver_vs_ray_data"] = result["ray_data"]["load_s"] / result["driver"]["load_s"]
    return result


def show(result: dict[str, Any]) -> None:
    rows = [[name, f"{result[name]['load_s']:.2f}"] for name in ("ray_data", "driver")]
    print_table(f"load {result['rows']} stored rows, median of {result['repeats']}", ["route", "load s"], rows)
    print(f"{result['train_rows']} training and {result['check_rows']} check rows; the store pass took {result['store_pass_s']:.1f} s")
    print(f"driver route: {result['driver_vs_ray_data']:.1f}x faster than Ray Data's")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    report(parser.parse_args(argv), measure, show)


if __name__ == "__main__":
    main()
