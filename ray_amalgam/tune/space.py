"""From a sweep spec to Tune's search space, and from one trial's config back to a job."""

from __future__ import annotations

from typing import Any

from ray import tune

from ray_amalgam.io.checkpoints import read_teacher_meta
from ray_amalgam.spec import BadInputError, JobSpec, set_job_field, task_owners
from ray_amalgam.spec.sweep import TASK_SEPARATOR, Choice, LogUniform, SweepSpec, subset_key, subset_tasks

AXIS_FIELDS: dict[str, tuple[str, ...]] = {
    "width": ("student", "width"),
    "tasks": ("tasks",),
    "lr": ("schedule", "lr"),
    "temperature": ("schedule", "temperature"),
    "hint_weight": ("hint", "weight"),
    "branch_tolerance": ("student", "branch_tolerance"),
}
"""Trial config key -> the job field it sets."""


def _discrete(values: list[Any], grid: bool) -> Any:
    return tune.grid_search(values) if grid else tune.choice(values)


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Tune's search space: lists become grid axes (grid) or choices (random); task subsets are
    string keys; uniform/loguniform are sampled (random search only)."""
    grid = spec.searcher == "grid"
    space: dict[str, Any] = {}
    widths = spec.axes.widths()
    if widths is not None:
        space["width"] = _discrete(widths, grid)
    subsets = spec.axes.task_subsets()
    if subsets is not None:
        space["tasks"] = _discrete([subset_key(s) for s in subsets], grid)
    for name in ("lr", "temperature", "hint_weight", "branch_tolerance"):
        axis = getattr(spec.axes, name)
        if isinstance(axis, Choice):
            space[name] = _discrete(list(axis.choice), grid)
        elif isinstance(axis, LogUniform):
            space[name] = tune.loguniform(*axis.loguniform)
        elif axis is not None:
            space[name] = tune.uniform(*axis.uniform)
    return space


def _only(mapping: dict[str, Any], tasks: tuple[str, ...]) -> dict[str, Any]:
    return {task: value for task, value in mapping.items() if task in tasks}


def job_for_tasks(base: JobSpec, tasks: tuple[str, ...], output: str, **fields: Any) -> JobSpec:
    """`base` learning `tasks`, writing to `output`: per-task settings of other tasks are dropped
    (a job refuses settings for tasks it does not learn)."""
    data = base.model_dump(mode="json")
    for key, value in fields.items():
        set_job_field(data, AXIS_FIELDS[key], value)
    data["tasks"] = list(tasks)
    data["task_teachers"] = _only(data["task_teachers"], tasks)
    data["schedule"]["task_weights"] = _only(data["schedule"]["task_weights"], tasks)
    if isinstance(data["student"]["branch_out"], dict):
        data["student"]["branch_out"] = _only(data["student"]["branch_out"], tasks)
    data["output"] = output
    return JobSpec.model_validate(data)


def trial_job(base: JobSpec, config: dict[str, Any], output: str) -> JobSpec:
    """The job one trial runs: `base` with the trial's axis values."""
    tasks = subset_tasks(config["tasks"]) if "tasks" in config else base.tasks
    return job_for_tasks(base, tasks, output, **{k: v for k, v in config.items() if k != "tasks"})


def union_tasks(spec: SweepSpec) -> tuple[str, ...]:
    """Every task any trial learns, in first-seen order: the shared store holds all their targets."""
    seen: dict[str, None] = {}
    for subset in spec.task_subsets():
        seen.update(dict.fromkeys(subset))
    return tuple(seen)


def check_against_pool(spec: SweepSpec, source: str) -> None:
    """BadInputError naming the field when a swept task no teacher owns, or a metric naming a task
    that not every trial learns (its score would be undefined there)."""
    metas = {}
    for index, ref in enumerate(spec.base.teachers):
        try:
            metas[ref.name] = read_teacher_meta(ref.checkpoint)
        except BadInputError as error:
            raise BadInputError(f"{source}: base.teachers[{index}].checkpoint: {error}") from None
    offered = sorted(task_owners(metas))
    field = "axes.tasks" if spec.axes.tasks is not None else "base.tasks"
    for task in union_tasks(spec):
        if TASK_SEPARATOR in task:
            raise BadInputError(f"{source}: {field}: task names may not contain '{TASK_SEPARATOR}' (got '{task}')")
        if task not in offered:
            raise BadInputError(f"{source}: {field}: no teacher owns task '{task}'; the pool offers {offered}")
    named = spec.metric.task
    if named is not None:
        missing = [subset_key(s) for s in spec.task_subsets() if named not in s]
        if missing:
            raise BadInputError(f"{source}: metric: '{spec.metric.quality}' names a task the trials {missing} do not learn")
