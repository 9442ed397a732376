"""Quality benchmark: teachers trained on a small labelled set, a customized student amalgamated
from them on a larger unlabelled set, compared with plain KD and with a student for all tasks.

Labels are used only to train the teachers and to evaluate; every student sees images only.
The teachers are trained once; each student is trained with `--seeds` seeds (3 by default) and
every figure is printed as mean ± standard deviation over them, so that a difference within the
spread is not read as a win.

    python benchmarks/quality.py --quick          # small setting, 2 CPU cores
    python benchmarks/quality.py --json           # one JSON object on stdout instead of the table
    python benchmarks/quality.py --workdir DIR    # a rerun with the same DIR reuses its teachers and data
    python benchmarks/quality.py --quick --methods afk --set teacher_outputs=stream --set schedule.augment=true
                                                  # one lever, measured on the customized student only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ray_amalgam.amalgamation import amalgamate_local, kd_baseline
from ray_amalgam.amalgamation.supervised import load_labelled, train_teacher
from ray_amalgam.io.checkpoints import save_teacher
from ray_amalgam.io.fs import atomic_write_text
from ray_amalgam.io.synth import synthesize
from ray_amalgam.spec import (
    BackboneSpec,
    BadInputError,
    DataSpec,
    JobSpec,
    ScheduleSpec,
    StudentSpec,
    TeacherRef,
    parse_spec,
    set_job_field,
)

TEACHER_TASKS = {"teacher_a": ("shape", "color", "size"), "teacher_b": ("position", "attributes")}
CUSTOM_TASKS = ("color", "position", "attributes")
ALL_TASKS = ("shape", "color", "size", "position", "attributes")


@dataclass(frozen=True)
class Setting:
    labelled: int
    unlabelled: int
    eval: int
    teacher_width: float
    student_width: float
    teacher_epochs: int


TEACHER_AND_DATA_FIELDS = ("labelled", "unlabelled", "eval", "teacher_width", "teacher_epochs")
"""What a workdir's teachers and data depend on: a rerun that differs only in the student reuses them."""
QUICK = Setting(labelled=1500, unlabelled=3000, eval=500, teacher_width=0.5, student_width=0.5,
                teacher_epochs=8)
FULL = Setting(labelled=4000, unlabelled=16000, eval=2000, teacher_width=0.5, student_width=0.5,
               teacher_epochs=20)


def train_teachers(root: Path, setting: Setting, progress: Progress) -> dict[str, str]:
    labelled = str(root / "labelled")
    synthesize(labelled, setting.labelled, num_shards=2, seed=10)
    urls = {}
    for name, tasks in TEACHER_TASKS.items():
        bar = progress.add_task(f"train {name}", total=setting.teacher_epochs)
        result = train_teacher(
            load_labelled(labelled, list(tasks)), BackboneSpec(arch="resnet18", width=setting.teacher_width),
            epochs=setting.teacher_epochs, batch_size=64, lr=4e-3,
            on_step=lambda epoch, _rows, loss, bar=bar, name=name: progress.update(
                bar, completed=epoch, description=f"train {name} · loss {loss:.3f}"
            ),
        )
        progress.update(bar, completed=setting.teacher_epochs)
        urls[name] = str(root / name)
        save_teacher(urls[name], result.model.state_dict(), result.meta)
    return urls


METHODS = {"afk": "AFK student", "kd": "plain-KD student", "all": "all-tasks student"}


Overrides = dict[str, Any]
"""Dotted job fields (`schedule.augment`) -> values, applied to every student's job."""


def parse_override(text: str) -> tuple[str, Any]:
    """`schedule.augment=true` -> ("schedule.augment", True): the value is a YAML scalar, as in a job file."""
    field, sep, value = text.partition("=")
    if not sep or not field:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected FIELD=VALUE, e.g. schedule.augment=true")
    return field, yaml.safe_load(value)


def with_overrides(job: JobSpec, overrides: Overrides) -> JobSpec:
    """The job with the dotted fields replaced, validated as a job file would be (BadInputError)."""
    data = job.model_dump(mode="json")
    for dotted, value in overrides.items():
        set_job_field(data, dotted.split("."), value)
    return parse_spec(JobSpec, data, "--set")


def make_job(
    root: Path, name: str, tasks: tuple[str, ...], teachers: dict[str, str], setting: Setting, seed: int,
    overrides: Overrides,
) -> JobSpec:
    job = JobSpec(
        teachers=tuple(TeacherRef(name=n, checkpoint=u) for n, u in teachers.items()),
        tasks=tasks,
        data=DataSpec(train=str(root / "unlabelled"), eval=str(root / "eval")),
        student=StudentSpec(width=setting.student_width, branch_tolerance=0.05),
        # Epoch counts and the learning-rate schedule are the library's defaults (`auto`, cosine).
        schedule=ScheduleSpec(batch_size=64, lr=2e-3, temperature=4.0, seed=seed),
        output=str(root / f"{name}-seed{seed}"),
    )
    return with_overrides(job, overrides)


def teachers_and_data(root: Path, setting: Setting, progress: Progress) -> dict[str, str]:
    """Trains the teachers and writes the unlabelled and evaluation data, once per workdir: a rerun
    in the same workdir whose setting differs at most in the student reuses them (teacher training
    is most of a full run's first 10 min)."""
    record = root / "teachers.json"
    wanted = {field: value for field, value in asdict(setting).items() if field in TEACHER_AND_DATA_FIELDS}
    if record.exists():
        kept = json.loads(record.read_text())
        made_for = {field: kept.get("setting", {}).get(field) for field in TEACHER_AND_DATA_FIELDS}
        if made_for != wanted:
            raise SystemExit(f"{record}: made for setting {made_for}, not {wanted}; use another --workdir")
        return kept["teachers"]
    teachers = train_teachers(root, setting, progress)
    synthesize(str(root / "unlabelled"), setting.unlabelled, num_shards=4, seed=11)
    synthesize(str(root / "eval"), setting.eval, num_shards=1, seed=12)
    atomic_write_text(str(record), json.dumps({"setting": wanted, "teachers": teachers}))
    return teachers


def run(
    root: Path, setting: Setting, seeds: int, progress: Progress, methods: tuple[str, ...] = tuple(METHODS),
    overrides: Overrides | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Per method, one report per seed."""
    teachers = teachers_and_data(root, setting, progress)
    reports: dict[str, list[dict[str, Any]]] = {method: [] for method in methods}
    for seed in range(seeds):
        for method in methods:
            tasks = ALL_TASKS if method == "all" else CUSTOM_TASKS
            job = make_job(root, method, tasks, teachers, setting, seed, overrides or {})
            train = kd_baseline if method == "kd" else amalgamate_local
            reports[method].append(train(job, progress, source=f"{method} seed {seed}"))
    return reports


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def summary(reports: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per customized task and method: accuracy, fidelity (and mAP for multilabel) as mean/std over
    seeds, with the teacher's figures beside them; and parameter counts."""
    runs_of_first = next(iter(reports.values()))
    first = runs_of_first[0]
    tasks: dict[str, Any] = {}
    for task in CUSTOM_TASKS:
        teacher = first["tasks"][task]
        row: dict[str, Any] = {"teacher_accuracy": teacher["teacher_accuracy"]}
        if "teacher_map" in teacher:
            row["teacher_map"] = teacher["teacher_map"]
        for method, method_reports in reports.items():
            runs = [report["tasks"][task] for report in method_reports]
            for metric in ("student_accuracy", "fidelity", "student_map"):
                if metric in runs[0]:
                    row[f"{method}_{metric}"] = spread([r[metric] for r in runs])
        tasks[task] = row
    return {
        "seeds": len(runs_of_first),
        "schedule": first["schedule"],
        "tasks": tasks,
        "student_params": first["student"]["params"],
        "teachers_params": first["teachers"]["params"],
    }


def _cell(value: dict[str, float]) -> str:
    return f"{value['mean']:.3f} ± {value['std']:.3f}"


def _schedule(report: dict[str, Any]) -> str:
    schedule = report["schedule"]
    return (f"{schedule['stage_epochs']} epochs per block stage and {schedule['finetune_epochs']} finetune "
            f"epochs (`auto` for {schedule['samples_per_stage']:,} samples per stage), lr {schedule['lr_schedule']}")


def _overridden(overrides: Overrides) -> str:
    if not overrides:
        return "the library default"
    return "the library default with " + ", ".join(f"`{field}: {json.dumps(value)}`" for field, value in overrides.items())


def markdown(reports: dict[str, list[dict[str, Any]]], setting: Setting, overrides: Overrides | None = None) -> str:
    table = summary(reports)
    methods = list(reports)
    first = reports[methods[0]][0]
    owners = ", ".join(f"{name}: {'/'.join(tasks)}" for name, tasks in TEACHER_TASKS.items())
    header = " | ".join(METHODS[method] for method in methods)
    rule = "|---" * len(methods)
    lines = [
        "# Quality benchmark (synthetic data)",
        "",
        (
            f"Teachers: resnet18 x{setting.teacher_width} on {setting.labelled} labelled images ({owners}). "
            f"Students: resnet18 x{setting.student_width} on {setting.unlabelled} unlabelled images; "
            f"evaluation on {setting.eval} held-out images. Accuracy of `attributes` = mean per-label accuracy at 0.5. "
            f"Students: mean ± std over {table['seeds']} seeds (teachers trained once). "
            f"Schedule: {_overridden(overrides or {})}, {_schedule(first)}."
        ),
        "",
        f"| accuracy | teacher | {header} |",
        f"|---|---{rule}|",
    ]
    for task, row in table["tasks"].items():
        cells = " | ".join(_cell(row[f"{method}_student_accuracy"]) for method in methods)
        lines.append(f"| {task} | {row['teacher_accuracy']:.3f} | {cells} |")
    lines += ["", f"| fidelity to the teacher | {header} |", f"|---{rule}|"]
    for task, row in table["tasks"].items():
        lines.append(f"| {task} | " + " | ".join(_cell(row[f"{method}_fidelity"]) for method in methods) + " |")
    lines += ["", f"| mAP | teacher | {header} |", f"|---|---{rule}|"]
    for task, row in table["tasks"].items():
        if "teacher_map" in row:
            cells = " | ".join(_cell(row[f"{method}_student_map"]) for method in methods)
            lines.append(f"| {task} | {row['teacher_map']:.3f} | {cells} |")
    lines += ["", "| model | params | MFLOPs / image | CPU ms / image |", "|---|---|---|---|"]
    for method in methods:
        s = reports[method][0]["student"]
        lines.append(f"| {METHODS[method]} (x{s['width']}) | {s['params']:,} | {s['flops'] / 1e6:.1f} | {s['latency_ms']:.3f} |")
    t = first["teachers"]
    lines.append(f"| teachers ({' + '.join(t['names'])}) | {t['params']:,} | {t['flops'] / 1e6:.1f} | {t['latency_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small setting: about 12 minutes per seed (3 methods) on 2 CPU cores, teachers reused")
    parser.add_argument("--seeds", type=int, default=3, help="student seeds per method (teachers are trained once)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--out", default="benchmarks/quality.md", help="Markdown table to write")
    parser.add_argument("--workdir", default=None, help="keep data, teachers and students here (default: a temporary directory)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[], metavar="FIELD=VALUE",
                        help="a student job field for every method, e.g. schedule.augment=true (repeatable)")
    args = parser.parse_args(argv)
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: expected some of {', '.join(METHODS)}, got {args.methods!r}")
    overrides = dict(args.overrides)
    setting = QUICK if args.quick else FULL
    try:  # before any teacher trains: a job the overrides make invalid fails now, in one line
        make_job(Path("."), "afk", CUSTOM_TASKS, {name: name for name in TEACHER_TASKS}, setting, 0, overrides)
    except BadInputError as error:
        parser.error(str(error))
    torch.manual_seed(0)
    console = Console(stderr=True)  # stdout stays clean for --json
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with tempfile.TemporaryDirectory() as scratch, Progress(*columns, console=console, disable=args.json) as progress:
        root = Path(args.workdir or scratch).resolve()
        reports = run(root, setting, args.seeds, progress, methods, overrides)
    table = markdown(reports, setting, overrides)
    Path(args.out).write_text(table)
    if args.json:
        print(json.dumps(summary(reports)))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
