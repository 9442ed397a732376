"""`dataset.json`: what lies beside a set of Parquet shards."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ray_amalgam.spec.tasks import TaskSpec

DATASET_FORMAT_VERSION = 1


class DatasetMeta(BaseModel):
    """Tasks whose label columns the shards may carry, and the image size of every row."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = DATASET_FORMAT_VERSION
    tasks: tuple[TaskSpec, ...] = ()
    image_size: int = Field(ge=1)
    num_rows: int | None = Field(None, ge=0)
    source: str = ""
    """How the data was made, e.g. `synth seed=0` or `pack /photos`."""

    @model_validator(mode="after")
    def _unique_tasks(self) -> DatasetMeta:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names repeat: {names}")
        return self

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)
