"""Teacher-output stores: one per (teacher checkpoint content, data, preprocessing), written by
one teacher pass and reused by every later stage, epoch, rerun, sweep trial and other job that
uses the same teacher on the same data, whatever other teachers it has.

Layout: `<root>/<split>-teacher-<key prefix>/` with `part-NNNNN.parquet` per data shard (`id`,
`logits/<task>` for EVERY head of the teacher, `hint/<block>` columns) in the shard's row order,
and `store.json`, the manifest, written last. Heads are all kept because each costs an average
pool and a linear layer on features the pass computes anyway, and so one store serves any task subset.
A job reads the data shards (`id`, `image`) joined by `id` with the stores of its teachers.
A store is used only when its manifest exists, names the same key and lists files that are all
there with their sizes; anything else is rebuilt, never silently used. Whole-set stores of
earlier versions (`<split>-<key prefix>/`, one store for all teachers) are replaced, with a message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
import torch

from ray_amalgam.amalgamation import AmalgamationPlan, StoredTargets, TeacherRunner, hint_key, load_teacher_model, logits_key
from ray_amalgam.distributed.data_tasks import join_teacher_stores, store_column, write_shard_outputs, write_teacher_outputs
from ray_amalgam.distributed.errors import named_error
from ray_amalgam.distributed.pipeline import TeacherPools
from ray_amalgam.distributed.resources import ResourcePlan
from ray_amalgam.io.checkpoints import checkpoint_hash
from ray_amalgam.io.fs import (
    atomic_write_text,
    committed_directory,
    exists,
    file_sizes,
    files_not_as_listed,
    join,
    modified_time,
    resolve,
)
from ray_amalgam.io.metafile import read_json
from ray_amalgam.io.shards import ID, count_rows, list_shards, read_dataset_meta_bytes
from ray_amalgam.spec import JobSpec

_log = logging.getLogger(__name__)

STORE_FORMAT_VERSION = 2
MANIFEST = "store.json"
PREPROCESSING = "decode=PIL-RGB;normalize=teacher-mean-std;augment=none"
"""Changes to how teachers see pixels must change this string (and so every store key)."""
LOAD_BATCH_ROWS = 4096


@dataclass(frozen=True)
class Store:
    """The teacher stores a job reads, joined with its data shards."""

    url: str
    """The root the teacher stores lie under."""
    shards: tuple[str, ...]
    teachers: dict[str, str]
    """teacher name (in this job) -> its store's URL."""
    num_rows: int
    rebuilt: bool
    """Whether this call ran a teacher pass (for some of the teachers)."""
    computed: tuple[str, ...] = ()
    """The teachers whose outputs this call computed; the others' stores were reused."""
    hint_channels: dict[str, dict[int, tuple[int, ...]]] = field(default_factory=dict)


def target_columns(plan: AmalgamationPlan) -> list[str]:
    """The teacher-output columns a job reads: one per (teacher, chosen head), plus hint columns."""
    columns = [logits_key(teacher, task) for task in plan.task_names for teacher in plan.sources[task]]
    for teacher, blocks in plan.hint_channels.items():
        columns += [hint_key(teacher, block) for block in sorted(blocks)]
    return columns


def _file_fingerprint(url: str) -> dict[str, Any]:
    fs, path = resolve(url)
    info = fs.info(path)
    # Size plus the store's notion of modification time: a rewritten shard changes the key.
    return {"name": posixpath.basename(path), "size": info["size"], "modified": modified_time(info) or "None"}


def data_inputs(data_url: str) -> dict[str, Any]:
    """What identifies a dataset's content: dataset.json, shard names, sizes and modification times."""
    return {
        "url": data_url,
        "dataset_json_sha256": hashlib.sha256(read_dataset_meta_bytes(data_url)).hexdigest(),
        "shards": [_file_fingerprint(shard) for shard in list_shards(data_url)],
    }


def teacher_store_key(plan: AmalgamationPlan, teacher: str, teacher_hash: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """sha256 over one teacher's checkpoint content, the data, the preprocessing and its kept hint
    channels; also returns what went into it, for the manifest."""
    meta = plan.teachers[teacher]
    inputs = {
        "teacher": teacher_hash,
        "data": data,
        "preprocessing": {"pipeline": PREPROCESSING, "input_size": meta.input_size, "mean": list(meta.mean), "std": list(meta.std)},
        "hint_channels": {str(b): list(c) for b, c in sorted(plan.hint_channels.get(teacher, {}).items())},
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest(), inputs


def _usable(store_url: str, key: str) -> dict[str, Any] | None:
    """The manifest of the store at `store_url` if it is complete and current."""
    manifest_url = join(store_url, MANIFEST)
    if not exists(manifest_url):
        return None
    manifest = read_json(manifest_url)
    if manifest.get("format_version") != STORE_FORMAT_VERSION or manifest.get("key") != key:
        return None
    listed = {entry["name"]: entry["size"] for entry in manifest.get("files", [])}
    if files_not_as_listed(store_url, listed):
        return None
    return manifest


def _all_heads(plan: AmalgamationPlan, names: list[str]) -> AmalgamationPlan:
    """The plan of a store pass: only `names`, each evaluating every one of its heads."""
    tasks = {t.name: t for name in names for t in plan.teachers[name].tasks}
    sources = {task: tuple(n for n in names if task in plan.teachers[n].task_names) for task in tasks}
    return replace(
        plan, tasks=tuple(tasks.values()), sources=sources,
        teachers={n: plan.teachers[n] for n in names}, checkpoints={n: plan.checkpoints[n] for n in names},
        hint_channels={n: c for n, c in plan.hint_channels.items() if n in names},
    )


def ensure_store(
    job: JobSpec, plan: AmalgamationPlan, split: str, data_url: str, root: str, resources: ResourcePlan,
    extra_columns: list[str], board_name: str | None, keep_rows: Callable[[pa.Table], None] | None = None,
) -> Store:
    """Usable stores of `data_url`'s teacher outputs under `root`, one per teacher of the plan:
    the current ones are reused, and ONE teacher pass computes the outputs of the others only.

    `extra_columns` (e.g. eval label columns) are read from the data shards beside the outputs.
    `keep_rows`: given the pass's rows, decoded, with its outputs, where the pass runs in this
    process (`write_shard_outputs`); never called when no pass runs here.
    """
    del extra_columns  # read from the shards by read_store: nothing of the data is copied
    _replace_whole_set_stores(root, split)
    data = data_inputs(data_url)
    shards = list_shards(data_url)
    urls: dict[str, str] = {}
    keys: dict[str, tuple[str, dict[str, Any]]] = {}
    manifests: dict[str, dict[str, Any]] = {}
    for name, checkpoint in plan.checkpoints.items():
        key, inputs = teacher_store_key(plan, name, checkpoint_hash(checkpoint), data)
        urls[name], keys[name] = join(root, f"{split}-teacher-{key[:16]}"), (key, inputs)
        found = _usable(urls[name], key)
        if found is not None:
            manifests[name] = found
    missing = [name for name in plan.checkpoints if name not in manifests]
    if missing:
        for name in missing:
            _remove_replaced(root, split, plan.checkpoints[name], keep=urls[name])
        manifests.update(_teacher_pass(job, _all_heads(plan, missing), shards, {n: urls[n] for n in missing},
                                       {n: keys[n] for n in missing}, resources, board_name, keep_rows))
    rows = {int(m["num_rows"]) for m in manifests.values()}
    assert len(rows) == 1, f"teacher stores of {data_url} hold different row counts {sorted(rows)}"
    channels = {name: {int(b): tuple(c) for b, c in m["inputs"]["hint_channels"].items()} for name, m in manifests.items()}
    return Store(root, tuple(shards), urls, rows.pop(), rebuilt=bool(missing), computed=tuple(missing),
                 hint_channels={n: c for n, c in channels.items() if c})


DRIVER_PASS_PIXEL_BYTES = 1 << 30
"""Decoded pixels up to which `store_pass: auto` runs a local job's teacher pass in the driver.
Actor pools cost a process, torch and the checkpoint per actor plus a task per shard (15-20 s
on 2 cores) before the first output; the driver has the teachers' code loaded already and uses
every core through torch's threads, so for data this size it finishes first."""


def pass_device(job: JobSpec, resources: ResourcePlan, shards: list[str], input_size: int) -> torch.device | None:
    """The device of the driver-side teacher pass, or None where the pass runs on actor pools."""
    choice = job.resources.store_pass
    wants_gpu = job.resources.teacher_gpu_fraction > 0 or job.resources.gpus_per_worker > 0
    if choice == "actors":
        return None
    if choice == "auto" and not (
        resources.local
        and (torch.cuda.is_available() or not wants_gpu)
        and count_rows(shards) * input_size**2 * 3 <= DRIVER_PASS_PIXEL_BYTES
    ):
        return None
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def _teacher_pass(
    job: JobSpec, plan: AmalgamationPlan, shards: list[str], urls: dict[str, str],
    keys: dict[str, tuple[str, dict[str, Any]]], resources: ResourcePlan, board_name: str | None,
    keep_rows: Callable[[pa.Table], None] | None,
) -> dict[str, dict[str, Any]]:
    """Run the plan's teachers over every shard, each writing its own store: in the driver, shard
    by shard, or on teacher actor pools, a Ray task per shard (`pass_device`)."""
    device = pass_device(job, resources, shards, plan.input_size)
    batch_size = job.resources.teacher_batch_size
    with ExitStack() as stack:
        targets = {name: stack.enter_context(committed_directory(url, MANIFEST)) for name, url in urls.items()}
        if device is not None:
            runners = [TeacherRunner(name, load_teacher_model(plan.checkpoints[name]), plan, device) for name in plan.checkpoints]

            def outputs_of(pixels: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
                return {runner.name: runner.outputs(pixels) for runner in runners}

            rows = [write_shard_outputs(shard, index, outputs_of, targets, batch_size, keep_rows) for index, shard in enumerate(shards)]
        else:
            pools = stack.enter_context(TeacherPools(plan, resources, None, board_name))
            calls = [
                write_teacher_outputs.options(num_cpus=resources.data_task_cpus).remote(
                    shard, index, pools.actors, targets, batch_size)
                for index, shard in enumerate(shards)
            ]
            try:
                rows = ray.get(calls)
            except ray.exceptions.RayTaskError as error:  # a bad row: its own one-line error
                raise named_error(error) from None
        manifests = {}
        for name, target in targets.items():
            key, inputs = keys[name]
            sizes = file_sizes(target)
            manifests[name] = {
                "format_version": STORE_FORMAT_VERSION,
                "key": key,
                "inputs": {**inputs, "checkpoint": plan.checkpoints[name]},
                "tasks": list(plan.teachers[name].task_names),
                "num_rows": sum(rows),
                "shard_rows": rows,
                "pass": "driver" if device is not None else "actors",
                "files": [{"name": n, "size": s} for n, s in sorted(sizes.items())],
            }
            # The manifest goes last: a store without it is half-written and gets rebuilt.
            atomic_write_text(join(target, MANIFEST), json.dumps(manifests[name], indent=2, sort_keys=True))
    return manifests


def _store_dirs(root: str, split: str) -> list[str]:
    fs, root_path = resolve(root)
    if not fs.exists(root_path):
        return []
    return [p.rstrip("/") for p in fs.ls(root_path, detail=False) if posixpath.basename(p.rstrip("/")).startswith(f"{split}-")]


def _remove_replaced(root: str, split: str, checkpoint: str, keep: str) -> None:
    """Delete stores of the same split made from an earlier content of `checkpoint` (a teacher
    rewritten in place) and half-written ones: they can never be used again."""
    fs, _ = resolve(root)
    _, keep_path = resolve(keep)
    for path in _store_dirs(root, split):
        if path == keep_path.rstrip("/") or "-teacher-" not in posixpath.basename(path):
            continue
        manifest = posixpath.join(path, MANIFEST)
        if not fs.exists(manifest) or json.loads(fs.cat_file(manifest)).get("inputs", {}).get("checkpoint") == checkpoint:
            fs.rm(path, recursive=True)


def _replace_whole_set_stores(root: str, split: str) -> None:
    """Stores of earlier versions held every teacher of one job together: their outputs cannot be
    shared by teacher, so they are removed and the teachers' own stores are built instead."""
    fs, _ = resolve(root)
    for path in _store_dirs(root, split):
        if "-teacher-" not in posixpath.basename(path):
            _log.warning("%s: a whole-set teacher store of an earlier version; replaced by one store per teacher (one teacher pass)", path)
            fs.rm(path, recursive=True)


def store_hint_channels(store: Store) -> dict[str, dict[int, tuple[int, ...]]]:
    """teacher -> block -> the channel indices the stores' hint columns hold."""
    return store.hint_channels


def _store_reads(store: Store, columns: list[str]) -> tuple[list[str], dict[str, str], dict[str, dict[str, str]]]:
    """How to read `columns`: (the data shards' own columns, id first; the teacher stores to open;
    per store, its column -> the job's column)."""
    wanted: dict[str, dict[str, str]] = {name: {} for name in store.teachers}
    base = []
    for column in columns:
        owner = next((n for n in store.teachers if column.startswith((f"logits/{n}/", f"hint/{n}/"))), None)
        if owner is None:
            base.append(column)
        else:
            wanted[owner][store_column(owner, column)] = column
    if ID not in base:
        base.insert(0, ID)
    stores = {name: url for name, url in store.teachers.items() if wanted[name]}
    return base, stores, {n: wanted[n] for n in stores}


def read_store(store: Store, columns: list[str], resources: ResourcePlan, batch_size: int = 256) -> ray.data.Dataset:
    """`columns` (`id`, `image`, data columns and the job's teacher-output columns), a lazily
    read Ray Dataset: each shard's rows joined by id with the same rows of every teacher store."""
    base, stores, wanted = _store_reads(store, columns)
    indices = ray.data.from_items([{"index": i} for i in range(len(store.shards))], override_num_blocks=len(store.shards))
    return indices.map_batches(
        join_teacher_stores, batch_size=1, batch_format="numpy", num_cpus=resources.data_task_cpus,
        fn_kwargs={"shards": list(store.shards), "base_columns": base, "stores": stores, "columns": wanted, "batch_size": batch_size},
    ).select_columns(columns)


def store_tables(store: Store, columns: list[str], batch_size: int) -> Iterator[tuple[str, pa.Table]]:
    """`columns` (as `read_store`), read in this process: every shard in order, `batch_size`
    rows at a time, each with the URL of the data shard it comes from."""
    base, stores, wanted = _store_reads(store, columns)
    for index, shard in enumerate(store.shards):
        for table in join_teacher_stores({"index": [index]}, list(store.shards), base, stores, wanted, batch_size):
            yield shard, table.select(columns)


def load_store_targets(store: Store, columns: list[str]) -> StoredTargets:
    """Every row's id and teacher-output `columns`, read whole into this process: for a job that
    trains in one process (a sweep trial with one CPU worker), without a Ray Data pipeline."""
    ids: list[np.ndarray] = []
    values: dict[str, list[np.ndarray]] = {column: [] for column in columns}
    for _, table in store_tables(store, [ID, *columns], LOAD_BATCH_ROWS):
        ids.append(table.column(ID).to_numpy(zero_copy_only=False))
        for column in columns:
            # Per chunk: multi-dimensional outputs are Ray's tensor extension arrays.
            values[column] += [chunk.to_numpy(zero_copy_only=False) for chunk in table.column(column).chunks]
    return np.concatenate(ids), {column: np.concatenate(parts) for column, parts in values.items()}
