"""Pool- and output-level filtering: which teachers and heads a job needs, decided from metadata."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ray_amalgam.spec import (
    BOTH,
    EVERY_OWNER,
    BackboneSpec,
    BadInputError,
    JobSpec,
    TaskSpec,
    TeacherMeta,
    task_owners,
)


@dataclass(frozen=True)
class AmalgamationPlan:
    """Everything the engine and the pipeline need to know, as plain picklable data."""

    tasks: tuple[TaskSpec, ...]
    sources: dict[str, tuple[str, ...]]
    """task -> the teachers whose outputs it learns from (several only for `task_teachers: both/all`)."""
    teachers: dict[str, TeacherMeta]
    """Only the teachers that own a chosen task (pool-level filtering), in job order."""
    checkpoints: dict[str, str]
    student: BackboneSpec
    input_size: int
    hint_channels: dict[str, dict[int, tuple[int, ...]]] = field(default_factory=dict)
    """teacher -> teacher block (1-based) -> kept channel indices, when the hint loss is on."""
    costs: dict[str, float] = field(default_factory=dict)
    """teacher -> FLOPs per image: what sizes its actor pool (slow teachers get more actors)."""
    selection: dict[str, Any] | None = None
    """For a job drawn from a pool: which teachers were chosen and why (`PoolSelection.as_dict`)."""

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def heads_of(self, teacher: str) -> tuple[str, ...]:
        """The chosen heads this teacher must evaluate (output-level filtering)."""
        return tuple(t for t in self.task_names if teacher in self.sources[t])

    def with_hint_channels(self, channels: dict[str, dict[int, tuple[int, ...]]]) -> AmalgamationPlan:
        return replace(self, hint_channels=channels)


def logits_key(teacher: str, task: str) -> str:
    """Batch/store column holding `teacher`'s logits for `task`."""
    return f"logits/{teacher}/{task}"


def hint_key(teacher: str, block: int) -> str:
    """Batch/store column holding the kept channels of `teacher`'s block `block` (float16)."""
    return f"hint/{teacher}/{block}"


def make_plan(job: JobSpec, teachers: dict[str, TeacherMeta], source: str = "job") -> AmalgamationPlan:
    """Filter the pool down to the chosen tasks; errors name `source` and the offending field."""
    owners = task_owners(teachers, checked=job.tasks)
    offered = sorted(owners)
    for task in job.tasks:
        if task not in owners:
            raise BadInputError(f"{source}: tasks: no teacher owns task '{task}'; the pool offers {offered}")
    for task in job.task_teachers:
        if task not in job.tasks:
            raise BadInputError(f"{source}: task_teachers.{task}: '{task}' is not a chosen task {list(job.tasks)}")
    sources: dict[str, tuple[str, ...]] = {}
    for task in job.tasks:
        candidates = owners[task]
        choice = job.task_teachers.get(task)
        if choice is None:
            if len(candidates) > 1:
                raise BadInputError(
                    f"{source}: task_teachers.{task}: task '{task}' is owned by {candidates}; "
                    f"expected one of them or '{BOTH}'"
                )
            sources[task] = tuple(candidates)
        elif choice in EVERY_OWNER:
            sources[task] = tuple(candidates)
        elif choice not in candidates:
            raise BadInputError(f"{source}: task_teachers.{task}: teacher '{choice}' does not own '{task}'; owners are {candidates}")
        else:
            sources[task] = (choice,)
    used = [ref.name for ref in job.teachers if any(ref.name in s for s in sources.values())]
    kept = {name: teachers[name] for name in used}
    sizes = {meta.input_size for meta in kept.values()}
    if len(sizes) > 1:
        raise BadInputError(f"{source}: teachers: chosen teachers expect different input sizes {sorted(sizes)}; expected one size")
    first = kept[used[0]]
    student = BackboneSpec(
        arch=job.student.arch or first.backbone.arch,
        width=job.student.width,
        small_input_stem=first.backbone.small_input_stem,
    )
    task_specs = tuple(next(m.task(t) for m in kept.values() if t in m.task_names) for t in job.tasks)
    checkpoints = {ref.name: ref.checkpoint for ref in job.teachers if ref.name in kept}
    return AmalgamationPlan(task_specs, sources, kept, checkpoints, student, first.input_size)
