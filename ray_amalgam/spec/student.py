"""Student metadata (`student.json`): enough to rebuild the TargetNet with no teacher at hand."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ray_amalgam.spec.tasks import TaskSpec
from ray_amalgam.spec.teacher import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec

STUDENT_FORMAT_VERSION = 1


class BranchSpec(BaseModel):
    """Task `task` leaves the trunk after trunk block `branch_point` (1-based); its branch is an
    adapter to `teacher_channels` followed by the owning teacher's blocks after `teacher_block`
    (1-based) and its head."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: TaskSpec
    teacher: str
    teacher_backbone: BackboneSpec
    branch_point: int = Field(ge=1)
    teacher_block: int = Field(ge=1)


class StudentMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = STUDENT_FORMAT_VERSION
    backbone: BackboneSpec
    branches: tuple[BranchSpec, ...] = Field(min_length=1)
    input_size: int = Field(ge=8)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    source_teachers: dict[str, str] = {}
    """Teacher name -> sha256 of its checkpoint."""

    @model_validator(mode="after")
    def _unique_tasks(self) -> StudentMeta:
        names = [b.task.name for b in self.branches]
        if len(set(names)) != len(names):
            raise ValueError(f"task names repeat: {names}")
        return self

    @property
    def tasks(self) -> tuple[TaskSpec, ...]:
        return tuple(b.task for b in self.branches)
