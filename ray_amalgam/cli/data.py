"""`ray-amalgam data synth | pack | inspect`."""

from __future__ import annotations

import argparse
import posixpath
import time
from typing import Any

from rich.markup import escape

from ray_amalgam.cli.console import console, print_json, print_table, progress_bar
from ray_amalgam.io.pack import pack_folder
from ray_amalgam.io.shards import inspect_dataset
from ray_amalgam.io.synth import synthesize


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    data = commands.add_parser("data", help="make, pack and inspect Parquet image shards")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    synth = sub.add_parser("synth", help="write a synthetic multi-attribute dataset", parents=[common])
    synth.add_argument("--out", required=True, help="output dataset URL (path, file://, s3://, gs://)")
    synth.add_argument("--num-samples", type=positive, required=True)
    synth.add_argument("--shards", type=positive, default=4)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=positive, default=32)
    synth.set_defaults(handler=_synth)

    pack = sub.add_parser("pack", help="turn a folder of jpg/png images into shards", parents=[common])
    pack.add_argument("--from", dest="source", required=True, help="folder of images (searched recursively)")
    pack.add_argument("--out", required=True, help="output dataset URL")
    pack.add_argument("--shards", type=positive, default=4)
    pack.add_argument("--image-size", type=positive, default=None, help="center-crop and resize to this size")
    pack.set_defaults(handler=_pack)

    inspect = sub.add_parser("inspect", help="show shards, rows, columns and image size", parents=[common])
    inspect.add_argument("url")
    inspect.set_defaults(handler=_inspect)


def _synth(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    with progress_bar(args.json) as progress:
        task = progress.add_task("synth", total=args.num_samples)
        meta = synthesize(
            args.out, args.num_samples, args.shards, args.seed, image_size=args.image_size,
            progress=lambda done: progress.update(task, completed=done),
        )
    summary = {"out": args.out, "rows": meta.num_rows, "shards": args.shards, "image_size": meta.image_size,
               "tasks": [t.name for t in meta.tasks], "seconds": round(time.perf_counter() - started, 2)}
    if args.json:
        print_json(summary)
    else:
        console.print(f"wrote {meta.num_rows} images in {args.shards} shards to {args.out} "
                      f"({summary['seconds']} s); tasks: {', '.join(summary['tasks'])}")
    return 0


def _pack(args: argparse.Namespace) -> int:
    with progress_bar(args.json) as progress:
        task = progress.add_task("pack", total=None)
        meta = pack_folder(args.source, args.out, args.shards, image_size=args.image_size,
                           progress=lambda done: progress.update(task, completed=done))
    summary = {"out": args.out, "rows": meta.num_rows, "shards": args.shards, "image_size": meta.image_size}
    if args.json:
        print_json(summary)
    else:
        console.print(f"packed {meta.num_rows} images of {meta.image_size}px into {args.shards} shards at {args.out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    info = inspect_dataset(args.url)
    if args.json:
        print_json(info)
        return 0
    size = info["image_size"]
    print_table(
        f"dataset {args.url}",
        ["field", "value"],
        [
            ["shards", info["shards"]],
            ["rows", info["rows"]],
            ["image size", f"{size[1]}x{size[0]}" if size else "-"],
            ["columns", ", ".join(f"{k}: {v}" for k, v in info["columns"].items())],
            ["duplicate ids", _duplicates(info)],
            ["source", info["source"] or "-"],
        ],
    )
    if info["tasks"]:
        print_table("label tasks", ["task", "kind", "classes / labels"],
                    [[t["name"], t["kind"], ", ".join(t["names"])] for t in info["tasks"]])
    return 0



def _duplicates(info: dict[str, Any]) -> str:
    example = info["duplicate_example"]
    if example is None:
        return "none"
    shards = ", ".join(posixpath.basename(s) for s in example["shards"])
    return f"[red]{info['duplicate_ids']}[/red] (e.g. '{escape(example['id'])}' in {shards}); jobs refuse this data"
