"""`ray-amalgam export`: a student to torch.export / ONNX / TorchScript, checked for parity and timed."""

from __future__ import annotations

import argparse
import posixpath
from contextlib import nullcontext
from typing import Any

from rich.markup import escape

from ray_amalgam.amalgamation.export import (
    DTYPES,
    EXPORT_FORMATS,
    LATENCY_BATCHES,
    MIN_AGREEMENT,
    export_student,
    latency_ms,
    parity,
    parity_inputs,
    reference_model,
    verdict,
    write_export,
)
from ray_amalgam.amalgamation.student import load_student
from ray_amalgam.amalgamation.validation import load_teacher_model
from ray_amalgam.cli.console import console, print_json, print_table
from ray_amalgam.io.checkpoints import checkpoint_hash
from ray_amalgam.models import MultiTaskNet
from ray_amalgam.spec import BadInputError, StudentMeta

PARITY_ROWS = 64
EXIT_REFUSED = 1


def batch_option(text: str) -> int | None:
    """`--batch`: `dynamic` (None) or a fixed positive batch size."""
    if text == "dynamic":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'dynamic' or a positive integer, got {text}")
    return int(text)


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    export = commands.add_parser(
        "export", parents=[common],
        help="write a student as an ONNX / torch.export / TorchScript file, checked for parity and timed",
    )
    export.add_argument("--student", required=True, help="student checkpoint directory URL")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    export.add_argument("--out", required=True, help="output file URL; its JSON manifest is written beside it as OUT.json")
    export.add_argument("--batch", type=batch_option, default=None, metavar="dynamic|N",
                        help="batch dimension of the exported input (default: dynamic)")
    export.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                        help="precision the exported graph computes in; its input and outputs stay float32")
    export.add_argument("--data", help="dataset URL whose first images the parity check uses (default: random inputs)")
    export.add_argument("--force", action="store_true",
                        help=f"keep the export even if a task's agreement with the student is below {MIN_AGREEMENT:.1%}".replace("%", "%%"))
    export.add_argument("--compare-teachers", action="store_true",
                        help="time the teachers the student replaces too (their checkpoints via --teacher)")
    export.add_argument("--teacher", action="append", default=[], metavar="URL",
                        help="a source teacher's checkpoint (repeatable; student.json records only names and hashes)")
    export.set_defaults(handler=_export)


def _source_teachers(meta: StudentMeta, urls: list[str], student_url: str) -> dict[str, MultiTaskNet]:
    """The given teachers, named as in student.json, each checked to be one the student was made from."""
    by_hash = {digest: name for name, digest in meta.source_teachers.items()}
    if not urls:
        raise BadInputError(
            f"--compare-teachers: {student_url}/student.json records the teachers' names and checkpoint hashes "
            f"({', '.join(meta.source_teachers) or 'none'}), not where they are; pass --teacher URL for each"
        )
    teachers = {}
    for url in urls:
        name = by_hash.get(checkpoint_hash(url)) if by_hash else posixpath.basename(url.rstrip("/"))
        if name is None:
            raise BadInputError(
                f"--teacher {url}: not a teacher this student was made from (its checkpoint hash matches none of "
                f"{', '.join(meta.source_teachers)} in {student_url}/student.json)"
            )
        teachers[name] = load_teacher_model(url)
    return teachers


def _show(summary: dict[str, Any]) -> None:
    rows = []
    for task, row in summary["parity"].items():
        rows.append([task, f"{row['max_abs_diff']:.2e}", f"{row['agreement']:.2%}",
                     f"{row['fp32_agreement']:.2%}" if "fp32_agreement" in row else "-"])
    print_table(f"parity with the student ({summary['compared']})", ["task", "max |diff|", "agreement", "agreement vs fp32"], rows)
    if summary["latency_ms"]:
        batches = next(iter(summary["latency_ms"].values()))
        print_table("CPU latency (ms per batch, median)", ["model", *(f"batch {b}" for b in batches)],
                    [[name, *times.values()] for name, times in summary["latency_ms"].items()])


def _export(args: argparse.Namespace) -> int:
    meta, student = load_student(args.student)
    teachers = _source_teachers(meta, args.teacher, args.student) if args.compare_teachers or args.teacher else {}
    missing = sorted(set(meta.source_teachers) - set(teachers)) if teachers else []
    summary: dict[str, Any] = {
        "student": args.student, "format": args.format, "dtype": args.dtype,
        "batch": "dynamic" if args.batch is None else args.batch, "out": args.out,
        "compared": f"{args.data} (first rows)" if args.data else "random normal inputs",
        "min_agreement": MIN_AGREEMENT, "latency_ms": {}, "teachers_not_given": missing,
    }
    # The parity images first: a bad --data is bad input, found before the slow export.
    images = parity_inputs(meta, args.data, args.batch or PARITY_ROWS, exactly=args.batch is not None)
    summary["rows_compared"] = len(images)
    with nullcontext() if args.json else console.status("") as status:
        show = status.update if status else lambda _: None
        show(f"exporting to {args.format} ({args.dtype})")
        exported = export_student(student, meta, args.format, args.batch, args.dtype, args.student)
        show("checking parity")
        summary["parity"] = parity(student, exported, images, meta.tasks)
        summary["kept"], shortfall = verdict(summary["parity"], args.force)
        if summary["kept"]:
            summary["sidecar"] = write_export(args.out, exported)
            show("timing on CPU")
            models = {"student (PyTorch, fp32)": reference_model(student, "fp32"),
                      f"{args.format} ({args.dtype})": exported.model,
                      **{f"teacher {name} (PyTorch, fp32)": model for name, model in teachers.items()}}
            summary["latency_ms"] = latency_ms(models, meta.input_size, LATENCY_BATCHES if args.batch is None else (args.batch,))
            if len(teachers) > 1:
                times = [summary["latency_ms"][name] for name in list(models)[2:]]
                summary["latency_ms"]["teachers, all"] = {b: sum(t[b] for t in times) for b in times[0]}
    if not summary["kept"]:
        summary.update(error=f"{args.out}: not written: {shortfall}; --force keeps it", exit_code=EXIT_REFUSED)
    if args.json:
        print_json(summary)
        return EXIT_REFUSED if "error" in summary else 0
    _show(summary)
    if "error" in summary:
        console.print(f"[red]failed:[/red] {escape(summary['error'])}", soft_wrap=True)
        return EXIT_REFUSED
    if shortfall:
        console.print(f"[yellow]kept with --force:[/yellow] {escape(shortfall)}")
    if missing:
        console.print(f"not timed (no --teacher given): {escape(', '.join(missing))}")
    console.print(f"wrote {escape(args.out)} and its manifest {escape(summary['sidecar'])}")
    return 0
