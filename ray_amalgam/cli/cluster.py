"""`ray-amalgam run | demo`: amalgamation on Ray (embedded local Ray, or a cluster with --address)."""

from __future__ import annotations

import argparse
from contextlib import nullcontext

from ray_amalgam.cli.console import console, print_json, print_table
from ray_amalgam.cli.data import positive
from ray_amalgam.cli.jobs import load_job, show_report
from ray_amalgam.distributed import LiveView, LogLines, run_demo, run_job


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    run = commands.add_parser("run", help="run an amalgamation job on Ray", parents=[common])
    run.add_argument("job", help="job YAML file")
    run.add_argument("--address", default=None, help="Ray cluster to join: HOST:PORT, or auto for the cluster this runs on (default: start a local Ray sized for the job; inside a submitted Ray job, that job's cluster)")
    run.add_argument("--resume", action="store_true", help="continue after the last finished stage of an earlier run")
    run.set_defaults(handler=_run)

    demo = commands.add_parser(
        "demo", help="synthetic data -> two teachers -> a cross-teacher student on Ray -> comparison table",
        parents=[common],
    )
    demo.add_argument("--workdir", default="ray_amalgam_demo", help="where data, teachers and the student go")
    demo.add_argument("--size", type=positive, default=1, help="scale the data (1 = about 5 minutes on 2 CPU cores)")
    demo.add_argument("--address", default=None, help="Ray cluster to join (default: local Ray)")
    demo.set_defaults(handler=_demo)


def _live_view(quiet: bool) -> LiveView | LogLines | nullcontext:
    """A live panel on a terminal; plain lines in a log (a submitted job's logs are a file)."""
    if quiet:
        return nullcontext()
    return LiveView(console) if console.is_terminal else LogLines(console)


def _run(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    with _live_view(args.json) as view:
        report = run_job(job, source=args.job, address=args.address, resume=args.resume, progress_callback=view)
    show_report(report, job, args.json)
    return 0


def _demo(args: argparse.Namespace) -> int:
    with _live_view(args.json) as view:
        result = run_demo(args.workdir, size=args.size, address=args.address, progress_callback=view)
    if args.json:
        print_json(result)
        return 0
    print_table(
        "demo: " + " + ".join(f"{r['task']} (teacher {r['teacher']})" for r in result["rows"]) + ": one student, no labels",
        ["task", "teacher", "teacher acc", "student acc", "fidelity", "branch after block"],
        [[r["task"], r["teacher"], r["teacher_accuracy"], r["student_accuracy"], r["fidelity"], r["branch_point"]]
         for r in result["rows"]],
    )
    print_table("size", ["model", "params", "MFLOPs"], [[m["model"], f"{m['params']:,}", m["flops"] / 1e6] for m in result["models"]])
    console.print(f"done in {result['seconds']} s; everything is in {result['workdir']}")
    return 0
