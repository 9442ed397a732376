"""Job checks that need no training: teachers, tasks, data and output, each error naming the
job file and field. Both the local and the Ray runner call this before any work starts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ray_amalgam.amalgamation.plan import AmalgamationPlan, make_plan
from ray_amalgam.io.checkpoints import load_teacher, read_teacher_meta
from ray_amalgam.io.fs import absolute_url, atomic_write_text, join, resolve
from ray_amalgam.io.shards import list_shards, read_dataset_meta
from ray_amalgam.models import MultiTaskNet, teacher_from_weights
from ray_amalgam.spec import BadInputError, JobSpec, dump_spec_json

T = TypeVar("T")


def in_field(source: str, field: str, action: Callable[[], T]) -> T:
    """Run `action`; a BadInputError it raises is re-raised naming the job file and field."""
    try:
        return action()
    except BadInputError as error:
        raise BadInputError(f"{source}: {field}: {error}") from None


def check_output(job: JobSpec, source: str) -> None:
    """The output URL must be writable: probe by creating it and writing the job spec there."""
    try:
        fs, path = resolve(job.output)
        fs.makedirs(path, exist_ok=True)
        atomic_write_text(join(job.output, "job.json"), dump_spec_json(job))
    except BadInputError as error:
        raise BadInputError(f"{source}: output: {error}") from None
    except (OSError, ValueError) as error:
        raise BadInputError(f"{source}: output: cannot write to {job.output} ({type(error).__name__}: {error})") from None


def with_absolute_paths(job: JobSpec) -> JobSpec:
    """The job with local paths made absolute: Ray workers and Ray Train storage do not share
    the driver's working directory."""
    return job.model_copy(update={
        "teachers": tuple(ref.model_copy(update={"checkpoint": absolute_url(ref.checkpoint)}) for ref in job.teachers),
        "data": job.data.model_copy(update={"train": absolute_url(job.data.train), "eval": absolute_url(job.data.eval)}),
        "output": absolute_url(job.output),
    })


def validate_job(job: JobSpec, source: str) -> AmalgamationPlan:
    """Everything that can be checked before training; the plan if all is well."""
    metas = {
        ref.name: in_field(source, f"teachers[{index}].checkpoint", lambda ref=ref: read_teacher_meta(ref.checkpoint))
        for index, ref in enumerate(job.teachers)
    }
    plan = make_plan(job, metas, source)
    for split in ("train", "eval"):
        url = getattr(job.data, split)
        meta = in_field(source, f"data.{split}", lambda url=url: read_dataset_meta(url))
        in_field(source, f"data.{split}", lambda url=url: list_shards(url))
        if meta.image_size != plan.input_size:
            raise BadInputError(
                f"{source}: data.{split}: images are {meta.image_size} px (dataset.json), the teachers expect {plan.input_size} px"
            )
    check_output(job, source)
    return plan


def load_teachers(plan: AmalgamationPlan) -> dict[str, MultiTaskNet]:
    """The frozen, eval-mode models of the teachers the plan keeps."""
    models: dict[str, Any] = {}
    for name, url in plan.checkpoints.items():
        meta, state = load_teacher(url)
        models[name] = teacher_from_weights(meta, state, url)
    return models
