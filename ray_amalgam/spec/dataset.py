"""`_dataset.json`: what lies beside a set of Parquet shards."""

from __future__ import annotations

from pydantic import Field

from ray_amalgam.spec.tasks import TaskSet

DATASET_FORMAT_VERSION = 1


class DatasetMeta(TaskSet):
    """Tasks whose label columns the shards may carry, and the image size of every row."""

    format_version: int = DATASET_FORMAT_VERSION
    image_size: int = Field(ge=1)
    num_rows: int | None = Field(None, ge=0)
    source: str = ""
    """How the data was made, e.g. `synth seed=0` or `pack /photos`."""
