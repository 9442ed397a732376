"""Pack a folder of unlabelled images into Parquet shards."""

from __future__ import annotations

import io
import posixpath
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps

from ray_amalgam.io.fs import join, read_bytes, resolve
from ray_amalgam.io.images import encode_image
from ray_amalgam.io.shards import ShardWriter
from ray_amalgam.spec import BadInputError, DatasetMeta

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_CHUNK = 256


def find_images(src_dir: str) -> list[tuple[str, str]]:
    """(relative path, URL) of every .jpg/.jpeg/.png under `src_dir`, sorted by relative path."""
    fs, root = resolve(src_dir)
    if not fs.isdir(root):
        raise BadInputError(f"{src_dir}: not a directory; expected a folder of .jpg/.jpeg/.png images")
    root = root.rstrip("/")
    found = sorted(
        posixpath.relpath(path, root) for path in fs.find(root) if path.lower().endswith(IMAGE_SUFFIXES)
    )
    if not found:
        raise BadInputError(f"{src_dir}: no .jpg/.jpeg/.png images found (searched recursively)")
    return [(rel, join(src_dir, rel)) for rel in found]


def _open(url: str, data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise BadInputError(f"{url}: not a decodable image ({str(error).splitlines()[0]})") from None
    return image


def _square_size(url: str) -> int:
    """Side of the first image, which fixes the size of all others when not resizing."""
    image = _open(url, read_bytes(url))
    if image.width != image.height:
        raise BadInputError(
            f"{url}: image is {image.width}x{image.height}; without --image-size every image must be square "
            "and the same size (pass --image-size to centre-crop and resize)"
        )
    return image.width


def _prepared(url: str, size: int, resize: bool) -> bytes:
    """PNG bytes centre-cropped and resized to `size`, or the original bytes once checked to be `size` square."""
    data = read_bytes(url)
    image = _open(url, data)
    if resize:
        square = ImageOps.fit(image.convert("RGB"), (size, size), method=Image.Resampling.BICUBIC)
        return encode_image(np.asarray(square))
    if image.size != (size, size):
        raise BadInputError(
            f"{url}: image is {image.width}x{image.height}, expected {size}x{size} like the first image; "
            "pass --image-size to centre-crop and resize every image"
        )
    return data


def pack_folder(
    src_dir: str,
    out_url: str,
    num_shards: int,
    image_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> DatasetMeta:
    """Pack every image under `src_dir` (ids = relative paths) into an unlabelled dataset at `out_url`."""
    if image_size is not None and image_size < 1:
        raise BadInputError(f"{src_dir}: image size must be at least 1, got {image_size}")
    files = find_images(src_dir)
    size = image_size if image_size is not None else _square_size(files[0][1])
    meta = DatasetMeta(image_size=size, source=f"pack {src_dir}")
    with ShardWriter(out_url, meta, num_shards, num_rows=len(files)) as writer:
        for start in range(0, len(files), _CHUNK):
            chunk = files[start : start + _CHUNK]
            images = [_prepared(url, size, resize=image_size is not None) for _, url in chunk]
            writer.write({"id": [rel for rel, _ in chunk], "image": images})
            if progress is not None:
                progress(start + len(chunk))
    return meta.model_copy(update={"num_rows": len(files)})
