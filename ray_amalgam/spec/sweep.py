"""The sweep: a base job, the axes its trials vary, and how Ray Tune searches and stops them.

Checks here need no teacher and no data; those against the pool (tasks a teacher owns) are
made by the tune layer, with the same one-line `file: field: problem` errors.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ray_amalgam.spec.job import HintSpec, JobSpec, ScheduleSpec, StudentSpec

TASK_SEPARATOR = "+"
"""Joins a task subset into one string key ("color+position"): every searcher accepts strings."""

MEAN_FIDELITY = "mean_fidelity"
FIDELITY_PREFIX = "fidelity/"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class WidthRange(_Strict):
    min: float
    max: float
    step: float = Field(gt=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> WidthRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self

    def values(self) -> list[float]:
        count = int((self.max - self.min) / self.step + 1e-9) + 1
        return [round(self.min + i * self.step, 6) for i in range(count)]


class ChooseTasks(_Strict):
    choose: int = Field(ge=1)
    of: tuple[str, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _enough(self) -> ChooseTasks:
        if self.choose > len(self.of):
            raise ValueError(f"choose ({self.choose}) is more than the {len(self.of)} tasks in 'of'")
        return self

    def subsets(self) -> list[tuple[str, ...]]:
        return list(combinations(self.of, self.choose))


class EverySubset(_Strict):
    every_subset_of: tuple[str, ...] = Field(min_length=1)

    def subsets(self) -> list[tuple[str, ...]]:
        tasks = self.every_subset_of
        return [s for k in range(1, len(tasks) + 1) for s in combinations(tasks, k)]


class Choice(_Strict):
    choice: tuple[float, ...] = Field(min_length=1)

    def bounds(self) -> tuple[float, ...]:
        return self.choice


class Uniform(_Strict):
    uniform: tuple[float, float]

    def bounds(self) -> tuple[float, ...]:
        return self.uniform


class LogUniform(_Strict):
    loguniform: tuple[float, float]

    def bounds(self) -> tuple[float, ...]:
        return self.loguniform

    @field_validator("loguniform")
    @classmethod
    def _positive(cls, value: tuple[float, float]) -> tuple[float, float]:
        if min(value) <= 0:
            raise ValueError(f"loguniform bounds must be > 0, got {list(value)}")
        return value


Distribution = Choice | Uniform | LogUniform


def _within(model: type[BaseModel], field: str, values: Any) -> None:
    """Refuse values the job's own field would refuse, with its message (one source of truth)."""
    for value in values:
        try:
            model.model_validate({field: value})
        except ValidationError as error:
            problem = error.errors(include_url=False)[0]["msg"]
            raise ValueError(f"{value} is out of range ({problem.lower()})") from None


_JOB_FIELDS: dict[str, tuple[type[BaseModel], str]] = {
    "lr": (ScheduleSpec, "lr"),
    "temperature": (ScheduleSpec, "temperature"),
    "hint_weight": (HintSpec, "weight"),
    "branch_tolerance": (StudentSpec, "branch_tolerance"),
}
"""Hyperparameter axis -> the job spec model and field whose limits its values must respect."""


class AxesSpec(_Strict):
    """What the trials vary; an axis left out keeps the base job's value."""

    width: tuple[float, ...] | WidthRange | None = None
    tasks: tuple[tuple[str, ...], ...] | ChooseTasks | EverySubset | None = None
    lr: Distribution | None = None
    temperature: Distribution | None = None
    hint_weight: Distribution | None = Field(None, alias="hint.weight")
    branch_tolerance: Distribution | None = None

    @field_validator("width")
    @classmethod
    def _widths(cls, value: tuple[float, ...] | WidthRange | None) -> tuple[float, ...] | WidthRange | None:
        if value is not None:
            widths = value.values() if isinstance(value, WidthRange) else value
            if not widths:
                raise ValueError("expected at least one width")
            _within(StudentSpec, "width", widths)
        return value

    @field_validator("tasks")
    @classmethod
    def _subsets(cls, value: Any) -> Any:
        if isinstance(value, tuple):
            if not value:
                raise ValueError("expected at least one task subset")
            for index, subset in enumerate(value):
                if not subset:
                    raise ValueError(f"subset {index} is empty; every trial needs at least one task")
                if len(set(subset)) != len(subset):
                    raise ValueError(f"subset {index} repeats a task: {list(subset)}")
        return value

    @field_validator("lr", "temperature", "hint_weight", "branch_tolerance")
    @classmethod
    def _in_job_range(cls, value: Distribution | None, info: ValidationInfo) -> Distribution | None:
        if value is not None:
            model, field = _JOB_FIELDS[info.field_name]
            _within(model, field, value.bounds())
        return value

    def widths(self) -> list[float] | None:
        if self.width is None:
            return None
        return self.width.values() if isinstance(self.width, WidthRange) else list(self.width)

    def task_subsets(self) -> list[tuple[str, ...]] | None:
        if self.tasks is None:
            return None
        return list(self.tasks) if isinstance(self.tasks, tuple) else self.tasks.subsets()


class MetricSpec(_Strict):
    """What a trial is ranked (and ASHA-stopped) by: `quality` minus `size_penalty` times the
    student's parameters as a share of the teachers' it replaces (known once the trial finished)."""

    quality: str = MEAN_FIDELITY
    """`mean_fidelity` (over the trial's tasks) or `fidelity/<task>` (a task every trial learns)."""
    size_penalty: float = Field(0.0, ge=0.0)

    @field_validator("quality")
    @classmethod
    def _known(cls, value: str) -> str:
        if value != MEAN_FIDELITY and not (value.startswith(FIDELITY_PREFIX) and len(value) > len(FIDELITY_PREFIX)):
            raise ValueError(f"expected '{MEAN_FIDELITY}' or '{FIDELITY_PREFIX}<task>', got '{value}'")
        return value

    @property
    def task(self) -> str | None:
        """The one task the quality names, if any."""
        return self.quality.removeprefix(FIDELITY_PREFIX) if self.quality != MEAN_FIDELITY else None


class AshaSpec(_Strict):
    grace_period: int = Field(1, ge=1)
    """Stage reports every trial gets before it can be stopped."""
    reduction_factor: float = Field(2.0, gt=1.0)


class SweepSpec(_Strict):
    base: JobSpec
    """A job as `run` takes it; its `output` is the sweep's output, trials go under it."""
    searcher: Literal["random", "grid", "optuna"] = "random"
    """`optuna`: Tree-structured Parzen Estimator, model-based (the `optuna` extra). Declared
    before `axes`, whose check depends on it."""
    axes: AxesSpec = AxesSpec()
    num_samples: int = Field(1, ge=1)
    """Random and optuna search: trials drawn. Grid search: repeats of the whole grid."""
    metric: MetricSpec = MetricSpec()
    scheduler: Literal["asha", "fifo"] = "asha"
    asha: AshaSpec = AshaSpec()
    max_concurrent_trials: int | None = Field(None, ge=1)
    """Default: as many as the cluster can place at once."""
    max_failures: int = Field(1, ge=0)
    """Retries of a failed trial (a Ray Train trial continues from its last stage checkpoint)."""

    @field_validator("metric", mode="before")
    @classmethod
    def _metric_shorthand(cls, value: Any) -> Any:
        return {"quality": value} if isinstance(value, str) else value

    @field_validator("axes")
    @classmethod
    def _grid_is_discrete(cls, axes: AxesSpec, info: ValidationInfo) -> AxesSpec:
        if info.data.get("searcher") == "grid":
            for name, field in AxesSpec.model_fields.items():
                if isinstance(getattr(axes, name), Uniform | LogUniform):
                    raise ValueError(f"{field.alias or name}: grid search takes {{choice: [...]}}, not a continuous range")
        return axes

    def task_subsets(self) -> list[tuple[str, ...]]:
        """Every task subset a trial may learn (the base job's tasks when the axis is absent)."""
        return self.axes.task_subsets() or [self.base.tasks]


def subset_key(tasks: tuple[str, ...] | list[str]) -> str:
    return TASK_SEPARATOR.join(tasks)


def subset_tasks(key: str) -> tuple[str, ...]:
    return tuple(key.split(TASK_SEPARATOR))
