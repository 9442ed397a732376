"""Teacher metadata (`teacher.json`) and pool validation."""

from __future__ import annotations

from collections.abc import Collection

from pydantic import BaseModel, ConfigDict, Field

from ray_amalgam.spec.errors import BadInputError
from ray_amalgam.spec.tasks import TaskSet, TaskSpec

TEACHER_FORMAT_VERSION = 1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneSpec(BaseModel):
    """A registered architecture at a width multiplier, with or without the small-input stem."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str
    width: float = Field(1.0, ge=0.125, le=1.0)
    small_input_stem: bool = False


class TeacherMeta(TaskSet):
    """Everything needed to rebuild and feed a teacher: the content of `teacher.json`."""

    format_version: int = TEACHER_FORMAT_VERSION
    backbone: BackboneSpec
    tasks: tuple[TaskSpec, ...] = Field(min_length=1)
    input_size: int = Field(ge=8)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def task_owners(teachers: dict[str, TeacherMeta], checked: Collection[str] | None = None) -> dict[str, list[str]]:
    """Map each task in a pool to the teachers that own it, in pool order.

    Two teachers may own the same task only with the same kind and class/label names (checked
    for the tasks in `checked` only, when given: teachers drawn from a large pool may well define
    a task no job asks for differently).
    """
    owners: dict[str, list[str]] = {}
    definitions: dict[str, TaskSpec] = {}
    for teacher_name, meta in teachers.items():
        for task in meta.tasks:
            seen = definitions.setdefault(task.name, task)
            if seen != task and (checked is None or task.name in checked):
                first = owners[task.name][0]
                raise BadInputError(
                    f"teachers '{first}' and '{teacher_name}' both define task '{task.name}' "
                    f"differently ({seen.kind} {list(seen.names)} vs {task.kind} {list(task.names)}); "
                    "expected the same kind and class/label names"
                )
            owners.setdefault(task.name, []).append(teacher_name)
    return owners
