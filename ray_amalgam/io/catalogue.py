"""A pool's catalogue as one Parquet file, and finding the checkpoints under a prefix.

The catalogue is small (one row per teacher) and written whole, atomically: a reader sees the
old or the new catalogue, never a part.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ray_amalgam.io.checkpoints import TEACHER_META, WEIGHTS
from ray_amalgam.io.fs import TEMP_MARK, atomic_write_bytes, join, modified_time, read_bytes, resolve
from ray_amalgam.spec import CATALOGUE_FORMAT_VERSION, BadInputError, Catalogue, CatalogueEntry, TaskSpec

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
"""Files that hold pickled weights: listed (as refused) so that a pool's owner sees them."""

_TASK = pa.struct([("name", pa.string()), ("kind", pa.string()), ("names", pa.list_(pa.string()))])
SCHEMA = pa.schema([
    ("name", pa.string()),
    ("url", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("fingerprint", pa.string()),
    ("hash", pa.string()),
    ("arch", pa.string()),
    ("width", pa.float64()),
    ("small_input_stem", pa.bool_()),
    ("input_size", pa.int64()),
    ("mean", pa.list_(pa.float64())),
    ("std", pa.list_(pa.float64())),
    ("tasks", pa.list_(_TASK)),
    ("params", pa.int64()),
    ("flops", pa.int64()),
    ("quality", pa.map_(pa.string(), pa.float64())),
    ("quality_data", pa.string()),
])
_META_KEY = b"ray_amalgam"


@dataclass(frozen=True)
class Candidate:
    """A checkpoint found under a pool prefix: a directory with teacher files, or a loose pickle."""

    name: str
    url: str
    fingerprint: str
    pickled_file: bool


def _row(entry: CatalogueEntry) -> dict[str, Any]:
    row = entry.model_dump(mode="json")
    row["tasks"] = [{"name": t.name, "kind": t.kind, "names": list(t.names)} for t in entry.tasks]
    row["quality"] = list(entry.quality.items())
    return row


def _entry(row: dict[str, Any]) -> CatalogueEntry:
    tasks = [
        TaskSpec(name=t["name"], kind=t["kind"], **{"classes" if t["kind"] == "multiclass" else "labels": tuple(t["names"])})
        for t in row.pop("tasks") or []
    ]
    quality = dict(row.pop("quality") or [])
    return CatalogueEntry.model_validate({**{k: v for k, v in row.items() if v is not None}, "tasks": tasks, "quality": quality})


def write_catalogue(url: str, catalogue: Catalogue) -> None:
    """Write the catalogue as Parquet (prefix and format version in the file's metadata)."""
    table = pa.Table.from_pylist([_row(e) for e in catalogue.entries], schema=SCHEMA)
    meta = json.dumps({"format_version": catalogue.format_version, "prefix": catalogue.prefix}).encode("utf-8")
    table = table.replace_schema_metadata({_META_KEY: meta})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(url, sink.getvalue().to_pybytes())


def read_catalogue(url: str) -> Catalogue:
    """A catalogue written by `write_catalogue`; BadInputError naming the file otherwise."""
    data = read_bytes(url)
    try:
        table = pq.read_table(pa.BufferReader(data))
        info = json.loads((table.schema.metadata or {})[_META_KEY])
    except (pa.ArrowInvalid, KeyError, json.JSONDecodeError) as error:
        raise BadInputError(f"{url}: not a pool catalogue ({error}); expected the Parquet file `ray-amalgam pool index` writes") from None
    if info.get("format_version") != CATALOGUE_FORMAT_VERSION:
        raise BadInputError(f"{url}: catalogue format_version {info.get('format_version')!r} is not supported; "
                            f"this ray_amalgam reads {CATALOGUE_FORMAT_VERSION} (index the pool again)")
    return Catalogue(prefix=info["prefix"], entries=tuple(_entry(row) for row in table.to_pylist()))


def _fingerprint(files: list[tuple[str, dict[str, Any]]]) -> str:
    digest = hashlib.sha256()
    for name, info in sorted(files, key=lambda item: item[0]):
        digest.update(f"{name}\0{info['size']}\0{modified_time(info)}\n".encode())
    return digest.hexdigest()


def find_checkpoints(prefix: str) -> list[Candidate]:
    """Every checkpoint under `prefix`, from one listing: each directory holding teacher.json or
    model.safetensors, and each loose pickle file (PICKLE_SUFFIXES). Names are paths relative to
    the prefix with '/' turned into '-'; leftovers of interrupted writes are skipped."""
    fs, root = resolve(prefix)
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise BadInputError(f"{prefix}: no such directory or prefix; expected the URL of a folder of teacher checkpoints")
    by_directory: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for path, info in fs.find(root, detail=True).items():
        relative = posixpath.relpath(path, root)
        if TEMP_MARK in relative or info.get("type") == "directory":
            continue
        by_directory[posixpath.dirname(relative)].append((posixpath.basename(relative), info))
    checkpoints = {d for d, files in by_directory.items() if {TEACHER_META, WEIGHTS} & {name for name, _ in files}}
    found = []
    for directory, files in by_directory.items():
        inside = [d for d in checkpoints if d and (directory == d or directory.startswith(d + "/"))]
        if directory in checkpoints:
            # Everything below the checkpoint directory counts, as in `checkpoint_hash`.
            listed = [(posixpath.relpath(posixpath.join(sub, name), directory), info)
                      for sub, sub_files in by_directory.items() if sub == directory or sub.startswith(directory + "/")
                      for name, info in sub_files] if directory else files
            found.append(Candidate(_name(directory), join(prefix, directory), _fingerprint(listed), pickled_file=False))
        elif not inside:
            for name, info in files:
                if name.endswith(PICKLE_SUFFIXES):
                    relative = posixpath.join(directory, name)
                    found.append(Candidate(_name(relative), join(prefix, relative), _fingerprint([(name, info)]), pickled_file=True))
    return sorted(found, key=lambda c: c.name)


def _name(relative: str) -> str:
    return relative.replace("/", "-") or "."
