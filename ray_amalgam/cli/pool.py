"""`ray-amalgam pool synth | index | show`: a catalogue of the teacher checkpoints under a prefix."""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape

from ray_amalgam.cli.console import console, print_json, print_table, progress_bar
from ray_amalgam.cli.data import positive
from ray_amalgam.io.catalogue import read_catalogue
from ray_amalgam.spec import CatalogueEntry


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    pool = commands.add_parser("pool", help="catalogue a pool of teacher checkpoints and show it")
    sub = pool.add_subparsers(dest="pool_command", required=True, metavar="COMMAND")

    index = sub.add_parser("index", help="scan a prefix (local, s3://, gs://) for teacher checkpoints into a Parquet catalogue",
                           parents=[common])
    index.add_argument("url", help="prefix holding the teacher checkpoint directories")
    index.add_argument("--out", default=None, help="catalogue file URL (default: URL/_catalogue.parquet)")
    index.add_argument("--address", default=None, help="Ray cluster to read on (default: a local Ray, for large pools)")
    index.add_argument("--no-ray", action="store_true", help="read every checkpoint in this process")
    index.set_defaults(handler=_index)

    synth = sub.add_parser("synth", help="write a pool of randomly initialised tiny teachers (tests, demos, benchmarks)",
                           parents=[common])
    synth.add_argument("--out", required=True, help="prefix to write teacher_NN checkpoints under")
    synth.add_argument("--teachers", type=positive, default=12, help="how many (three architectures in turn)")
    synth.add_argument("--image-size", type=positive, default=16)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_synth)

    show = sub.add_parser("show", help="print a catalogue as a table", parents=[common])
    show.add_argument("catalogue", help="catalogue file URL")
    show.add_argument("--task", default=None, help="only the teachers owning this task, best owner first")
    show.set_defaults(handler=_show)


def _synth(args: argparse.Namespace) -> int:
    from ray_amalgam.amalgamation.pool import synthesize_pool

    written = synthesize_pool(args.out, args.teachers, args.seed, args.image_size)
    if args.json:
        print_json({"out": args.out, "teachers": written})
    else:
        console.print(f"wrote {len(written)} untrained teachers to {args.out}")
    return 0


def _index(args: argparse.Namespace) -> int:
    from ray_amalgam.distributed.pool_index import index_pool  # Ray only for this command

    with progress_bar(args.json) as progress:
        bar = progress.add_task("index pool", total=None)

        def on_start(to_read: int, total: int) -> None:
            progress.update(bar, total=to_read, description=f"read {to_read} of {total} checkpoints")

        summary = index_pool(args.url, args.out, args.address, False if args.no_ray else None,
                             on_start, lambda n: progress.advance(bar, n))
    if args.json:
        print_json(summary)
        return 0
    console.print(f"{summary['checkpoints']} checkpoints under {summary['prefix']}: {summary['accepted']} accepted, "
                  f"{len(summary['refused'])} refused; read {len(summary['read'])}, {summary['unchanged']} unchanged "
                  f"({summary['seconds']} s{', on Ray' if summary['ray'] else ''})")
    if summary["refused"]:
        print_table("refused", ["checkpoint", "reason"], [[r["name"], r["reason"]] for r in summary["refused"]])
    console.print(f"catalogue written to {summary['catalogue']}")
    return 0


def _row(entry: CatalogueEntry) -> dict[str, Any]:
    return {
        "name": entry.name, "status": entry.status, "arch": entry.arch, "width": entry.width,
        "stem": None if entry.small_input_stem is None else ("small" if entry.small_input_stem else "standard"),
        "input_size": entry.input_size,
        "tasks": {t.name: {"kind": t.kind, "classes": list(t.names)} for t in entry.tasks},
        "params": entry.params, "flops": entry.flops, "quality": entry.quality,
        "hash": entry.hash, "url": entry.url, "reason": entry.reason,
    }


def _tasks_cell(entry: CatalogueEntry) -> str:
    return ", ".join(f"{t.name}({'mc' if t.kind == 'multiclass' else 'ml'} {t.num_outputs})" for t in entry.tasks)


def _show(args: argparse.Namespace) -> int:
    from ray_amalgam.amalgamation.pool import owner_rank

    catalogue = read_catalogue(args.catalogue)
    entries = list(catalogue.entries)
    if args.task is not None:
        entries = sorted((e for e in entries if args.task in e.task_names), key=lambda e: owner_rank(e, args.task))
    if args.json:
        print_json({"catalogue": args.catalogue, "prefix": catalogue.prefix, "task": args.task,
                    "teachers": [_row(e) for e in entries]})
        return 0
    rows = []
    for e in entries:
        if not e.ok:
            rows.append([e.name, "-", "-", "-", "-", "-", escape(f"refused: {e.reason}")])
            continue
        quality = ", ".join(f"{t} {v:.3f}" for t, v in sorted(e.quality.items()) if args.task in (None, t)) or "-"
        rows.append([e.name, f"{e.arch} x{e.width:g}{' small stem' if e.small_input_stem else ''} {e.input_size}px",
                     _tasks_cell(e), f"{e.params:,}", f"{(e.flops or 0) / 1e6:.2f}", quality, e.hash[:10]])
    title = f"pool {catalogue.prefix}" + (f": owners of '{args.task}', best first" if args.task else "") + f" ({len(rows)} checkpoints)"
    print_table(title, ["teacher", "arch", "tasks (kind classes)", "params", "MFLOPs", "quality", "hash / status"], rows)
    return 0
