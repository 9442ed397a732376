"""Image bytes <-> uint8 RGB arrays <-> normalized tensors."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from ray_amalgam.spec import BadInputError

if TYPE_CHECKING:
    import torch


def encode_image(array: np.ndarray, format: str = "png") -> bytes:
    """Encode an HxWx3 uint8 RGB array as PNG/JPEG bytes."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 array, got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format=format)
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes to an HxWx3 uint8 RGB array; BadInputError if they are not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:  # its message names an in-memory buffer, not the data
        raise BadInputError(f"not a decodable image ({len(data)} bytes in no image format PIL reads)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise BadInputError(f"not a decodable image ({len(data)} bytes: {str(error).splitlines()[0]})") from None


def decode_batch(images: Sequence[bytes], where: str, first_row: int = 0, size: int | None = None) -> np.ndarray:
    """Decode same-size images to (N, H, W, 3) uint8; errors name `where` and the row (`first_row` + index).

    With `size`, every image must be `size` x `size` (else they must match the first one)."""
    arrays = []
    for index, data in enumerate(images):
        row = first_row + index
        try:
            array = decode_image(data)
        except BadInputError as error:
            raise BadInputError(f"{where} row {row}: {error}") from None
        reference = (size, size) if size is not None else arrays[0].shape[:2] if arrays else array.shape[:2]
        if array.shape[:2] != reference:
            expected = f"{reference[1]}x{reference[0]}"
            if size is None:
                expected += f" like row {first_row}; all images must have one size"
            raise BadInputError(f"{where} row {row}: image is {array.shape[1]}x{array.shape[0]}, expected {expected}")
        arrays.append(array)
    if not arrays:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return np.stack(arrays)


AUGMENT_PAD = 4


def random_flip_shift(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per image: horizontal flip with p=0.5 and a shift of up to AUGMENT_PAD pixels (reflect padding).

    Teachers label the augmented image and the student learns from exactly that image, which is
    why augmentation needs teacher outputs computed per batch (`stream` mode).
    """
    n, h, w, _ = pixels.shape
    flip = rng.random(n) < 0.5
    pixels = np.where(flip[:, None, None, None], pixels[:, :, ::-1], pixels)
    padded = np.pad(pixels, ((0, 0), (AUGMENT_PAD, AUGMENT_PAD), (AUGMENT_PAD, AUGMENT_PAD), (0, 0)), mode="reflect")
    dy, dx = rng.integers(0, 2 * AUGMENT_PAD + 1, size=(2, n))
    return np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def to_tensor(batch: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, scaled to [0, 1] then normalized per channel."""
    import torch  # here, not above: Ray data tasks decode with this module and never need torch
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
        raise ValueError(f"expected an (N, H, W, 3) uint8 array, got {batch.dtype} {batch.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return tensor.sub_(mean_t).div_(std_t)
