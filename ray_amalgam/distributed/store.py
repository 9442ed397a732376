"""The teacher-output store: one teacher pass over a dataset, written as Parquet, reused by
every later stage, epoch, rerun and sweep trial that has the same teachers, data and preprocessing.

Layout: `<root>/<split>-<key prefix>/` with Parquet files (`id`, `image` bytes, one column per
teacher head, hint columns) and `store.json`, the manifest, written last. A store is used only
when its manifest exists, names the same key, lists files that are all there with their
sizes, and holds every column the job needs; anything else is rebuilt, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
import ray.data

from ray_amalgam.amalgamation import AmalgamationPlan, hint_key, logits_key
from ray_amalgam.distributed.data_tasks import ENCODED
from ray_amalgam.distributed.pipeline import (
    TeacherPools,
    arrow_filesystem,
    decoded,
    read_rows,
    with_teachers,
)
from ray_amalgam.distributed.resources import ResourcePlan, teacher_pool_size
from ray_amalgam.io.checkpoints import checkpoint_hash
from ray_amalgam.io.fs import (
    atomic_write_text,
    committed_directory,
    exists,
    files_not_as_listed,
    join,
    modified_time,
    resolve,
)
from ray_amalgam.io.metafile import read_json
from ray_amalgam.io.shards import ID, IMAGE, list_shards, read_dataset_meta_bytes
from ray_amalgam.spec import JobSpec

STORE_FORMAT_VERSION = 1
MANIFEST = "store.json"
PREPROCESSING = "decode=PIL-RGB;normalize=teacher-mean-std;augment=none"
"""Changes to how teachers see pixels must change this string (and so every store key)."""


@dataclass(frozen=True)
class Store:
    url: str
    files: tuple[str, ...]
    columns: tuple[str, ...]
    num_rows: int
    rebuilt: bool


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


def store_key(plan: AmalgamationPlan, data_url: str) -> tuple[str, dict[str, Any]]:
    """sha256 over teacher checkpoints (content), data (dataset.json content, shard names, sizes,
    modification times) and preprocessing; also returns what went into it, for the manifest."""
    inputs = {
        "teachers": {name: checkpoint_hash(url) for name, url in sorted(plan.checkpoints.items())},
        "data": {
            "url": data_url,
            "dataset_json_sha256": hashlib.sha256(read_dataset_meta_bytes(data_url)).hexdigest(),
            "shards": [_file_fingerprint(shard) for shard in list_shards(data_url)],
        },
        "preprocessing": {
            "pipeline": PREPROCESSING,
            "input_size": plan.input_size,
            "normalization": {name: [list(m.mean), list(m.std)] for name, m in sorted(plan.teachers.items())},
        },
        "hint_channels": {t: {str(b): list(c) for b, c in sorted(blocks.items())} for t, blocks in sorted(plan.hint_channels.items())},
    }
    blob = json.dumps(inputs, sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest(), inputs


def _usable(store_url: str, key: str, needed: list[str]) -> Store | None:
    """The store at `store_url` if it is complete, current and has the `needed` columns."""
    manifest_url = join(store_url, MANIFEST)
    if not exists(manifest_url):
        return None
    manifest = read_json(manifest_url)
    if manifest.get("format_version") != STORE_FORMAT_VERSION or manifest.get("key") != key:
        return None
    if not set(needed) <= set(manifest.get("columns", [])):
        return None
    listed = {entry["name"]: entry["size"] for entry in manifest.get("files", [])}
    if files_not_as_listed(store_url, listed):
        return None
    files = [join(store_url, name) for name in sorted(listed)]
    return Store(store_url, tuple(files), tuple(manifest["columns"]), int(manifest["num_rows"]), rebuilt=False)


def ensure_store(
    job: JobSpec, plan: AmalgamationPlan, split: str, data_url: str, root: str, resources: ResourcePlan,
    extra_columns: list[str], board_name: str | None,
) -> Store:
    """A usable store of `data_url`'s teacher outputs under `root`, built by one teacher pass if needed.

    `extra_columns` (e.g. eval label columns) are carried into the store as they are.
    """
    key, inputs = store_key(plan, data_url)
    store_url = join(root, f"{split}-{key[:16]}")
    needed = [ID, IMAGE, *extra_columns, *target_columns(plan)]
    found = _usable(store_url, key, needed)
    if found is not None:
        return found
    _remove_stale(root, split, keep=store_url)
    batch = job.resources.teacher_batch_size
    # The actors load their checkpoints while the shards are listed and the pass is planned.
    with TeacherPools(plan, resources, teacher_pool_size(resources, len(plan.teachers)), board_name) as pools, \
            committed_directory(store_url, MANIFEST) as target:
        ds = read_rows(list_shards(data_url), [ID, IMAGE, *extra_columns], resources)
        ds = decoded(ds, data_url, resources, batch, keep_encoded=True, augment=False)
        ds = with_teachers(ds, pools, resources, batch)
        ds = ds.drop_columns([IMAGE]).rename_columns({ENCODED: IMAGE}).select_columns(needed)
        fs, target_path = resolve(target)
        ds.write_parquet(target_path, filesystem=arrow_filesystem(fs))
        entries = []
        rows = 0
        for path in sorted(fs.glob(posixpath.join(target_path, "*.parquet"))):
            with fs.open(path, "rb") as handle:
                rows += pq.ParquetFile(handle).metadata.num_rows
            entries.append({"name": posixpath.basename(path), "size": fs.info(path)["size"]})
        manifest = {
            "format_version": STORE_FORMAT_VERSION,
            "key": key,
            "inputs": inputs,
            "columns": needed,
            "num_rows": rows,
            "files": entries,
        }
        # The manifest goes last: a store without it is half-written and gets rebuilt.
        atomic_write_text(join(target, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True))
    found = _usable(store_url, key, needed)
    assert found is not None, f"{store_url}: store just written does not verify"
    return Store(found.url, found.files, found.columns, found.num_rows, rebuilt=True)


def _remove_stale(root: str, split: str, keep: str) -> None:
    """Delete other stores of the same split (other keys, half-written leftovers): they can never be used."""
    fs, root_path = resolve(root)
    if not fs.exists(root_path):
        return
    _, keep_path = resolve(keep)
    for path in fs.ls(root_path, detail=False):
        name = posixpath.basename(path.rstrip("/"))
        if name.startswith(f"{split}-") and path.rstrip("/") != keep_path.rstrip("/"):
            fs.rm(path, recursive=True)


def store_hint_channels(store: Store) -> dict[str, dict[int, tuple[int, ...]]]:
    """teacher -> block -> the channel indices the store's hint columns hold."""
    channels = read_json(join(store.url, MANIFEST))["inputs"]["hint_channels"]
    return {t: {int(b): tuple(c) for b, c in blocks.items()} for t, blocks in channels.items()}


def read_store(store: Store, columns: list[str], resources: ResourcePlan) -> ray.data.Dataset:
    """Only `columns` of the store's files, as a lazily read Ray Dataset."""
    return read_rows(list(store.files), columns, resources)
