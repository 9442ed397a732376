"""`ray-amalgam amalgamate | predict`: the method in one process, and inference with a student."""

from __future__ import annotations

import argparse
from typing import Any

from ray_amalgam.amalgamation.runner import amalgamate_local
from ray_amalgam.amalgamation.student import load_student, predict
from ray_amalgam.cli.console import console, print_json, print_table, progress_bar
from ray_amalgam.cli.data import positive
from ray_amalgam.io.fs import read_text
from ray_amalgam.spec import JobSpec, load_spec_text


def load_job(path: str) -> JobSpec:
    """Read and validate a job YAML file (a path or fsspec URL)."""
    return load_spec_text(JobSpec, read_text(path), path)


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    local = commands.add_parser(
        "amalgamate", help="run a job in this process, without Ray (small data, debugging)", parents=[common]
    )
    local.add_argument("job", help="job YAML file")
    local.set_defaults(handler=_amalgamate)

    infer = commands.add_parser("predict", help="write a student's per-task predictions as Parquet", parents=[common])
    infer.add_argument("--student", required=True, help="student checkpoint directory URL")
    infer.add_argument("--data", required=True, help="dataset URL (shards with an image column)")
    infer.add_argument("--out", required=True, help="output Parquet file URL")
    infer.add_argument("--batch-size", type=positive, default=256)
    infer.set_defaults(handler=_predict)


def print_task_report(report: dict[str, Any]) -> None:
    """The per-task table shared by `amalgamate`, `run` and `demo` (and, for a pool job, the teachers it chose)."""
    selection = report.get("teacher_selection")
    if selection:
        print_table(f"teachers chosen from pool {selection['catalogue']} ({selection['pool_teachers']} accepted)",
                    ["task", "learns from", "owners", "why"],
                    [[t, ", ".join(c), len(selection["owners"][t]), selection["reasons"][t]] for t, c in selection["sources"].items()])
    rows = []
    for task, row in report["tasks"].items():
        rows.append([task, row.get("fidelity"), row.get("student_accuracy", "-"), row.get("teacher_accuracy", "-"),
                     report["branch_points"].get(task, "-")])
    print_table("per-task results (eval data)", ["task", "fidelity", "student acc", "teacher acc", "branch after block"], rows)
    student, teachers = report["student"], report["teachers"]
    print_table("cost", ["model", "params", "MFLOPs", "CPU ms/img"], [
        [f"student {student['arch']} x{student['width']}", f"{student['params']:,}", student["flops"] / 1e6, student["latency_ms"]],
        [f"teachers {', '.join(teachers['names'])}", f"{teachers['params']:,}", teachers["flops"] / 1e6, teachers["latency_ms"]],
    ])


def show_report(report: dict[str, Any], job: JobSpec, as_json: bool) -> None:
    """A finished job's report: the JSON object, or the tables and where the outputs are."""
    if as_json:
        print_json(report)
        return
    print_task_report(report)
    if report.get("restored_after_stage"):
        console.print(f"resumed after stage {report['restored_after_stage']} (checkpoint {report['resumed_from']})")
    console.print(f"student written to {report['student']['checkpoint']}; report in {job.output}/report.md")


def _amalgamate(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    with progress_bar(args.json) as progress:
        report = amalgamate_local(job, progress, source=args.job)
    show_report(report, job, args.json)
    return 0


def _predict(args: argparse.Namespace) -> int:
    meta, student = load_student(args.student)
    rows = predict(student, meta, args.data, args.out, args.batch_size)
    summary = {"student": args.student, "data": args.data, "out": args.out, "rows": rows, "tasks": [t.name for t in meta.tasks]}
    if args.json:
        print_json(summary)
    else:
        console.print(f"wrote predictions for {rows} rows ({', '.join(summary['tasks'])}) to {args.out}")
    return 0
