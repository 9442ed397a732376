"""Run a whole amalgamation job in one process: stages -> branch-out -> finetune -> evaluation.

The teacher targets of the training data are computed once into memory (the local stand-in for
the distributed layer's teacher-output store), or read from such a store when the caller has one.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from rich.progress import Progress, TaskID
from torch import Tensor

from ray_amalgam.amalgamation.engine import Amalgamator, student_normalization
from ray_amalgam.amalgamation.filtering import rank_hint_channels
from ray_amalgam.amalgamation.losses import least_ambiguous
from ray_amalgam.amalgamation.metrics import (
    count_flops,
    count_params,
    cpu_latency_ms,
    fidelity_matches,
    matches,
    mean_average_precision,
)
from ray_amalgam.amalgamation.plan import AmalgamationPlan
from ray_amalgam.amalgamation.schedule import concrete_schedule, steps_per_epoch
from ray_amalgam.amalgamation.student import save_student
from ray_amalgam.amalgamation.supervised import LabelledData, load_labelled
from ray_amalgam.amalgamation.targets import TeacherRunner
from ray_amalgam.amalgamation.validation import load_pool, write_job_record
from ray_amalgam.io.checkpoints import checkpoint_hash
from ray_amalgam.io.fs import atomic_write_text, join
from ray_amalgam.io.images import random_flip_shift, to_tensor
from ray_amalgam.io.shards import holdout_mask, read_dataset_meta
from ray_amalgam.models import (
    MultiTaskNet,
    TargetNet,
    create_backbone,
)
from ray_amalgam.spec import BadInputError, JobSpec

StoredTargets = tuple[np.ndarray, Mapping[str, np.ndarray]]
"""(row ids, teacher-output column -> values in the ids' order): targets computed elsewhere."""
TargetReader = Callable[[AmalgamationPlan], StoredTargets]
"""Reads the stored targets of the columns a plan needs."""
StageReport = Callable[[dict[str, Any]], None]
"""Called with `stage_metrics` after each stage."""
BatchView = Callable[[dict[str, Any]], dict[str, Any]]
"""What a training batch becomes before its step (augmentation labelled by the teachers)."""

HOLDOUT_FRACTION = 0.1
"""Share of the training rows held out to measure fidelity for branch-out."""
EVAL_BATCH = 256


def compute_targets(
    plan: AmalgamationPlan, teachers: Mapping[str, MultiTaskNet], images: np.ndarray, device: torch.device
) -> dict[str, Tensor]:
    """Every teacher's filtered outputs for uint8 (N, H, W, 3) images, on the CPU, keyed as in batches."""
    chunks: dict[str, list[np.ndarray]] = {}
    for name, teacher in teachers.items():
        runner = TeacherRunner(name, teacher, plan, device)
        for start in range(0, len(images), EVAL_BATCH):
            for key, value in runner.outputs(images[start : start + EVAL_BATCH]).items():
                chunks.setdefault(key, []).append(value)
    return {key: torch.from_numpy(np.concatenate(values)) for key, values in chunks.items()}


def stage_metrics(stage: str, index: int, stages: int, fidelity: Mapping[str, float]) -> dict[str, Any]:
    """What a finished stage reports, in process and on Ray Train alike."""
    return {"stage": stage, "stage_index": index, "stages": stages, **{f"fidelity/{t}": v for t, v in fidelity.items()}}


def aligned_targets(ids: Sequence[str], stored: StoredTargets, source: str) -> dict[str, Tensor]:
    """The stored targets as tensors in the order of `ids`."""
    stored_ids, columns = stored
    position = {str(row_id): index for index, row_id in enumerate(stored_ids)}
    missing = [row_id for row_id in ids if str(row_id) not in position]
    if missing:
        raise BadInputError(f"{source}: the teacher-output store lacks {len(missing)} training row(s), e.g. id '{missing[0]}'")
    order = np.fromiter((position[str(row_id)] for row_id in ids), dtype=np.int64, count=len(ids))
    return {key: torch.from_numpy(np.ascontiguousarray(values[order])) for key, values in columns.items()}


def teacher_labelled_views(
    plan: AmalgamationPlan, teachers: Mapping[str, MultiTaskNet], device: torch.device, generator: np.random.Generator
) -> BatchView:
    """Per batch: a random flip and shift of its images, with the teachers' outputs on exactly
    those views as its targets (the in-process form of `stream` mode with `schedule.augment`)."""
    runners = [TeacherRunner(name, teacher, plan, device) for name, teacher in teachers.items()]

    def view(batch: dict[str, Any]) -> dict[str, Any]:
        pixels = random_flip_shift(batch["image"], generator)
        labelled: dict[str, Any] = {"image": pixels}
        for runner in runners:
            labelled.update(runner.outputs(pixels))
        return labelled

    return view


def iter_rows(images: np.ndarray, targets: Mapping[str, Tensor], rows: np.ndarray, batch_size: int) -> Iterator[dict[str, Any]]:
    """Batches in the engine's format for the given row indices."""
    for start in range(0, len(rows), batch_size):
        chosen = rows[start : start + batch_size]
        batch: dict[str, Any] = {"image": images[chosen]}
        batch.update({key: value[chosen] for key, value in targets.items()})
        yield batch


def _train_stage(
    engine: Amalgamator,
    stage: str,
    images: np.ndarray,
    targets: Mapping[str, Tensor],
    train_rows: np.ndarray,
    check_rows: np.ndarray,
    generator: np.random.Generator,
    progress: Progress | None,
    view: BatchView | None,
) -> tuple[dict[str, float], int]:
    """Train the stage; its held-out fidelity and the rows it was measured on."""
    schedule = engine.job.schedule
    epochs = engine.stage_epochs(stage)
    engine.stage_module(stage, steps=epochs * steps_per_epoch(len(train_rows), schedule.batch_size))
    bar: TaskID | None = progress.add_task(stage, total=epochs * len(train_rows)) if progress is not None else None
    for epoch in range(1, epochs + 1):
        started, done = time.perf_counter(), 0
        for batch in iter_rows(images, targets, generator.permutation(train_rows), schedule.batch_size):
            losses = engine.train_step(batch if view is None else view(batch))
            done += len(batch["image"])
            if progress is not None:
                rate = done / max(time.perf_counter() - started, 1e-9)
                progress.update(
                    bar, advance=len(batch["image"]),
                    description=f"{stage} epoch {epoch}/{epochs} · {rate:,.0f} img/s · loss {losses['loss']:.3f}",
                )
        if epoch < epochs and engine.keeps_best(stage):
            engine.keep_if_best(engine.fidelity(iter_rows(images, targets, check_rows, EVAL_BATCH))[0], epoch)
    return engine.fidelity(iter_rows(images, targets, check_rows, EVAL_BATCH))


@torch.inference_mode()
def evaluate(
    student: TargetNet, plan: AmalgamationPlan, teachers: Mapping[str, MultiTaskNet], data: LabelledData, device: torch.device
) -> dict[str, dict[str, float]]:
    """Per task: fidelity to the teacher targets, and where labels exist, student and teacher
    accuracy (multilabel: mean per-label accuracy at 0.5, plus mAP)."""
    student.eval()
    normalization = student_normalization(plan)
    logits: dict[str, list[Tensor]] = {t: [] for t in plan.task_names}
    targets: dict[str, list[Tensor]] = {t: [] for t in plan.task_names}
    for start in range(0, len(data.images), EVAL_BATCH):
        images = data.images[start : start + EVAL_BATCH]
        outputs = student(to_tensor(images, normalization.mean, normalization.std).to(device))
        by_teacher = {
            name: teacher(to_tensor(images, plan.teachers[name].mean, plan.teachers[name].std).to(device), plan.heads_of(name))
            for name, teacher in teachers.items()
        }
        for task in plan.tasks:
            logits[task.name].append(outputs[task.name].float().cpu())
            owners = [by_teacher[name][task.name].float().cpu() for name in plan.sources[task.name]]
            targets[task.name].append(least_ambiguous(owners, task.kind))
    results: dict[str, dict[str, float]] = {}
    for task in plan.tasks:
        student_logits, teacher_logits = torch.cat(logits[task.name]), torch.cat(targets[task.name])
        row = {"fidelity": float(fidelity_matches(student_logits, teacher_logits, task.kind).mean())}
        if task.name in data.labels:
            labels = torch.from_numpy(data.labels[task.name])
            row["student_accuracy"] = float(matches(student_logits, labels, task.kind).mean())
            row["teacher_accuracy"] = float(matches(teacher_logits, labels, task.kind).mean())
            if task.kind == "multilabel":
                row["student_map"] = mean_average_precision(student_logits.sigmoid().numpy(), data.labels[task.name])
                row["teacher_map"] = mean_average_precision(teacher_logits.sigmoid().numpy(), data.labels[task.name])
        results[task.name] = row
    return results


def model_costs(forwards: Mapping[str, torch.nn.Module], input_size: int) -> dict[str, float]:
    """Summed params, FLOPs per image and CPU ms per image of models run one after another."""
    cpu = {name: copy.deepcopy(model).cpu().eval() for name, model in forwards.items()}
    return {
        "params": sum(count_params(m) for m in cpu.values()),
        "flops": sum(count_flops(m, input_size) for m in cpu.values()),
        "latency_ms": sum(cpu_latency_ms(m, input_size) for m in cpu.values()),
    }


def save_and_evaluate(
    engine: Amalgamator, teachers: Mapping[str, MultiTaskNet], job: JobSpec, device: torch.device
) -> dict[str, Any]:
    """Write the finished student to `<output>/student` and evaluate it on `data.eval` against
    its teachers: the report fields shared by the local and the Ray runner."""
    plan = engine.plan
    student = engine.student()
    hashes = {name: checkpoint_hash(url) for name, url in plan.checkpoints.items()}
    student_url = join(job.output, "student")
    save_student(student_url, student, engine.student_meta(hashes))
    offered = {t.name for t in read_dataset_meta(job.data.eval).tasks}
    eval_data = load_labelled(job.data.eval, [t for t in plan.task_names if t in offered])
    return {
        "tasks": evaluate(student, plan, teachers, eval_data, device),
        "branch_points": engine.branch_points(),
        "student": {"checkpoint": student_url, "arch": plan.student.arch, "width": plan.student.width,
                    **model_costs({"student": student}, plan.input_size)},
        "teachers": {"names": list(plan.teachers), **model_costs(teachers, plan.input_size)},
        "eval_samples": len(eval_data.ids),
        **({"teacher_selection": plan.selection} if plan.selection else {}),
    }


def selection_lines(selection: dict[str, Any] | None) -> list[str]:
    """Markdown lines saying which pool teachers a job chose for each task, and why."""
    if not selection:
        return []
    lines = [
        f"Teachers chosen from pool {selection['catalogue']} ({selection['pool_teachers']} accepted, "
        f"{selection['refused']} refused): {', '.join(selection['teachers'])}",
        "",
        "| task | learns from | owners in pool | why |",
        "|---|---|---|---|",
    ]
    for task, chosen in selection["sources"].items():
        lines.append(f"| {task} | {', '.join(chosen)} | {len(selection['owners'][task])} | {selection['reasons'][task]} |")
    return [*lines, ""]


def report_tables(report: dict[str, Any]) -> list[str]:
    """Markdown lines of a report's pool choice, per-task and cost tables (shared by the local and Ray runners)."""
    lines = [
        *selection_lines(report.get("teacher_selection")),
        "| task | fidelity | student acc | teacher acc | student mAP | teacher mAP | branch point |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, row in report["tasks"].items():
        cells = [row.get(k) for k in ("fidelity", "student_accuracy", "teacher_accuracy", "student_map", "teacher_map")]
        shown = ["-" if v is None else f"{v:.3f}" for v in cells]
        lines.append(f"| {task} | " + " | ".join(shown) + f" | {report['branch_points'][task]} |")
    student, teachers = report["student"], report["teachers"]
    return lines + [
        "",
        "| model | params | MFLOPs / image | CPU ms / image |",
        "|---|---|---|---|",
        f"| student ({student['arch']} x{student['width']}) | {student['params']:,} | {student['flops'] / 1e6:.1f} | {student['latency_ms']:.3f} |",
        f"| teachers ({', '.join(teachers['names'])}) | {teachers['params']:,} | {teachers['flops'] / 1e6:.1f} | {teachers['latency_ms']:.3f} |",
        "",
    ]


def train_in_process(
    job: JobSpec, progress: Progress | None, source: str, block_stages: bool,
    stored: TargetReader | None = None, on_stage: StageReport | None = None,
) -> dict[str, Any]:
    """The shared local pipeline of `amalgamate_local` and `kd_baseline` (`block_stages=False`)."""
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plan, teachers = load_pool(job, source)
    train = load_labelled(job.data.train, [])
    if train.images.shape[1] != plan.input_size:
        raise BadInputError(f"{source}: data.train: images are {train.images.shape[1]} px, the teachers expect {plan.input_size} px")
    # The first write: only now, with every training image decoded, is the job known to be valid.
    write_job_record(job, source)
    if stored is not None:
        if job.hint.enabled:  # the store's hint channels were ranked on other rows
            raise BadInputError(f"{source}: hint.enabled: stored targets are read only without hints")
        targets = aligned_targets(train.ids, stored(plan), source)
    else:
        if job.hint.enabled:
            calibration = train.images[: job.hint.calibration_samples]
            plan = plan.with_hint_channels(rank_hint_channels(plan, teachers, calibration, job.hint.keep_fraction))
        targets = compute_targets(plan, teachers, train.images, device)
    held = holdout_mask(train.ids, HOLDOUT_FRACTION)
    fit_rows = np.flatnonzero(~held)
    check_rows = np.flatnonzero(held) if held.any() and not held.all() else fit_rows
    job = job.model_copy(update={"schedule": concrete_schedule(job.schedule, len(fit_rows))})
    if not block_stages:
        # Same total epochs as the block-wise run, all spent end to end.
        epochs = create_backbone(plan.student).num_blocks * job.schedule.stage_epochs + job.schedule.finetune_epochs
        job = job.model_copy(update={"schedule": job.schedule.model_copy(update={"finetune_epochs": epochs})})
    engine = Amalgamator(plan, teachers, job, device, block_stages=block_stages)
    generator = np.random.default_rng(job.schedule.seed)
    view = teacher_labelled_views(plan, teachers, device, np.random.default_rng([job.schedule.seed, 1])) if job.schedule.augment else None
    records = []
    stages = engine.stage_names()
    for index, stage in enumerate(stages):
        if engine.skips(stage):
            fidelity, samples = {}, 0
        else:
            fidelity, samples = _train_stage(engine, stage, train.images, targets, fit_rows, check_rows, generator, progress, view)
        records.append(engine.finish_stage(stage, fidelity, samples))
        if on_stage is not None:
            on_stage(stage_metrics(stage, index, len(stages), records[-1]["fidelity"]))
    report = {
        "source": source,
        "method": "afk" if block_stages else "kd",
        "targets": "stored" if stored is not None else "computed",
        "stages": records,
        **save_and_evaluate(engine, teachers, job, device),
        "train_samples": len(fit_rows),
        "schedule": job.schedule.model_dump(mode="json"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(join(job.output, "report.json"), json.dumps(report, indent=2, sort_keys=True))
    atomic_write_text(join(job.output, "report.md"), "\n".join([f"# Amalgamation report ({report['method']})", "", *report_tables(report)]))
    return report


def amalgamate_local(
    job: JobSpec, progress: Progress | None = None, source: str = "job",
    stored: TargetReader | None = None, on_stage: StageReport | None = None,
) -> dict[str, Any]:
    """Run the job in this process; writes `<output>/student` and `<output>/report.{json,md}` and
    returns the report (JSON-able). `stored(plan)`: the training rows' teacher targets, read from
    a store instead of running the teachers. `on_stage`: called with each stage's metrics."""
    return train_in_process(job, progress, source, block_stages=True, stored=stored, on_stage=on_stage)
