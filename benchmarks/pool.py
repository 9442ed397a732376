"""Teacher pools of 4, 16 and 64 tiny teachers, one job choosing the same 3 tasks from each:

- index: `index_pool` over the whole pool (Ray tasks from 8 checkpoints up), then a re-index
  with nothing changed (nothing is read again);
- job: `run_job` with `pool:` in store mode, from the catalogue; only the chosen teachers load
  and run, so its wall time must not grow with the pool (ratio against the 4-teacher pool);
  an unmeasured warm-up index and job run first (worker processes, Ray Train's first start);
- teacher passes: the teachers whose outputs the job computed (one pass over the data each);
- peak memory: of this driver process (ru_maxrss) and of one teacher actor.

    python -m benchmarks.pool [--quick] [--rows 256] [--json]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from benchmarks import report
from ray_amalgam.amalgamation import synthesize_pool
from ray_amalgam.amalgamation.validation import validate_job, with_absolute_paths
from ray_amalgam.cli.console import print_table
from ray_amalgam.distributed import index_pool, run_job
from ray_amalgam.distributed.pipeline import TeacherPools
from ray_amalgam.distributed.resources import plan_resources
from ray_amalgam.io.synth import synthesize
from ray_amalgam.spec import JobSpec

TASKS = ["shape", "color", "position"]
"""Owned within the first 4 teachers of `synthesize_pool`, so every pool offers them."""


def pool_job(root: Path, catalogue: str, output: Path) -> JobSpec:
    return JobSpec.model_validate({
        "pool": catalogue,
        "tasks": TASKS,
        "data": {"train": str(root / "train"), "eval": str(root / "eval")},
        "student": {"width": 0.25, "branch_out": {t: 4 for t in TASKS}},
        "schedule": {"stage_epochs": 1, "finetune_epochs": 1, "batch_size": 32},
        "resources": {"teacher_batch_size": 64},
        "output": str(output),
    })


def driver_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def actor_peak_bytes(job: JobSpec) -> int:
    """Peak memory of one teacher actor of the job after a batch (an actor holds one teacher only)."""
    plan = validate_job(with_absolute_paths(job), "benchmark")
    name = next(iter(plan.teachers))
    plan = plan.__class__(**{**plan.__dict__, "checkpoints": {name: plan.checkpoints[name]}})
    with TeacherPools(plan, plan_resources(job, 1, local=True), 1, None) as pools:
        actor = pools.actors[name][0]
        pixels = np.zeros((64, plan.input_size, plan.input_size, 3), dtype=np.uint8)
        ray.get(actor.outputs.remote(pixels))
        return ray.get(actor.peak_memory_bytes.remote())


def measure(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="ra_pool_bench_"))
    sizes = [4, 16] if args.quick else [4, 16, 64]
    try:
        synthesize(str(root / "train"), args.rows, 2, seed=0, image_size=16)
        synthesize(str(root / "eval"), 64, 1, seed=1, image_size=16)
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
        # Warm-up, unmeasured: the first Ray index and the first job of a process pay for worker
        # processes importing torch and Ray Train's first start, which no later pool would.
        started = time.perf_counter()
        synthesize_pool(str(root / "warmup"), 8, seed=1)
        warm = index_pool(str(root / "warmup"), use_ray=True)
        run_job(pool_job(root, warm["catalogue"], root / "job_warmup"), source="benchmark warm-up")
        warmup_s = time.perf_counter() - started
        pools = []
        for size in sizes:
            prefix = root / f"pool_{size}"
            synthesize_pool(str(prefix), size)
            started = time.perf_counter()
            indexed = index_pool(str(prefix))
            index_s = time.perf_counter() - started
            started = time.perf_counter()
            reindexed = index_pool(str(prefix))
            reindex_s = time.perf_counter() - started
            job = pool_job(root, indexed["catalogue"], root / f"job_{size}")
            started = time.perf_counter()
            report = run_job(job, source=f"benchmark pool {size}")
            job_s = time.perf_counter() - started
            pools.append({
                "teachers": size, "index_s": round(index_s, 2), "index_on_ray": indexed["ray"],
                "reindex_s": round(reindex_s, 2), "reindex_read": len(reindexed["read"]),
                "job_s": round(job_s, 2), "store_s": report["store_seconds"], "fit_s": report["fit_seconds"],
                "chosen": report["teacher_selection"]["teachers"],
                "teacher_passes": len(report["store_computed"]),
                "driver_peak_mb": round(driver_peak_bytes() / 2**20),
                "actor_peak_mb": round(actor_peak_bytes(job) / 2**20),
            })
        base = pools[0]["job_s"]
        for row in pools:
            row["job_vs_smallest"] = round(row["job_s"] / base, 2)
        return {"rows": args.rows, "tasks": TASKS, "warmup_s": round(warmup_s, 2), "pools": pools}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256, help="training rows")
    parser.add_argument("--quick", action="store_true", help="pools of 4 and 16 only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    def show(result: dict[str, Any]) -> None:
        print_table(
            f"teacher pools, one job on {', '.join(TASKS)} ({args.rows} rows, store mode, one run)",
            ["teachers", "index s", "re-index s (read)", "job s", "of it: store s", "fit s", "job / 4-pool job", "chosen", "teacher passes", "driver peak MB", "actor peak MB"],
            [[p["teachers"], p["index_s"], f"{p['reindex_s']} ({p['reindex_read']})", p["job_s"], p["store_s"], p["fit_s"], p["job_vs_smallest"],
              ", ".join(p["chosen"]), p["teacher_passes"], p["driver_peak_mb"], p["actor_peak_mb"]] for p in result["pools"]],
        )

    report(args, measure, show)

if __name__ == "__main__":
    main()
