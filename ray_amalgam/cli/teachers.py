"""`ray-amalgam teachers train | evaluate | inspect`."""

from __future__ import annotations

import argparse

from ray_amalgam.amalgamation.supervised import load_labelled, train_teacher
from ray_amalgam.cli.console import console, print_json, print_table, progress_bar
from ray_amalgam.cli.data import positive
from ray_amalgam.io.checkpoints import load_teacher, save_teacher
from ray_amalgam.io.shards import read_dataset_meta
from ray_amalgam.models import list_backbones, teacher_from_weights
from ray_amalgam.spec import BackboneSpec, BadInputError, TaskSpec


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    teachers = commands.add_parser("teachers", help="train and inspect teacher checkpoints")
    sub = teachers.add_subparsers(dest="teachers_command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="supervised multi-task teacher training from label columns", parents=[common])
    train.add_argument("--data", required=True, help="labelled dataset URL")
    train.add_argument("--tasks", required=True, help="comma-separated task names, e.g. shape,color")
    train.add_argument("--arch", default="resnet18", help=f"one of {', '.join(list_backbones())}")
    train.add_argument("--width", type=float, default=0.5, help="channel width multiplier (0.125-1.0)")
    train.add_argument("--small-input-stem", action="store_true", help="3x3 stride-1 stem, no max-pool (32-64 px images)")
    train.add_argument("--epochs", type=positive, default=5)
    train.add_argument("--batch-size", type=positive, default=64)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--holdout", type=float, default=0.2, help="fraction of rows held out to report accuracy")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True, help="checkpoint directory URL")
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser("evaluate", help="measure a pool's teachers on labelled data into its catalogue's quality figures",
                              parents=[common])
    evaluate.add_argument("--catalogue", required=True, help="pool catalogue URL (`ray-amalgam pool index`)")
    evaluate.add_argument("--data", required=True, help="labelled dataset URL")
    evaluate.add_argument("--teachers", default=None, help="comma-separated teacher names (default: every accepted teacher)")
    evaluate.set_defaults(handler=_evaluate)

    inspect = sub.add_parser("inspect", help="show architecture, tasks, blocks and parameters", parents=[common])
    inspect.add_argument("url")
    inspect.set_defaults(handler=_inspect)


def backbone_from_args(args: argparse.Namespace) -> BackboneSpec:
    if args.arch not in list_backbones():
        raise BadInputError(f"--arch: unknown architecture '{args.arch}'; expected one of {list_backbones()}")
    if not 0.125 <= args.width <= 1.0:
        raise BadInputError(f"--width: expected a multiplier in 0.125..1.0, got {args.width}")
    return BackboneSpec(arch=args.arch, width=args.width, small_input_stem=args.small_input_stem)


def _train(args: argparse.Namespace) -> int:
    backbone = backbone_from_args(args)
    if not 0.0 < args.holdout < 1.0:
        raise BadInputError(f"--holdout: expected a fraction between 0 and 1, got {args.holdout}")
    task_names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not task_names:
        raise BadInputError("--tasks: expected at least one task name, e.g. --tasks shape,color")
    data = load_labelled(args.data, task_names)
    train_rows = int((1 - args.holdout) * len(data.ids))
    with progress_bar(args.json) as progress:
        bar = progress.add_task("train teacher", total=args.epochs * train_rows)

        def on_step(epoch: int, rows_done: int, loss: float) -> None:
            progress.update(bar, completed=min(epoch * train_rows + rows_done, args.epochs * train_rows),
                            description=f"train teacher · epoch {epoch + 1}/{args.epochs} · loss {loss:.3f}")

        result = train_teacher(data, backbone, args.epochs, args.batch_size, args.lr, args.holdout, args.seed, on_step)
    save_teacher(args.out, result.model.state_dict(), result.meta)
    summary = {"out": args.out, "arch": backbone.arch, "width": backbone.width, "tasks": task_names,
               "epochs": args.epochs, "train_rows": result.train_rows, "holdout_rows": result.holdout_rows,
               "accuracy": result.accuracy}
    if args.json:
        print_json(summary)
    else:
        print_table(f"held-out accuracy ({result.holdout_rows} rows)", ["task", "accuracy", "chance"],
                    [[t.name, result.accuracy[t.name], _chance(t)] for t in data.tasks])
        console.print(f"wrote teacher checkpoint to {args.out}")
    return 0


def _chance(task: TaskSpec) -> str:
    return f"{1 / task.num_outputs:.3f}" if task.kind == "multiclass" else "per label"


def _inspect(args: argparse.Namespace) -> int:
    meta, state = load_teacher(args.url)
    model = teacher_from_weights(meta, state, args.url)
    backbone = model.backbone
    params = sum(p.numel() for p in model.parameters())
    info = {
        "url": args.url,
        "arch": meta.backbone.arch,
        "width": meta.backbone.width,
        "small_input_stem": meta.backbone.small_input_stem,
        "input_size": meta.input_size,
        "blocks": [{"block": i + 1, "channels": c, "stride": s} for i, (c, s) in enumerate(zip(backbone.channels, backbone.strides))],
        "tasks": [{"name": t.name, "kind": t.kind, "names": list(t.names)} for t in meta.tasks],
        "params": params,
    }
    if args.json:
        print_json(info)
        return 0
    console.print(f"[bold]{args.url}[/bold]: {meta.backbone.arch} x{meta.backbone.width}"
                  f"{' small-input stem' if meta.backbone.small_input_stem else ''}, input {meta.input_size}px, {params:,} params")
    print_table("blocks", ["block", "channels", "output stride"], [[b["block"], b["channels"], b["stride"]] for b in info["blocks"]])
    print_table("tasks", ["task", "kind", "classes / labels"], [[t["name"], t["kind"], ", ".join(t["names"])] for t in info["tasks"]])
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ray_amalgam.amalgamation.pool import teacher_quality
    from ray_amalgam.io.catalogue import read_catalogue, write_catalogue

    catalogue = read_catalogue(args.catalogue)
    names = [n.strip() for n in args.teachers.split(",") if n.strip()] if args.teachers else [e.name for e in catalogue.accepted]
    by_name = {e.name: e for e in catalogue.entries}
    for name in names:
        if name not in by_name or not by_name[name].ok:
            raise BadInputError(f"--teachers: '{name}' is not an accepted teacher of {args.catalogue}")
    offered = {t.name for t in read_dataset_meta(args.data).tasks}
    data = load_labelled(args.data, sorted({t for n in names for t in by_name[n].task_names if t in offered}))
    measured = {}
    with progress_bar(args.json) as progress:
        bar = progress.add_task("evaluate teachers", total=len(names))
        for name in names:
            measured[name] = teacher_quality(by_name[name], data)
            progress.advance(bar)
    entries = tuple(e.model_copy(update={"quality": {**e.quality, **measured[e.name]}, "quality_data": args.data})
                    if measured.get(e.name) else e for e in catalogue.entries)
    write_catalogue(args.catalogue, catalogue.model_copy(update={"entries": entries}))
    if args.json:
        print_json({"catalogue": args.catalogue, "data": args.data, "rows": len(data.ids), "quality": measured})
        return 0
    print_table(f"teacher quality on {args.data} ({len(data.ids)} rows; accuracy, mAP for multilabel)", ["teacher", "quality"],
                [[n, ", ".join(f"{t} {v:.3f}" for t, v in q.items()) or "no labelled task"] for n, q in measured.items()])
    console.print(f"quality figures written to {args.catalogue}")
    return 0
