"""Training samples/s and whole-job wall time, in ONE run, same data/student/batch size:

(a) ceiling: teacher targets precomputed in memory (on the device), one process, no Ray;
(b) naive: one process, the teachers run inside every training step: the plain loop a user
    would otherwise write, timed as a whole job (data load + every stage);
(c) stream: this project's Ray pipeline, teachers in long-lived actors answer the first epoch
    (later epochs replay the answered rows from the train worker's memory);
(d) store: this project's Ray pipeline reading the teacher-output store;
(e) local: `ray-amalgam amalgamate`, this project's in-process command (one teacher pass, then
    every stage on targets in memory), timed as a whole job like the Ray jobs (evaluation and
    report included): what a one-machine user can run instead of `run`.

Also: where the Ray jobs' fixed cost goes (Ray start, store pass, worker start, per-stage
model preparation, first batch, fidelity check, checkpoint report, shutdown), Ray Train's own
floor (an empty training loop's start and whole run in the same Ray) and, on CUDA, the GPU
utilization sampled during each job's training.

    python benchmarks/throughput.py [--rows 2048] [--device cpu|cuda] [--repeats N] [--json]

`--repeats N` measures every side N times in one run (Ray restarted each time) and reports each
ratio's median and range: on a shared 2-core host one run's ratios swing by up to 30%.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch

from ray_amalgam.amalgamation import (
    FINETUNE,
    Amalgamator,
    amalgamate_local,
    compute_targets,
    load_pool,
    teacher_outputs,
)
from ray_amalgam.amalgamation.supervised import load_labelled
from ray_amalgam.cli.console import print_json, stdout_reserved_for_json
from ray_amalgam.distributed import connect, run_job
from ray_amalgam.io.checkpoints import save_teacher
from ray_amalgam.io.synth import SYNTH_TASKS, synthesize
from ray_amalgam.models import build_teacher
from ray_amalgam.spec import BackboneSpec, JobSpec, TeacherMeta

TEACHERS = {"A": ("shape", "color", "size"), "B": ("position", "background", "attributes")}
JOB_EPOCHS = 5
"""Four block stages and finetune, one epoch each: what every job below trains."""


def prepare(root: Path, rows: int, image_size: int, teacher_width: float = 0.5) -> None:
    synthesize(str(root / "train"), rows, 4, seed=0, image_size=image_size)
    synthesize(str(root / "eval"), 128, 1, seed=1, image_size=image_size)
    by_name = {t.name: t for t in SYNTH_TASKS}
    for seed, (name, tasks) in enumerate(TEACHERS.items()):
        meta = TeacherMeta(
            backbone=BackboneSpec(arch="resnet18", width=teacher_width), tasks=tuple(by_name[t] for t in tasks), input_size=image_size,
        )
        torch.manual_seed(seed)
        save_teacher(str(root / f"teacher_{name}"), build_teacher(meta).state_dict(), meta)


def make_job(root: Path, mode: str, batch_size: int, device: str = "cpu", student_width: float = 0.25) -> JobSpec:
    gpu = {"gpus_per_worker": 0.5, "teacher_gpu_fraction": 0.1, "teacher_actors": {"min": 1, "max": 2}} if device == "cuda" else {}
    return JobSpec.model_validate({
        "teachers": [{"name": n, "checkpoint": str(root / f"teacher_{n}")} for n in TEACHERS],
        "tasks": ["shape", "position"],
        "data": {"train": str(root / "train"), "eval": str(root / "eval")},
        # Manual branch points: every mode trains the same entangled tails in the same stages.
        "student": {"width": student_width, "branch_out": {"shape": 4, "position": 4}},
        "schedule": {"stage_epochs": 1, "finetune_epochs": 1, "batch_size": batch_size},
        "teacher_outputs": mode,
        "resources": {"teacher_batch_size": 256, **gpu},
        "output": str(root / f"out_{mode}"),
    })


def job_for(root: Path, mode: str, args: argparse.Namespace) -> JobSpec:
    return make_job(root, mode, args.batch_size, args.device, args.student_width)


class GpuSampler:
    """GPU utilization (%) every 0.25 s from nvidia-smi, with wall-clock times; empty without a GPU."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None and torch.cuda.is_available()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, check=False).stdout.split()
            if out:
                self.samples.append((time.time(), float(out[0])))

    def mean(self, start: float, end: float) -> float | None:
        inside = [u for t, u in self.samples if start <= t <= end]
        return round(sum(inside) / len(inside), 1) if inside else None

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def _normalized(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.permute(0, 3, 1, 2).float().div(255.0) - m) / s


def in_process(job: JobSpec, naive: bool, device: torch.device) -> dict[str, Any]:
    """One process, every stage one epoch: steady samples/s of every stage (first batch excluded),
    and the whole job's wall time from loading the data to the last step."""
    started_at = time.time()
    torch.manual_seed(0)
    plan, teachers = load_pool(job)
    images_np = load_labelled(job.data.train, []).images
    targets = {} if naive else {k: v.to(device) for k, v in compute_targets(plan, teachers, images_np, device).items()}
    images = torch.from_numpy(images_np).to(device)
    engine = Amalgamator(plan, teachers, job, device)
    order = torch.arange(len(images), device=device)
    rates: dict[str, float] = {}
    for stage in engine.stage_names():
        done, started = 0, None
        for start in range(0, len(order), job.schedule.batch_size):
            rows = order[start : start + job.schedule.batch_size]
            batch: dict[str, Any] = {"image": images[rows], **{k: v[rows] for k, v in targets.items()}}
            if naive:
                for name, teacher in engine.teachers.items():
                    meta = plan.teachers[name]
                    with torch.autocast(device.type, enabled=device.type == "cuda"):
                        batch.update(teacher_outputs(teacher, name, _normalized(batch["image"], meta.mean, meta.std), plan))
            engine.train_step(batch)
            if started is None:
                started = time.perf_counter()
            else:
                done += len(rows)
        rates[stage] = done / (time.perf_counter() - started)
        engine.finish_stage(stage, {})
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"block1": rates["block1"], FINETUNE: rates[FINETUNE], "stages": rates, "job_s": time.time() - started_at, "started_at": started_at}


def local_job(root: Path, args: argparse.Namespace) -> dict[str, float]:
    """`ray-amalgam amalgamate` on the same rows, stages and batch size: its whole wall time."""
    job = job_for(root, "store", args)
    started_at = time.time()
    amalgamate_local(job.model_copy(update={"output": str(root / "out_local")}), source="bench")
    return {"job_s": time.time() - started_at, "started_at": started_at}


def in_process_gpu_util(side: dict[str, float], sampler: GpuSampler) -> float | None:
    return sampler.mean(side["started_at"], side["started_at"] + side["job_s"])


def _timeline(root: Path, mode: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    metrics = json.loads((root / f"out_{mode}" / "metrics.json").read_text())
    return metrics["epochs"], metrics["timeline"]


def fixed_costs(report: dict[str, Any], epochs: list[dict[str, Any]], timeline: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a Ray job's time goes besides the steady training steps."""
    spans = [e for e in timeline if e["seconds"] is not None]
    by_event: dict[str, float] = {}
    for event in spans:
        by_event[event["event"]] = by_event.get(event["event"], 0.0) + event["seconds"]
    started = next(e["at_s"] for e in timeline if e["event"] == "worker_started")
    return {
        "data_s": report["data_seconds"],
        "store_pass_s": report.get("store_seconds"),
        "store_load_s": report.get("store_load_seconds"),
        "worker_start_s": started,
        "setup_s": round(by_event.get("setup", 0.0), 2),
        # A worker reading the driver's rows waits for them after its setup (0 when Ray Train's
        # controller waited for them before the worker started).
        "wait_for_rows_s": round(by_event.get("wait_for_rows", 0.0), 2),
        "prepare_model_s": round(by_event.get("prepare_model", 0.0), 2),
        "first_batch_s": round(sum(e["first_batch_s"] for e in epochs), 2),
        "first_batch_max_s": max(e["first_batch_s"] for e in epochs),
        "fidelity_s": round(by_event.get("fidelity", 0.0), 2),
        "report_s": round(by_event.get("report", 0.0), 2),
        "after_last_report_s": round(report["fit_seconds"] - max(e["at_s"] for e in timeline), 2),
        "fit_s": report["fit_seconds"],
    }


def _empty_loop(config: dict[str, Any]) -> None:
    Path(config["mark"]).write_text(str(time.time()))  # Train V2 keeps metrics only with checkpoints


def ray_train_floor(job: JobSpec) -> dict[str, float]:
    """Ray Train's fixed cost with nothing of ours in it: an empty loop on one worker sized like
    the job's, from `fit` to its first line and to `fit`'s return (this machine's local Ray)."""
    from ray.train.torch import TorchTrainer

    from ray_amalgam.distributed import plan_resources

    resources = plan_resources(job, len(TEACHERS), local=True)
    with tempfile.TemporaryDirectory() as storage:
        mark = Path(storage) / "started"
        started_at = time.time()
        TorchTrainer(
            _empty_loop,
            train_loop_config={"mark": str(mark)},
            scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=resources.worker_gpus > 0, resources_per_worker=resources.worker_request),
            run_config=ray.train.RunConfig(name="floor", storage_path=storage),
        ).fit()
        return {"worker_start_s": round(float(mark.read_text()) - started_at, 2), "fit_s": round(time.time() - started_at, 2)}


def ray_job(root: Path, mode: str, args: argparse.Namespace, sampler: GpuSampler, ray_start_s: float) -> dict[str, Any]:
    started_at = time.time()
    report = run_job(job_for(root, mode, args), "bench")
    epochs, timeline = _timeline(root, mode)
    by_stage = {e["stage"]: e for e in epochs}
    training = [e for e in timeline if e["event"] == "epoch"]
    origin = report["fit_started_at"]
    train_from, train_to = origin + training[0]["at_s"] - training[0]["seconds"], origin + training[-1]["at_s"]
    return {
        "block1": by_stage["block1"]["steady_samples_per_s"],
        FINETUNE: by_stage[FINETUNE]["steady_samples_per_s"],
        "first_batch_s": by_stage["block1"]["first_batch_s"],
        "fit_s": report["fit_seconds"],
        "store_pass_s": report.get("store_seconds"),
        # The whole job a user waits for, Ray start included (this run starts Ray once, for both).
        "job_s": ray_start_s + report["seconds"],
        "fixed_costs": fixed_costs(report, epochs, timeline),
        "epochs": [{k: e[k] for k in ("stage", "epoch", "seconds", "steady_samples_per_s", "first_batch_s", "data_wait_s", "replayed")} for e in epochs],
        "gpu_util_training": sampler.mean(train_from, train_to),
        "gpu_util_job": sampler.mean(started_at, time.time()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--teacher-width", type=float, default=0.5)
    parser.add_argument("--student-width", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=1, help="measure every side this many times in one run; report each ratio's median and range")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats: expected a whole number >= 1 (got {args.repeats})")
    # Ray prints its driver-side warnings on stdout; under --json stdout carries only the result.
    with stdout_reserved_for_json(until_exit=True) if args.json else nullcontext():
        measure(args)


def done(side: str, figures: dict[str, Any]) -> dict[str, Any]:
    """Each side's figures on stderr as soon as it finishes: a run cut short still shows them."""
    shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in figures.items() if k != "started_at"}
    print(f"{side}: {json.dumps(shown)}", file=sys.stderr, flush=True)
    return figures


def measure(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, GpuSampler() as sampler:
        root = Path(tmp)
        prepare(root, args.rows, args.image_size, args.teacher_width)
        runs = [one_run(root, args, sampler) for _ in range(args.repeats)]
    if len(runs) == 1:
        show(runs[0], args.json)
        return
    result = repeated(runs)
    if args.json:
        print_json(result)
        return
    for run in runs:
        show(run, as_json=False)
    print(f"over {len(runs)} runs, median (min-max):")
    ranges = result["ratios_range"]
    print("ratios   " + "  ".join(f"{k} {v:.2f} ({ranges[k][0]:.2f}-{ranges[k][1]:.2f})" for k, v in result["ratios"].items()))


MEDIAN_SECTIONS = ("ratios", "samples_per_s", "block1_samples_per_s", "fixed_costs_s", "whole_job_s")
"""The single run's top-level figures that a repeated run reports as medians, under the same keys."""


def repeated(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every side measured again in each run, in the same order: each figure's median over the runs
    and each ratio's range, so that a change smaller than this host's run-to-run swing is not read as one."""
    def values(section: str, key: str) -> list[float]:
        return sorted(run[section][key] for run in runs)

    medians = {
        section: {k: statistics.median(values(section, k)) if v is not None else None for k, v in runs[0][section].items()}
        for section in MEDIAN_SECTIONS
    }
    ranges = {k: [values("ratios", k)[0], values("ratios", k)[-1]] for k in runs[0]["ratios"]}
    return {**medians, "ratios_range": ranges, "setup": {**runs[0]["setup"], "repeats": len(runs)}, "runs": runs}


def one_run(root: Path, args: argparse.Namespace, sampler: GpuSampler) -> dict[str, Any]:
    """Every side once, Ray started and shut down inside: one run's figures and ratios."""
    for output in root.glob("out_*"):  # an earlier run's teacher-output store would be reused
        shutil.rmtree(output)
    device = torch.device(args.device)
    ceiling = done("ceiling", in_process(job_for(root, "store", args), naive=False, device=device))
    naive = done("naive", in_process(job_for(root, "store", args), naive=True, device=device))
    local = done("local", local_job(root, args))
    ray_started = time.perf_counter()
    connect(job_for(root, "store", args), len(TEACHERS), None)
    ray_start_s = time.perf_counter() - ray_started
    floor = done("ray_train_floor", ray_train_floor(job_for(root, "store", args)))
    stream = done("stream", ray_job(root, "stream", args, sampler, ray_start_s))
    store = done("store", ray_job(root, "store", args, sampler, ray_start_s))
    ray.shutdown()
    # Steady steps only, each epoch at its own rate: the store job's first epoch reads its rows
    # through Ray Data, later ones replay them from the worker's memory.
    train_rows = args.rows  # per-epoch rows (the hold-out share is small; same for both sides)
    store_job_s = store["store_pass_s"] + sum(train_rows / e["steady_samples_per_s"] for e in store["epochs"])
    naive_job_s = sum(train_rows / rate for rate in naive["stages"].values())
    result = {
        "samples_per_s": {"ceiling": ceiling[FINETUNE], "naive": naive[FINETUNE], "stream": stream[FINETUNE], "store": store[FINETUNE]},
        "ratios": {
            "stream_vs_ceiling": stream[FINETUNE] / ceiling[FINETUNE],
            "store_vs_ceiling": store[FINETUNE] / ceiling[FINETUNE],
            "stream_vs_naive": stream[FINETUNE] / naive[FINETUNE],
            "store_job_vs_naive": naive_job_s / store_job_s,
            "whole_job_vs_naive": naive["job_s"] / store["job_s"],
            "whole_job_vs_naive_stream": naive["job_s"] / stream["job_s"],
            "whole_job_vs_local": local["job_s"] / store["job_s"],
        },
        "fixed_costs_s": {
            "ray_start": round(ray_start_s, 2),
            "first_batch_stream": stream["first_batch_s"],
            "first_batch_store": store["first_batch_s"],
            "store_teacher_pass": store["store_pass_s"],
            "fit_stream": stream["fit_s"],
            "fit_store": store["fit_s"],
        },
        "fixed_cost_breakdown_s": {"stream": stream["fixed_costs"], "store": store["fixed_costs"]},
        # An empty loop's start and run: the part of worker_start_s and fit_s that is Ray Train's own.
        "ray_train_floor_s": floor,
        # Per epoch: data_wait_s is the steady-state time the step sat waiting for its next batch.
        "epochs": {"stream": stream["epochs"], "store": store["epochs"]},
        "whole_job_s": {"ceiling": ceiling["job_s"], "naive": naive["job_s"], "local": local["job_s"], "stream": stream["job_s"], "store": store["job_s"]},
        "gpu_utilization_pct": {
            "stream_training": stream["gpu_util_training"], "store_training": store["gpu_util_training"],
            "stream_job": stream["gpu_util_job"], "store_job": store["gpu_util_job"],
            "ceiling_job": in_process_gpu_util(ceiling, sampler), "naive_job": in_process_gpu_util(naive, sampler),
            "local_job": in_process_gpu_util(local, sampler),
        } if sampler.available else None,
        "block1_samples_per_s": {"ceiling": ceiling["block1"], "naive": naive["block1"], "stream": stream["block1"], "store": store["block1"]},
        "setup": {"rows": args.rows, "image_size": args.image_size, "batch_size": args.batch_size, "job_epochs": JOB_EPOCHS,
                  "device": args.device, "teachers": f"2 x resnet18 x{args.teacher_width}", "student": f"resnet18 x{args.student_width}",
                  "train_workers": 1},
    }
    return result


def show(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    setup = result["setup"]
    print(f"rows={setup['rows']} image={setup['image_size']}px batch={setup['batch_size']} device={setup['device']}")
    for stage, key in (("block1", "block1_samples_per_s"), ("finetune", "samples_per_s")):
        print(f"{stage:9s} " + "  ".join(f"{k} {v:8.1f}/s" for k, v in result[key].items()))
    print("ratios   " + "  ".join(f"{k} {v:.2f}" for k, v in result["ratios"].items()))
    print("job s    " + "  ".join(f"{k} {v:.1f}" for k, v in result["whole_job_s"].items()))
    print("fixed s  " + "  ".join(f"{k} {v:.1f}" for k, v in result["fixed_costs_s"].items() if v is not None))
    print("Ray Train, empty loop: " + "  ".join(f"{k} {v}" for k, v in result["ray_train_floor_s"].items()))
    for mode, costs in result["fixed_cost_breakdown_s"].items():
        print(f"{mode:9s}" + "  ".join(f"{k} {v}" for k, v in costs.items()))
    for mode, rows in result["epochs"].items():
        print(f"{mode:9s}" + "  ".join(
            f"{e['stage']} {e['steady_samples_per_s'] or 0:.0f}/s wait {e['data_wait_s']}s{' (replayed)' if e['replayed'] else ''}" for e in rows
        ))
    if result["gpu_utilization_pct"]:
        print("GPU %    " + "  ".join(f"{k} {v}" for k, v in result["gpu_utilization_pct"].items()))


if __name__ == "__main__":
    main()
