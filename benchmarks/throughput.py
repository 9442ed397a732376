"""Training samples/s on block stage 1 and on finetune, in ONE run, same data/student/batch size:

(a) ceiling: teacher targets precomputed in memory, one process, no Ray, no teacher forward;
(b) naive: one process, the teachers run inside every training step;
(c) stream: this project's Ray pipeline, teachers live in actor pools every epoch;
(d) store: this project's Ray pipeline reading the teacher-output store (steady state), and the
    store's one-time teacher pass amortized over a 5-epoch job.

    python benchmarks/throughput.py [--rows 2048] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ray_amalgam.amalgamation import (
    FINETUNE,
    Amalgamator,
    compute_targets,
    load_pool,
    teacher_outputs,
)
from ray_amalgam.amalgamation.runner import iter_rows
from ray_amalgam.amalgamation.supervised import load_labelled
from ray_amalgam.distributed import run_job
from ray_amalgam.io.checkpoints import save_teacher
from ray_amalgam.io.images import to_tensor
from ray_amalgam.io.synth import SYNTH_TASKS, synthesize
from ray_amalgam.models import build_teacher
from ray_amalgam.spec import BackboneSpec, JobSpec, TeacherMeta

TEACHERS = {"A": ("shape", "color", "size"), "B": ("position", "background", "attributes")}
JOB_EPOCHS = 5


def prepare(root: Path, rows: int, image_size: int) -> None:
    synthesize(str(root / "train"), rows, 4, seed=0, image_size=image_size)
    synthesize(str(root / "eval"), 128, 1, seed=1, image_size=image_size)
    by_name = {t.name: t for t in SYNTH_TASKS}
    for seed, (name, tasks) in enumerate(TEACHERS.items()):
        meta = TeacherMeta(backbone=BackboneSpec(arch="resnet18", width=0.5), tasks=tuple(by_name[t] for t in tasks), input_size=image_size)
        torch.manual_seed(seed)
        save_teacher(str(root / f"teacher_{name}"), build_teacher(meta).state_dict(), meta)


def make_job(root: Path, mode: str, batch: int) -> JobSpec:
    return JobSpec.model_validate({
        "teachers": [{"name": n, "checkpoint": str(root / f"teacher_{n}")} for n in TEACHERS],
        "tasks": ["shape", "position"],
        "data": {"train": str(root / "train"), "eval": str(root / "eval")},
        # Manual branch points: every mode trains the same entangled tails in the same stages.
        "student": {"width": 0.25, "branch_out": {"shape": 4, "position": 4}},
        "schedule": {"batch_size": batch},
        "teacher_outputs": mode,
        "resources": {"teacher_batch_size": 256},
        "output": str(root / f"out_{mode}"),
    })


def in_process(job: JobSpec, naive: bool) -> dict[str, float]:
    """Steady samples/s of block1 and finetune in one process (first batch excluded)."""
    torch.manual_seed(0)
    plan, teachers = load_pool(job)
    images = load_labelled(job.data.train, []).images
    targets = {} if naive else compute_targets(plan, teachers, images, torch.device("cpu"))
    engine = Amalgamator(plan, teachers, job, torch.device("cpu"))
    rows = np.arange(len(images))
    rates = {}
    for stage in engine.stage_names():
        if stage in ("block1", FINETUNE):
            done, started = 0, None
            for batch in iter_rows(images, targets, rows, job.schedule.batch_size):
                if naive:
                    for name, teacher in teachers.items():
                        meta = plan.teachers[name]
                        batch.update(teacher_outputs(teacher, name, to_tensor(batch["image"], meta.mean, meta.std), plan))
                engine.train_step(batch)
                if started is None:
                    started = time.perf_counter()
                else:
                    done += len(batch["image"])
            rates[stage] = done / (time.perf_counter() - started)
        engine.finish_stage(stage, {})
    return rates


def ray_rates(report: dict[str, Any], root: Path, mode: str) -> dict[str, Any]:
    epochs = json.loads((root / f"out_{mode}" / "metrics.json").read_text())["epochs"]
    by_stage = {e["stage"]: e for e in epochs}
    return {
        "block1": by_stage["block1"]["steady_samples_per_s"],
        FINETUNE: by_stage[FINETUNE]["steady_samples_per_s"],
        "first_batch_s": by_stage["block1"]["first_batch_s"],
        "ray_start_s": report["ray_start_seconds"],
        "fit_s": report["fit_seconds"],
        "store_pass_s": report.get("store_seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(root, args.rows, args.image_size)
        ceiling = in_process(make_job(root, "store", args.batch_size), naive=False)
        naive = in_process(make_job(root, "store", args.batch_size), naive=True)
        stream = ray_rates(run_job(make_job(root, "stream", args.batch_size), "bench"), root, "stream")
        store = ray_rates(run_job(make_job(root, "store", args.batch_size), "bench"), root, "store")
    train_rows = args.rows  # per-epoch rows (the hold-out share is small; same for both sides)
    store_job_s = store["store_pass_s"] + JOB_EPOCHS * train_rows / store[FINETUNE]
    naive_job_s = JOB_EPOCHS * train_rows / naive[FINETUNE]
    result = {
        "samples_per_s": {"ceiling": ceiling[FINETUNE], "naive": naive[FINETUNE], "stream": stream[FINETUNE], "store": store[FINETUNE]},
        "ratios": {
            "stream_vs_ceiling": stream[FINETUNE] / ceiling[FINETUNE],
            "store_vs_ceiling": store[FINETUNE] / ceiling[FINETUNE],
            "stream_vs_naive": stream[FINETUNE] / naive[FINETUNE],
            "store_job_vs_naive": naive_job_s / store_job_s,
        },
        "fixed_costs_s": {
            "ray_start": store["ray_start_s"],
            "first_batch_stream": stream["first_batch_s"],
            "first_batch_store": store["first_batch_s"],
            "store_teacher_pass": store["store_pass_s"],
            "fit_stream": stream["fit_s"],
            "fit_store": store["fit_s"],
        },
        "block1_samples_per_s": {"ceiling": ceiling["block1"], "naive": naive["block1"], "stream": stream["block1"], "store": store["block1"]},
        "setup": {"rows": args.rows, "image_size": args.image_size, "batch_size": args.batch_size, "job_epochs": JOB_EPOCHS,
                  "teachers": "2 x resnet18 x0.5", "student": "resnet18 x0.25", "train_workers": 1},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"rows={args.rows} image={args.image_size}px batch={args.batch_size}")
    for stage, key in (("block1", "block1_samples_per_s"), ("finetune", "samples_per_s")):
        print(f"{stage:9s} " + "  ".join(f"{k} {v:8.1f}/s" for k, v in result[key].items()))
    print("ratios   " + "  ".join(f"{k} {v:.2f}" for k, v in result["ratios"].items()))
    print("fixed s  " + "  ".join(f"{k} {v:.1f}" for k, v in result["fixed_costs_s"].items()))


if __name__ == "__main__":
    main()
