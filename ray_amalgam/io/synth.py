"""Synthetic multi-attribute images: a coloured shape on a textured, noisy background.

Every sample is drawn from its own RNG seeded by (seed, index), so a dataset is the same for
any number of shards or chunk size. Shapes are drawn as anti-aliased signed-distance masks
with numpy on the whole image at once.
"""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from ray_amalgam.io.images import encode_image
from ray_amalgam.io.shards import ShardWriter
from ray_amalgam.spec import BadInputError, DatasetMeta, TaskSpec

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = ("red", "yellow", "green", "cyan", "blue", "magenta")  # hues 0, 60, ..., 300 degrees
SIZES = ("small", "medium", "large")
POSITIONS = ("top_left", "top_right", "bottom_left", "bottom_right")
BACKGROUNDS = ("plain", "stripes", "checker", "dots")
ATTRIBUTES = ("border", "second_object", "rotated", "striped")

SYNTH_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(name="shape", kind="multiclass", classes=SHAPES),
    TaskSpec(name="color", kind="multiclass", classes=COLORS),
    TaskSpec(name="size", kind="multiclass", classes=SIZES),
    TaskSpec(name="position", kind="multiclass", classes=POSITIONS),
    TaskSpec(name="background", kind="multiclass", classes=BACKGROUNDS),
    TaskSpec(name="attributes", kind="multilabel", labels=ATTRIBUTES),
)

MIN_IMAGE_SIZE = 16
_ATTRIBUTE_RATE = np.array([0.4, 0.4, 0.3, 0.4])
# Radius as a fraction of the image side; the gaps between classes are narrow on purpose.
_RADIUS_RANGE = ((0.12, 0.15), (0.16, 0.19), (0.205, 0.25))
_HUE_JITTER = 20.0  # degrees; neighbouring palette hues are 60 apart
_CHUNK = 256

Canvas = np.ndarray  # (S, S, 3) float32 in [0, 1]


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each (S, S) float32."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    y, x = np.meshgrid(coords, coords, indexing="ij")
    return y, x


def _signed_distance(shape: int, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Approximate signed distance (pixels, negative inside) to a shape centred at u = v = 0."""
    if shape == 0:  # circle
        return np.hypot(u, v) - radius
    if shape == 1:  # square, side 1.6 r so its area is close to the circle's
        return np.maximum(np.abs(u), np.abs(v)) - 0.8 * radius
    if shape == 2:  # equilateral triangle pointing up, circumradius 1.25 r
        edges = [u * np.cos(a) + v * np.sin(a) for a in np.deg2rad((90.0, 210.0, 330.0))]
        return np.maximum.reduce(edges) - 0.625 * radius
    arm = 0.35 * radius  # cross
    return np.minimum(
        np.maximum(np.abs(u) - radius, np.abs(v) - arm),
        np.maximum(np.abs(u) - arm, np.abs(v) - radius),
    )


def _coverage(distance: np.ndarray) -> np.ndarray:
    """Anti-aliased alpha from a signed distance, (S, S, 1)."""
    return np.clip(0.5 - distance, 0.0, 1.0)[..., None]


def _paint(image: Canvas, alpha: np.ndarray, color: np.ndarray | float) -> Canvas:
    return image + alpha * (color - image)


def _palette_color(rng: np.random.Generator, index: int) -> np.ndarray:
    hue = (index * 60.0 + rng.uniform(-_HUE_JITTER, _HUE_JITTER)) % 360.0
    rgb = colorsys.hsv_to_rgb(hue / 360.0, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
    return np.array(rgb, dtype=np.float32)


def _background(rng: np.random.Generator, kind: int, size: int) -> Canvas:
    y, x = _grid(size)
    level = rng.uniform(0.2, 0.8)
    tint = rng.normal(0.0, 0.04, 3)
    base = np.clip(level + tint, 0.0, 1.0).astype(np.float32)
    contrast = rng.uniform(0.06, 0.16) * (1.0 if level < 0.5 else -1.0)
    angle = rng.uniform(0.0, np.pi)
    along = x * np.cos(angle) + y * np.sin(angle)
    if kind == 0:  # plain: a soft gradient only
        pattern = (along / size - 0.5) * rng.uniform(0.0, 0.3)
    elif kind == 1:  # stripes
        pattern = (np.sin(2 * np.pi * along / rng.uniform(3.0, 7.0) + rng.uniform(0, 2 * np.pi)) > 0) * contrast
    elif kind == 2:  # checker
        cell = rng.uniform(3.0, 6.0)
        offset = rng.uniform(0.0, cell, 2)
        pattern = ((np.floor((x + offset[0]) / cell) + np.floor((y + offset[1]) / cell)) % 2) * contrast
    else:  # dots
        spacing = rng.uniform(4.0, 7.0)
        offset = rng.uniform(0.0, spacing, 2)
        dx = (x + offset[0]) % spacing - spacing / 2
        dy = (y + offset[1]) % spacing - spacing / 2
        pattern = _coverage(np.hypot(dx, dy) - rng.uniform(0.22, 0.35) * spacing)[..., 0] * contrast
    return base + pattern[..., None].astype(np.float32)


def _rotated_frame(size: int, center: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    y, x = _grid(size)
    dx, dy = x - center[0], y - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    return cos * dx + sin * dy, -sin * dx + cos * dy


def _quadrant_center(rng: np.random.Generator, quadrant: int, size: int, jitter: float) -> np.ndarray:
    base = np.array([0.25 + 0.5 * (quadrant % 2), 0.25 + 0.5 * (quadrant // 2)])  # (x, y)
    return (base + np.clip(rng.normal(0.0, jitter, 2), -2 * jitter, 2 * jitter)) * size


def render_sample(seed: int, index: int, image_size: int = 32) -> tuple[np.ndarray, dict[str, Any]]:
    """One image (S, S, 3) uint8 and its labels: class indices per multiclass task, 0/1 list for `attributes`."""
    rng = np.random.default_rng([seed, index])
    shape, color, size_class, position, background = (
        int(rng.integers(len(names))) for names in (SHAPES, COLORS, SIZES, POSITIONS, BACKGROUNDS)
    )
    border, second, rotated, striped = (rng.random(4) < _ATTRIBUTE_RATE).tolist()
    s = image_size

    image = _background(rng, background, s)

    if second:  # a smaller distractor of any shape and colour in another quadrant
        quadrant = (position + 1 + int(rng.integers(3))) % 4
        u, v = _rotated_frame(s, _quadrant_center(rng, quadrant, s, 0.03), rng.uniform(0, np.pi))
        distractor = _signed_distance(int(rng.integers(len(SHAPES))), u, v, rng.uniform(0.06, 0.085) * s)
        image = _paint(image, _coverage(distractor), _palette_color(rng, int(rng.integers(len(COLORS)))))

    angle = np.deg2rad(rng.uniform(15.0, 30.0) if rotated else rng.uniform(-5.0, 5.0)) * rng.choice((-1.0, 1.0))
    u, v = _rotated_frame(s, _quadrant_center(rng, position, s, 0.035), angle)
    radius = rng.uniform(*_RADIUS_RANGE[size_class]) * s
    distance = _signed_distance(shape, u, v, radius)
    fill = _palette_color(rng, color)
    if striped:
        period = max(2.5, radius * rng.uniform(0.5, 0.7))
        fill = np.where((np.sin(2 * np.pi * u / period) > 0)[..., None], fill * 0.4, fill)
    image = _paint(image, _coverage(distance), fill)
    if border:
        width = max(1.0, 0.05 * s)
        outline = np.abs(distance - width / 2) - width / 2
        tone = rng.uniform(0.0, 0.12) if fill.mean() > 0.45 else rng.uniform(0.88, 1.0)
        image = _paint(image, _coverage(outline), tone)

    if rng.random() < 0.25:  # occluder: a grey box anywhere, possibly over the shape
        half = rng.uniform(0.06, 0.15, 2) * s
        center = rng.uniform(0, s, 2)
        y, x = _grid(s)
        box = np.maximum(np.abs(x - center[0]) - half[0], np.abs(y - center[1]) - half[1])
        image = _paint(image, _coverage(box), rng.uniform(0.1, 0.9))

    mean = image.mean()
    image = (image - mean) * rng.uniform(0.8, 1.2) + mean * rng.uniform(0.75, 1.25)
    image = image + rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(0.02, 0.07)
    pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    labels = {
        "shape": shape,
        "color": color,
        "size": size_class,
        "position": position,
        "background": background,
        "attributes": [int(border), int(second), int(rotated), int(striped)],
    }
    return pixels, labels


def _rows(seed: int, start: int, stop: int, image_size: int) -> dict[str, list[Any]]:
    rows: dict[str, list[Any]] = {"id": [], "image": [], **{t.name: [] for t in SYNTH_TASKS}}
    for index in range(start, stop):
        pixels, labels = render_sample(seed, index, image_size)
        rows["id"].append(f"synth-{seed}-{index}")
        rows["image"].append(encode_image(pixels))
        for name, value in labels.items():
            rows[name].append(value)
    return rows


def synthesize(
    out_url: str,
    num_samples: int,
    num_shards: int,
    seed: int,
    image_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> DatasetMeta:
    """Write a labelled synthetic dataset of `num_samples` PNG images to `out_url`, chunk by chunk."""
    if num_samples < 1:
        raise BadInputError(f"{out_url}: number of samples must be at least 1, got {num_samples}")
    if image_size < MIN_IMAGE_SIZE:
        raise BadInputError(f"{out_url}: image size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    meta = DatasetMeta(tasks=SYNTH_TASKS, image_size=image_size, source=f"synth seed={seed}")
    with ShardWriter(out_url, meta, num_shards, num_rows=num_samples) as writer:
        for start in range(0, num_samples, _CHUNK):
            stop = min(start + _CHUNK, num_samples)
            writer.write(_rows(seed, start, stop, image_size))
            if progress is not None:
                progress(stop)
    return meta.model_copy(update={"num_rows": num_samples})
