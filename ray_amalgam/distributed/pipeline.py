"""The data side: read shards, decode (and augment) images and split off the held-out rows as
Ray Data CPU tasks (`data_tasks`) or, for rows that fit one node's memory, in the driver
(`DriverRows`); and the long-lived teacher actor pools that answer for them."""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.data
import torch
from fsspec.implementations.local import LocalFileSystem

from ray_amalgam.amalgamation import AmalgamationPlan, TeacherRunner, load_teacher_model
from ray_amalgam.amalgamation.runner import HOLDOUT_FRACTION
from ray_amalgam.distributed.data_tasks import ask_teachers, decode_images, holdout_rows, with_answers
from ray_amalgam.distributed.progress import board_handle
from ray_amalgam.distributed.resources import ResourcePlan, check_placement, teacher_pool_sizes
from ray_amalgam.io.fs import resolve
from ray_amalgam.io.images import decode_batch
from ray_amalgam.io.shards import ID, IMAGE, holdout_mask


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem | None:
    """What Ray Data's Parquet read/write should use for `fs`: None (Arrow's own) for local
    paths, the fsspec filesystem wrapped for Arrow otherwise (s3, gs, ...)."""
    return None if isinstance(fs, LocalFileSystem) else pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def read_rows(files: list[str], columns: list[str], resources: ResourcePlan) -> ray.data.Dataset:
    """Parquet files (one filesystem) as a lazily read Ray Dataset of `columns`."""
    fs, _ = resolve(files[0])
    paths = [resolve(f)[1] for f in files]
    # select_columns is pushed down into the Parquet read: unneeded columns are never read.
    return ray.data.read_parquet(paths, filesystem=arrow_filesystem(fs), num_cpus=resources.data_task_cpus).select_columns(columns)


@ray.remote(max_restarts=-1, max_task_retries=-1)
class TeacherActor:
    """One teacher, loaded once from its checkpoint URL, alive for the whole job.

    Long-lived on purpose: Ray Data's own actor pools start new actors (a process, torch, the
    checkpoint) for every execution, i.e. every epoch and stage; these are started once.
    A killed actor is restarted by Ray and the call it was serving is retried, so each row
    still gets its outputs exactly once. Constructor arguments are small (a URL, the plan) so
    Ray keeps them inline, which restarts need.
    """

    def __init__(self, name: str, checkpoint: str, plan: AmalgamationPlan, board_name: str | None) -> None:
        device = torch.device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")
        self.runner = TeacherRunner(name, load_teacher_model(checkpoint), plan, device)
        self.actor_id = ray.get_runtime_context().get_actor_id()
        self.board = board_handle(board_name) if board_name else None
        if self.board is not None:
            context = ray.get_runtime_context()
            self.board.teacher_started.remote(self.actor_id, name, context.current_actor, context.get_node_id())

    def outputs(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The teacher's filtered outputs for (N, H, W, 3) uint8 pixels."""
        outputs = self.runner.outputs(pixels)
        if self.board is not None:
            self.board.teacher_batch.remote(self.actor_id, self.runner.name)
        return outputs

    def peak_memory_bytes(self) -> int:
        """This actor process's peak resident memory (what one teacher costs a node)."""
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class TeacherPools:
    """Long-lived actors per teacher, started together; `close()` ends them.

    `sizes`: actors per teacher (an int: the same for all); None sizes the pools by each
    teacher's per-image cost (`plan.costs`, FLOPs) and what the cluster has free. The placement
    of all pools is checked against the cluster before any actor starts.
    """

    def __init__(self, plan: AmalgamationPlan, resources: ResourcePlan, sizes: dict[str, int] | int | None, board_name: str | None) -> None:
        if sizes is None:
            sizes = teacher_pool_sizes(resources, {name: plan.costs.get(name, 0.0) for name in plan.checkpoints})
        elif isinstance(sizes, int):
            sizes = dict.fromkeys(plan.checkpoints, sizes)
        check_placement(resources, sizes, ray.cluster_resources())
        self.sizes = sizes
        options: dict[str, Any] = {"num_cpus": resources.teacher_actor_cpus}
        if resources.teacher_actor_gpus > 0:
            options["num_gpus"] = resources.teacher_actor_gpus
        if resources.teacher_actor_resources:
            options["resources"] = dict(resources.teacher_actor_resources)
        self.actors = {
            name: [TeacherActor.options(**options).remote(name, checkpoint, plan, board_name) for _ in range(sizes[name])]
            for name, checkpoint in plan.checkpoints.items()
        }

    def close(self) -> None:
        for actors in self.actors.values():
            for actor in actors:
                ray.kill(actor)

    def __enter__(self) -> TeacherPools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TeacherFeed:
    """A train worker's batches with every teacher's outputs appended, asked of the long-lived
    teacher actors by the worker itself, `window` batches ahead of the step (each pool's actors
    take turns). No Ray Data stage stands between the actors and the step, so an epoch starts
    as fast as a store epoch and the actors' latency hides behind the steps."""

    def __init__(self, actors: dict[str, list[Any]], window: int) -> None:
        self.actors = actors
        self.window = max(1, window)

    def __call__(self, batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        pending: collections.deque[tuple[dict[str, np.ndarray], list[Any]]] = collections.deque()
        for turn, batch in enumerate(batches):
            pending.append((batch, ask_teachers(batch[IMAGE], self.actors, turn)))
            if len(pending) >= self.window:
                yield with_answers(*pending.popleft())
        while pending:
            yield with_answers(*pending.popleft())


def holdout_split(ds: ray.data.Dataset, held: bool, resources: ResourcePlan) -> ray.data.Dataset:
    return ds.map_batches(holdout_rows, fn_kwargs={"held": held, "fraction": HOLDOUT_FRACTION}, batch_format="numpy", num_cpus=resources.data_task_cpus)


def decoded(ds: ray.data.Dataset, where: str, resources: ResourcePlan, batch_size: int, keep_encoded: bool, augment: bool) -> ray.data.Dataset:
    return ds.map_batches(
        decode_images,
        fn_kwargs={"where": where, "keep_encoded": keep_encoded, "augment": augment},
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=resources.data_task_cpus,
    )


@dataclass(frozen=True)
class DriverRows:
    """Rows the driver decoded and put whole in the object store, as Arrow tables in row order.
    Train workers read their shares straight from there (`share`): no Ray Data pipeline, whose
    executor, stats and coordinator actors would start and then compete with the step for the
    cores of a small machine while the rows are read."""

    blocks: tuple[ray.ObjectRef, ...]
    block_rows: tuple[int, ...]

    def count(self) -> int:
        return sum(self.block_rows)

    def share(self, rank: int, world: int) -> RowsShare:
        """Worker `rank`'s equal, contiguous share of the rows (as a split dataset's: a remainder
        of fewer than `world` rows is left out, so that every worker takes the same steps)."""
        size = self.count() // world
        return RowsShare(self, rank * size, (rank + 1) * size)


@dataclass(frozen=True)
class RowsShare:
    """Rows `start` to `stop` of `rows`, read block by block as a worker's epoch asks for them."""

    rows: DriverRows
    start: int
    stop: int

    def _tables(self) -> Iterator[pa.Table]:
        offset = 0
        for block, count in zip(self.rows.blocks, self.rows.block_rows):
            begin, end = max(self.start, offset), min(self.stop, offset + count)
            if begin < end:
                yield ray.get(block).slice(begin - offset, end - begin)  # zero-copy from the object store
            offset += count

    def iter_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """The share in order, `batch_size` rows at a time (the last batch may be smaller), in
        the numpy format of `Dataset.iter_batches`."""
        from ray.data.block import BlockAccessor

        pending: list[pa.Table] = []
        held = 0
        for table in self._tables():
            pending.append(table)
            held += table.num_rows
            while held >= batch_size:
                joined = pa.concat_tables(pending) if len(pending) > 1 else pending[0]
                yield BlockAccessor.for_block(joined.slice(0, batch_size)).to_batch_format("numpy")
                rest = joined.slice(batch_size)
                pending, held = ([rest] if rest.num_rows else []), rest.num_rows
        if held:
            yield BlockAccessor.for_block(pa.concat_tables(pending)).to_batch_format("numpy")


def decoded_in_driver(tables: Iterable[tuple[str, pa.Table]], held: bool, workers: int) -> tuple[DriverRows, DriverRows]:
    """`split_in_driver` for `tables` whose images are still encoded, each with the URL of the
    shard its rows come from (in shard order), decoded in this process on the way.

    For rows that fit in memory on one node: Ray Data's route (a read, a split and a decode task
    per block, each result materialized) costs many times the decode itself on a small machine."""
    from ray.data.extensions import ArrowTensorArray

    def decoded() -> Iterator[pa.Table]:
        shard_rows: collections.Counter[str] = collections.Counter()
        for shard, table in tables:
            pixels = decode_batch(table.column(IMAGE).to_pylist(), shard, first_row=shard_rows[shard])
            shard_rows[shard] += table.num_rows
            yield table.set_column(table.schema.get_field_index(IMAGE), IMAGE, ArrowTensorArray.from_numpy(pixels))

    return split_in_driver(decoded(), held, workers)


def split_in_driver(tables: Iterable[pa.Table], held: bool, workers: int) -> tuple[DriverRows, DriverRows]:
    """The training rows and the check rows (the held-out ones; with `held` False, the training
    rows again) of `tables` (decoded rows), split in this process and put whole in the object store."""
    train: list[pa.Table] = []
    check: list[pa.Table] = []
    for table in tables:
        mask = holdout_mask([str(i) for i in table.column(ID).to_pylist()], HOLDOUT_FRACTION)
        train.append(table.filter(pa.array(~mask)))
        if held:
            check.append(table.filter(pa.array(mask)))
    train_rows = _as_blocks(train, workers)
    return train_rows, _as_blocks(check, workers) if held else train_rows


def _as_blocks(parts: list[pa.Table], workers: int) -> DriverRows:
    """Consecutive parts joined into blocks of at most Ray Data's target size, and at least one
    block per worker where the rows allow. Each block goes to the object store as soon as it is
    whole, and `parts` is emptied on the way, so this process never holds much more than the
    rows once."""
    total = sum(part.nbytes for part in parts)
    target = min(ray.data.DataContext.get_current().target_max_block_size or total, max(1, total // max(workers, 1)))
    blocks: list[ray.ObjectRef] = []
    block_rows: list[int] = []
    group: list[pa.Table] = []
    size = 0

    def put() -> None:
        block = pa.concat_tables(group).combine_chunks()
        blocks.append(ray.put(block))
        block_rows.append(block.num_rows)

    parts.reverse()  # popped from the end, in their order
    while parts:
        part = parts.pop()
        if group and size + part.nbytes > target:
            put()
            group, size = [], 0
        group.append(part)
        size += part.nbytes
    if group:
        put()
    return DriverRows(tuple(blocks), tuple(block_rows))


def id_digest(ids: Any) -> tuple[int, int]:
    """(count, sum of 64-bit id hashes mod 2**64): equal for two passes over the same rows in any
    order, and different (with overwhelming probability) when a row is lost or seen twice."""
    total = 0
    count = 0
    for value in ids:
        text = value if isinstance(value, str) else str(value)
        total += int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
        count += 1
    return count, total % (1 << 64)
