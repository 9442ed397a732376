"""`ray-amalgam sweep | sweep-report`: Ray Tune sweeps over widths, task subsets and hyperparameters."""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from typing import Any

from ray_amalgam.cli.console import console, print_json, print_table
from ray_amalgam.tune import SweepLiveView, load_sweep, read_trials, render_report, run_sweep
from ray_amalgam.tune.results import REPORT_COLUMNS, report_rows


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    sweep = commands.add_parser("sweep", help="run a sweep of amalgamation jobs with Ray Tune", parents=[common])
    sweep.add_argument("sweep", help="sweep YAML file")
    sweep.add_argument("--address", default=None, help="Ray cluster to join: HOST:PORT, or auto for the cluster this runs on (default: start a local Ray)")
    sweep.add_argument("--resume", action="store_true", help="continue a killed sweep; finished trials are not run again")
    sweep.set_defaults(handler=_sweep)

    report = commands.add_parser("sweep-report", help="re-render a sweep's table and pareto.png from its output", parents=[common])
    report.add_argument("output", help="the sweep's output URL (its base job's output)")
    report.set_defaults(handler=_report)


def _show(summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print_table("sweep trials, best first (* on the Pareto front of quality vs params)", REPORT_COLUMNS, report_rows(rows))
    console.print(
        f"{summary['finished']} finished, {summary['stopped']} stopped early, {summary['errors']} failed; "
        f"teacher passes per sample: {summary['teacher_passes_per_sample']:g}; "
        f"report in {summary['output']}/report.md and pareto.png"
    )


def _sweep(args: argparse.Namespace) -> int:
    spec = load_sweep(args.sweep)
    with nullcontext() if args.json else SweepLiveView(console):
        summary = run_sweep(spec, source=args.sweep, address=args.address, resume=args.resume)
    if args.json:
        print_json(summary)
    else:
        _show(summary, read_trials(summary["output"]))
    return 0 if summary["finished"] else 1


def _report(args: argparse.Namespace) -> int:
    summary, rows = render_report(args.output)
    if args.json:
        print_json({**summary, "trial_rows": rows})
    else:
        _show(summary, rows)
    return 0
