"""The amalgamation job: which teachers, which tasks, which data, how to train, where to write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

BOTH = "both"
"""`task_teachers` value: learn a shared task from every owner, per sample from the least ambiguous."""
SAMPLES_PER_STAGE = 15_000
FINETUNE_STAGES = 5.0
"""The finetune's length in block stages' worth of images: on both quality benchmarks 5 (against 3)
lifted the customized student's multilabel accuracy and moved no task down (benchmarks/quality_levers.md)."""
ALL = "all"
"""The same as `both`, for tasks with more than two owners (pools)."""
EVERY_OWNER = (BOTH, ALL)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TeacherRef(_Strict):
    name: str
    checkpoint: str


class DataSpec(_Strict):
    train: str
    eval: str


class StudentSpec(_Strict):
    arch: str | None = None
    """Registered architecture of the trunk; default: the first chosen teacher's."""
    width: float = Field(0.5, ge=0.125, le=1.0)
    branch_out: Literal["auto"] | dict[str, int] = "auto"
    branch_tolerance: float = Field(0.05, ge=0.0, le=1.0)
    """Fidelity a task may lose in one block stage before it branches out (measurement noise on
    a few hundred held-out rows is about 0.02-0.03)."""
    train_earlier_blocks: bool = False


class HintSpec(_Strict):
    enabled: bool = False
    keep_fraction: float = Field(0.25, gt=0.0, le=1.0)
    weight: float = Field(1.0, ge=0.0)
    calibration_samples: int = Field(64, ge=1)


class ScheduleSpec(_Strict):
    stage_epochs: int | Literal["auto"] = "auto"
    """Epochs per block stage; `auto`: as many as show the stage about `samples_per_stage` images."""
    finetune_epochs: int | Literal["auto"] = "auto"
    """`auto`: as many as show the finetune about `finetune_stages` x `samples_per_stage` images."""
    samples_per_stage: int = Field(SAMPLES_PER_STAGE, ge=1)
    finetune_stages: float = Field(FINETUNE_STAGES, gt=0.0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    """Per stage: warm-up then cosine decay to zero, or a constant rate."""
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    temperature: float = Field(4.0, gt=0.0)
    task_weights: dict[str, float] = {}
    multilabel_rank_weight: float = Field(0.0, ge=0.0)
    """Weight of a ranking term on multilabel tasks (`losses.ranking_loss`), added to their BCE.
    Off by default: it lifts mAP but, on more data, costs the other tasks (benchmarks/quality_levers.md)."""
    augment: bool = False
    keep_best: bool = True
    """Measure held-out fidelity after each finetune epoch and end on the best epoch's weights."""
    seed: int = 0

    @field_validator("stage_epochs", "finetune_epochs", mode="plain")
    @classmethod
    def _epoch_count(cls, value: object, info: ValidationInfo) -> int | str:
        # One plain check instead of a union, whose errors name pydantic's branches, not the field.
        least = 1 if info.field_name == "stage_epochs" else 0
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= least):
            return value
        raise ValueError(f"expected 'auto' or a whole number >= {least} (got {value!r})")


class ActorRange(_Strict):
    min: int = Field(1, ge=1)
    max: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ActorRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


RESERVED_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")
"""Ray's built-in resources: set through their own fields, never as custom node resources."""


class ResourcesSpec(_Strict):
    num_workers: int = Field(1, ge=1)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    teacher_actors: ActorRange = ActorRange()
    teacher_gpu_fraction: float = Field(0.0, ge=0.0, le=1.0)
    teacher_batch_size: int = Field(128, ge=1)
    store_pass: Literal["auto", "driver", "actors"] = "auto"
    """Where a store's teacher pass runs: `actors` (teacher actor pools fed by a Ray task per
    shard), `driver` (the job's own process, shard by shard: no actor or task starts), or `auto`:
    the driver when Ray is local and the data's decoded pixels fit 1 GiB, else actors."""
    worker_resources: dict[str, float] = {}
    """Custom Ray node resources each train worker asks for, e.g. {train_node: 0.01}: it then runs
    only on nodes started with that resource (`ray start --resources`, a cluster YAML's node type)."""
    teacher_resources: dict[str, float] = {}
    """The same for each teacher actor, e.g. {teacher_node: 0.01}."""

    @field_validator("worker_resources", "teacher_resources")
    @classmethod
    def _custom_only(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name in RESERVED_RESOURCES:
                raise ValueError(f"'{name}' is set by its own field (num_workers, gpus_per_worker, teacher_gpu_fraction), not here")
            if amount <= 0:
                raise ValueError(f"{name}: expected an amount > 0, got {amount}")
        return value


class JobSpec(_Strict):
    teachers: tuple[TeacherRef, ...] = ()
    pool: str | None = None
    """A pool catalogue (`ray-amalgam pool index`) to select the teachers from, instead of `teachers`."""
    tasks: tuple[str, ...] = Field(min_length=1)
    task_teachers: dict[str, str] = {}
    """For a task owned by several teachers: the teacher to learn it from, or `both`/`all` (every
    owner). With a `pool`, a task not named here is learnt from its best owner."""
    data: DataSpec
    student: StudentSpec = StudentSpec()
    hint: HintSpec = HintSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    teacher_outputs: Literal["stream", "store"] = "store"
    resources: ResourcesSpec = ResourcesSpec()
    output: str

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks repeat: {list(tasks)}")
        return tasks

    @model_validator(mode="after")
    def _references(self) -> JobSpec:
        names = [t.name for t in self.teachers]
        if (self.pool is None) == (not names):
            raise ValueError("expected either 'teachers' (a list) or 'pool' (a catalogue URL), not both or neither")
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names repeat: {names}")
        for task, teacher in self.task_teachers.items():
            # Pool jobs name teachers of the catalogue: checked when the pool is read.
            if teacher not in EVERY_OWNER and self.pool is None and teacher not in names:
                raise ValueError(f"task_teachers.{task}: '{teacher}' is not a teacher of this job; expected one of {names} or '{BOTH}'")
        if isinstance(self.student.branch_out, dict):
            for task in self.student.branch_out:
                if task not in self.tasks:
                    raise ValueError(f"student.branch_out names task '{task}' that is not in tasks {list(self.tasks)}")
        if self.schedule.augment and self.teacher_outputs == "store":
            raise ValueError("schedule.augment needs teacher_outputs: stream (stored targets cannot follow random augmentation)")
        return self


def set_job_field(data: dict[str, Any], path: Sequence[str], value: Any) -> None:
    """Sets the field at `path`, e.g. ("schedule", "lr"), in a job's JSON form (`model_dump(mode="json")`);
    a section the form lacks is added, for `JobSpec.model_validate` to refuse by name."""
    *sections, leaf = path
    for section in sections:
        data = data.setdefault(section, {})
    data[leaf] = value
