"""The functions Ray Data runs as tasks: decode (and augment) images, keep the held-out or the
training rows, and ask the teacher actors for their outputs.

Kept apart, on numpy, PIL and Ray alone, because Ray starts worker processes for these tasks
freely and each one imports this module's dependencies: torch and torchvision would cost
seconds per process, paid again at every new epoch's first batch.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import ray

from ray_amalgam.io.images import decode_batch
from ray_amalgam.io.shards import ID, IMAGE, holdout_mask

ENCODED = "image_encoded"
"""Column carrying the original image bytes past decoding, when a store must keep them."""

AUGMENT_PAD = 4


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


def holdout_rows(batch: dict[str, np.ndarray], held: bool, fraction: float) -> dict[str, np.ndarray]:
    """Keep the rows held out for fidelity (`held`) or the training rows: by id hash, like the local runner."""
    mask = holdout_mask([str(i) for i in batch[ID]], fraction)
    keep = mask if held else ~mask
    return {key: value[keep] for key, value in batch.items()}


def append_teacher_outputs(batch: dict[str, np.ndarray], actors: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    """Ask one actor of every teacher pool at once (picked at random, which spreads a pool's
    load) and append their outputs to the batch."""
    pixels = ray.put(batch[IMAGE])  # one copy in the object store, read by every teacher
    calls = [random.choice(pool).outputs.remote(pixels) for pool in actors.values()]
    for outputs in ray.get(calls):
        batch.update(outputs)
    return batch
