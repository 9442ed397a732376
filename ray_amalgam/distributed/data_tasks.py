"""The functions Ray Data runs as tasks: decode (and augment) images, keep the held-out or the
training rows, and ask the teacher actors for their outputs.

Kept apart, on numpy, PIL and Ray alone, because Ray starts worker processes for these tasks
freely and each one imports this module's dependencies: torch and torchvision would cost
seconds per process, paid again at every new epoch's first batch.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import ray

from ray_amalgam.io.images import decode_batch, random_flip_shift
from ray_amalgam.io.shards import ID, IMAGE, holdout_mask

ENCODED = "image_encoded"
"""Column carrying the original image bytes past decoding, when a store must keep them."""


def decode_images(batch: dict[str, np.ndarray], where: str, keep_encoded: bool, augment: bool) -> dict[str, np.ndarray]:
    """Replace the `image` bytes with (N, H, W, 3) uint8 pixels; optionally random flip + shift."""
    encoded = batch[IMAGE]
    pixels = decode_batch(list(encoded), where)
    if augment:
        pixels = random_flip_shift(pixels, np.random.default_rng())
    if keep_encoded:
        batch[ENCODED] = encoded
    batch[IMAGE] = pixels
    return batch


def holdout_rows(batch: dict[str, np.ndarray], held: bool, fraction: float) -> dict[str, np.ndarray]:
    """Keep the rows held out for fidelity (`held`) or the training rows: by id hash, like the local runner."""
    mask = holdout_mask([str(i) for i in batch[ID]], fraction)
    keep = mask if held else ~mask
    return {key: value[keep] for key, value in batch.items()}


def ask_teachers(pixels: np.ndarray, actors: dict[str, list[Any]], turn: int | None = None) -> list[Any]:
    """Calls (object refs, in the pools' order) asking one actor of every teacher pool at once
    for its outputs on `pixels`: the `turn`-th actor of each pool, or one at random; either
    spreads a pool's load. The pixels go to the object store once, read by every teacher."""
    shared = ray.put(pixels)
    return [(random.choice(pool) if turn is None else pool[turn % len(pool)]).outputs.remote(shared) for pool in actors.values()]


def with_answers(batch: dict[str, np.ndarray], calls: list[Any]) -> dict[str, np.ndarray]:
    """A copy of the batch with the outputs of `calls` (from `ask_teachers`) appended."""
    merged = dict(batch)
    for outputs in ray.get(calls):
        merged.update(outputs)
    return merged


STORE_PART = "part-{index:05d}.parquet"
"""A teacher store's file for data shard `index`: its rows in the shard's order."""


def store_column(teacher: str, key: str) -> str:
    """A teacher's output column as its own store names it, without the teacher's name (the same
    teacher may have other names in other jobs): `logits/<teacher>/<task>` -> `logits/<task>`."""
    return key.replace(f"/{teacher}/", "/", 1)


def _arrow_column(values: np.ndarray) -> Any:
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray.from_numpy(values) if values.ndim > 1 else values


TeacherOutputs = Callable[[np.ndarray], dict[str, dict[str, np.ndarray]]]
"""uint8 pixels -> teacher name -> that teacher's output columns for them."""


def write_shard_outputs(
    shard_url: str, index: int, outputs_of: TeacherOutputs, targets: dict[str, str], batch_size: int,
    keep_rows: Callable[[Any], None] | None = None,
) -> int:
    """One teacher pass over one data shard: `outputs_of` gives every teacher's outputs for each
    batch, and each teacher's go to its own store (`targets[teacher]`), one Parquet file per
    shard in the shard's row order, so that stores of different teachers line up row by row.
    `keep_rows` gets each batch as a table of ids, decoded pixels and every teacher's outputs
    (named as the job names them), for a caller that trains on them next without reading the
    store again. Returns the row count; a bad image's error names the shard and its row there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_amalgam.io.fs import join, resolve
    from ray_amalgam.io.shards import iter_shard_batches

    writers: dict[str, Any] = {}
    handles = []
    rows = 0
    try:
        for batch in iter_shard_batches(shard_url, [ID, IMAGE], batch_size):
            pixels = decode_batch(batch.column(IMAGE).to_pylist(), shard_url, first_row=rows)
            answers = outputs_of(pixels)
            if keep_rows is not None:
                columns = {k: _arrow_column(v) for outputs in answers.values() for k, v in outputs.items()}
                keep_rows(pa.table({ID: batch.column(ID), IMAGE: _arrow_column(pixels), **columns}))
            for name, outputs in answers.items():
                table = pa.table({ID: batch.column(ID), **{store_column(name, k): _arrow_column(v) for k, v in outputs.items()}})
                if name not in writers:
                    fs, path = resolve(join(targets[name], STORE_PART.format(index=index)))
                    handles.append(fs.open(path, "wb"))
                    writers[name] = pq.ParquetWriter(handles[-1], table.schema)
                writers[name].write_table(table)
            rows += batch.num_rows
    finally:
        for writer in writers.values():
            writer.close()
        for handle in handles:
            handle.close()
    return rows


@ray.remote
def write_teacher_outputs(
    shard_url: str, index: int, actors: dict[str, list[Any]], targets: dict[str, str], batch_size: int,
) -> int:
    """`write_shard_outputs` as a Ray task, asking one actor of every teacher pool per batch."""

    def outputs_of(pixels: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        return dict(zip(actors, ray.get(ask_teachers(pixels, actors))))

    return write_shard_outputs(shard_url, index, outputs_of, targets, batch_size)


def join_teacher_stores(
    batch: dict[str, np.ndarray], shards: list[str], base_columns: list[str], stores: dict[str, str],
    columns: dict[str, dict[str, str]], batch_size: int,
) -> Any:
    """For each shard index in `batch`: the shard's `base_columns` joined by `id` with the chosen
    `columns` (store column -> job column) of every teacher store, `batch_size` rows at a time.
    The stores were written in the shard's row order; a row whose ids disagree is an error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_amalgam.io.fs import join, resolve
    from ray_amalgam.io.shards import iter_shard_batches

    for index in batch["index"]:
        index = int(index)
        parts = {}
        for name, url in stores.items():
            fs, path = resolve(join(url, STORE_PART.format(index=index)))
            if not fs.exists(path):  # an empty shard has no part
                break
            parts[name] = pq.ParquetFile(fs.open(path, "rb")).iter_batches(batch_size=batch_size, columns=[ID, *columns[name]])
        else:
            for base in iter_shard_batches(shards[index], base_columns, batch_size):
                table = pa.Table.from_batches([base])
                for name, part in parts.items():
                    other = next(part)
                    if not other.column(ID).equals(base.column(ID)):
                        raise RuntimeError(f"{stores[name]}: rows of part {index} do not line up with {shards[index]}; delete that store to rebuild it")
                    for stored, wanted in columns[name].items():
                        table = table.append_column(wanted, other.column(stored))
                yield table
