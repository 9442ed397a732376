"""The Ray Data side: read shards, decode (and augment) images and split off the held-out rows
as CPU tasks (`data_tasks`), and the long-lived teacher actor pools those tasks call."""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Iterable, Iterator
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


def decoded_in_driver(tables: Iterable[tuple[str, pa.Table]], held: bool, workers: int) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """The training rows and the check rows (the held-out ones; with `held` False, the training
    rows again) of `tables` (each with the URL of the shard its rows come from, in shard order),
    split and decoded in this process and put whole in the object store.

    For rows that fit in memory on one node: Ray Data's route (a read, a split and a decode task
    per block, each result materialized) costs many times the decode itself on a small machine."""
    from ray.data.extensions import ArrowTensorArray

    train: list[pa.Table] = []
    check: list[pa.Table] = []
    shard_rows: collections.Counter[str] = collections.Counter()
    for shard, table in tables:
        pixels = decode_batch(table.column(IMAGE).to_pylist(), shard, first_row=shard_rows[shard])
        shard_rows[shard] += table.num_rows
        table = table.set_column(table.schema.get_field_index(IMAGE), IMAGE, ArrowTensorArray.from_numpy(pixels))
        mask = holdout_mask([str(i) for i in table.column(ID).to_pylist()], HOLDOUT_FRACTION)
        train.append(table.filter(pa.array(~mask)))
        if held:
            check.append(table.filter(pa.array(mask)))
    train_rows = _as_blocks(train, workers)
    return train_rows, _as_blocks(check, workers) if held else train_rows


def _as_blocks(parts: list[pa.Table], workers: int) -> ray.data.Dataset:
    """Consecutive parts joined into blocks of at most Ray Data's target size, and at least one
    block per worker where the rows allow (a streaming split hands out whole blocks first).
    Each block goes to the object store as soon as it is whole, and `parts` is emptied on the
    way, so this process never holds much more than the rows once."""
    total = sum(part.nbytes for part in parts)
    target = min(ray.data.DataContext.get_current().target_max_block_size or total, max(1, total // max(workers, 1)))
    blocks: list[ray.ObjectRef] = []
    group: list[pa.Table] = []
    size = 0
    parts.reverse()  # popped from the end, in their order
    while parts:
        part = parts.pop()
        if group and size + part.nbytes > target:
            blocks.append(ray.put(pa.concat_tables(group).combine_chunks()))
            group, size = [], 0
        group.append(part)
        size += part.nbytes
    if group:
        blocks.append(ray.put(pa.concat_tables(group).combine_chunks()))
    return ray.data.from_arrow_refs(blocks)


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
