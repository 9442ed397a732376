"""Teacher pools: the catalogue (one row per checkpoint found under a prefix) and its entries."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ray_amalgam.spec.tasks import TaskSpec
from ray_amalgam.spec.teacher import BackboneSpec, TeacherMeta

CATALOGUE_FORMAT_VERSION = 1

OK = "ok"
REFUSED = "refused"


class CatalogueEntry(BaseModel):
    """One checkpoint of a pool. A refused one (corrupt, pickled, unreadable) keeps only its name,
    URL, listing fingerprint and the reason; an accepted one describes the teacher fully."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    url: str
    status: Literal["ok", "refused"]
    reason: str = ""
    fingerprint: str
    """sha256 of the checkpoint's file listing (names, sizes, modification times): a row whose
    fingerprint still matches is not read again."""
    hash: str = ""
    """sha256 of the checkpoint's content (`checkpoint_hash`)."""
    arch: str | None = None
    width: float | None = None
    small_input_stem: bool | None = None
    input_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    tasks: tuple[TaskSpec, ...] = ()
    params: int | None = Field(None, ge=0)
    flops: int | None = Field(None, ge=0)
    quality: dict[str, float] = {}
    """task -> a quality figure, higher is better (accuracy for multiclass, mAP for multilabel),
    filled by `teachers evaluate --catalogue`."""
    quality_data: str = ""
    """The labelled data the quality figures were measured on."""

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def teacher_meta(self) -> TeacherMeta:
        """The teacher's metadata as `teacher.json` holds it (accepted entries only)."""
        assert self.ok and self.arch is not None and self.input_size is not None, f"{self.name}: refused entry"
        backbone = BackboneSpec(arch=self.arch, width=self.width or 1.0, small_input_stem=bool(self.small_input_stem))
        extra = {"mean": self.mean, "std": self.std} if self.mean is not None and self.std is not None else {}
        return TeacherMeta(backbone=backbone, tasks=self.tasks, input_size=self.input_size, **extra)


class Catalogue(BaseModel):
    """Every checkpoint found under `prefix` (accepted and refused), in name order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = CATALOGUE_FORMAT_VERSION
    prefix: str
    entries: tuple[CatalogueEntry, ...] = ()

    @property
    def accepted(self) -> tuple[CatalogueEntry, ...]:
        return tuple(e for e in self.entries if e.ok)

    def entry(self, name: str) -> CatalogueEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)
