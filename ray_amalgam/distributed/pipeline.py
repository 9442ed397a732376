"""The Ray Data side: read shards, decode (and augment) images as CPU tasks, and run one
teacher actor pool per teacher that appends the teacher's filtered outputs to each batch."""

from __future__ import annotations

import hashlib
from typing import Any

import fsspec
import numpy as np
import pyarrow.fs as pafs
import ray
import ray.data
import torch
from fsspec.implementations.local import LocalFileSystem

from ray_amalgam.amalgamation import AmalgamationPlan, teacher_outputs
from ray_amalgam.distributed.progress import board_handle
from ray_amalgam.distributed.resources import ResourcePlan
from ray_amalgam.io.checkpoints import load_teacher
from ray_amalgam.io.fs import resolve
from ray_amalgam.io.images import decode_batch, to_tensor
from ray_amalgam.io.shards import ID, IMAGE, iter_batches
from ray_amalgam.models import teacher_from_weights

ENCODED = "image_encoded"
"""Column carrying the original image bytes past decoding, when a store must keep them."""

AUGMENT_PAD = 4


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


def random_flip_shift(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per image: horizontal flip with p=0.5 and a shift of up to AUGMENT_PAD pixels (reflect padding).

    Teachers see the augmented image and the student learns from exactly that image, which is
    why augmentation needs `stream` mode.
    """
    n, h, w, _ = pixels.shape
    flip = rng.random(n) < 0.5
    pixels = np.where(flip[:, None, None, None], pixels[:, :, ::-1], pixels)
    padded = np.pad(pixels, ((0, 0), (AUGMENT_PAD, AUGMENT_PAD), (AUGMENT_PAD, AUGMENT_PAD), (0, 0)), mode="reflect")
    dy, dx = rng.integers(0, 2 * AUGMENT_PAD + 1, size=(2, n))
    return np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


class TeacherActor:
    """One teacher, loaded once per actor from its checkpoint URL; appends its filtered outputs.

    Ray Data creates these actors (ActorPoolStrategy) and restarts a dead one, retrying its
    unfinished batch, so each row still passes through exactly once.
    """

    def __init__(self, name: str, checkpoint: str, plan: AmalgamationPlan, board_name: str | None) -> None:
        meta, state = load_teacher(checkpoint)
        self.name = name
        self.plan = plan
        self.mean, self.std = meta.mean, meta.std
        self.device = torch.device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")
        self.model = teacher_from_weights(meta, state, checkpoint).to(self.device).eval()
        self.actor_id = ray.get_runtime_context().get_actor_id()
        self.board = board_handle(board_name) if board_name else None
        if self.board is not None:
            self.board.teacher_started.remote(self.actor_id, name, ray.get_runtime_context().current_actor)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = to_tensor(batch[IMAGE], self.mean, self.std).to(self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            outputs = teacher_outputs(self.model, self.name, images, self.plan)
        for key, value in outputs.items():
            # Logits travel as float32, kept hint channels as float16 (set by teacher_outputs).
            batch[key] = value.cpu().numpy()
        if self.board is not None:
            self.board.teacher_batch.remote(self.actor_id, self.name)
        return batch


def with_teachers(
    ds: ray.data.Dataset, plan: AmalgamationPlan, resources: ResourcePlan, min_actors: int, max_actors: int,
    batch_size: int, board_name: str | None,
) -> ray.data.Dataset:
    """Append every teacher's outputs, one actor pool per teacher."""
    for name, checkpoint in plan.checkpoints.items():
        gpu = {"num_gpus": resources.teacher_actor_gpus} if resources.teacher_actor_gpus > 0 else {}
        ds = ds.map_batches(
            TeacherActor,
            fn_constructor_kwargs={"name": name, "checkpoint": checkpoint, "plan": plan, "board_name": board_name},
            compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors),
            num_cpus=resources.teacher_actor_cpus,
            batch_size=batch_size,
            batch_format="numpy",
            # No max_restarts/max_task_retries here: Ray Data's actor pools default to -1 for
            # both, i.e. a dead actor is restarted and its unfinished batch retried.
            **gpu,
        )
    return ds


def decoded(ds: ray.data.Dataset, where: str, resources: ResourcePlan, batch_size: int, keep_encoded: bool, augment: bool) -> ray.data.Dataset:
    return ds.map_batches(
        decode_images,
        fn_kwargs={"where": where, "keep_encoded": keep_encoded, "augment": augment},
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=resources.data_task_cpus,
    )


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


def dataset_digest(url: str) -> tuple[int, int]:
    """The id digest of a whole dataset, read from its `id` column only."""
    count, total = 0, 0
    for table in iter_batches(url, [ID], batch_size=8192):
        c, t = id_digest(table.column(ID).to_pylist())
        count += c
        total = (total + t) % (1 << 64)
    return count, total
