"""Job checks that need no training: teachers, tasks, student, data and output, each error naming
the job file and field. Both the local and the Ray runner call this before any work starts.

Validation writes nothing: a refused job leaves its output untouched. A runner writes
`job.json` with `write_job_record` once every check it makes has passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from ray_amalgam.amalgamation.branch_out import manual_branch_points
from ray_amalgam.amalgamation.engine import entangled_blocks
from ray_amalgam.amalgamation.metrics import count_flops
from ray_amalgam.amalgamation.plan import AmalgamationPlan, make_plan
from ray_amalgam.amalgamation.pool import resolve_pool_job
from ray_amalgam.io.checkpoints import load_teacher, read_teacher_meta
from ray_amalgam.io.fs import absolute_url, atomic_write_text, join, resolve
from ray_amalgam.io.shards import DATASET_META, check_shards, read_dataset_meta
from ray_amalgam.models import MultiTaskNet, create_backbone, teacher_from_weights
from ray_amalgam.spec import BadInputError, JobSpec, dump_spec_json

T = TypeVar("T")

JOB_RECORD = "job.json"


def in_field(source: str, field: str | None, action: Callable[[], T]) -> T:
    """Run `action`; a BadInputError it raises is re-raised naming the job file and `field`
    (None where the error names its field already)."""
    try:
        return action()
    except BadInputError as error:
        raise BadInputError(f"{source}: {field}: {error}" if field else f"{source}: {error}") from None


def with_absolute_paths(job: JobSpec) -> JobSpec:
    """The job with local paths made absolute: Ray workers and Ray Train storage do not share
    the driver's working directory."""
    return job.model_copy(update={
        "teachers": tuple(ref.model_copy(update={"checkpoint": absolute_url(ref.checkpoint)}) for ref in job.teachers),
        "pool": job.pool and absolute_url(job.pool),
        "data": job.data.model_copy(update={"train": absolute_url(job.data.train), "eval": absolute_url(job.data.eval)}),
        "output": absolute_url(job.output),
    })


def load_teacher_model(url: str) -> MultiTaskNet:
    """A teacher checkpoint as its eval-mode model."""
    return teacher_from_weights(*load_teacher(url), url)


def _check_student(job: JobSpec, plan: AmalgamationPlan, teachers: dict[str, MultiTaskNet], source: str) -> None:
    """The student's architecture exists, every trunk block meets a teacher block at its stride,
    and hand-given branch points lie on the trunk."""
    trunk = in_field(source, "student.arch", lambda: create_backbone(plan.student))
    in_field(source, None, lambda: entangled_blocks(plan, trunk, teachers))
    if isinstance(job.student.branch_out, dict):
        branch_out = job.student.branch_out
        in_field(source, None, lambda: manual_branch_points(branch_out, plan.task_names, trunk.num_blocks))


def load_pool(job: JobSpec, source: str = "job") -> tuple[AmalgamationPlan, dict[str, MultiTaskNet]]:
    """Every check that needs no training, writing nothing: the plan, and the frozen eval-mode
    models of the teachers it keeps (built here to check their weights against their metadata).

    Data: each split's metadata, every shard's schema and labels, unique ids across shards, and
    a decode of each shard's first rows at the teachers' input size.
    A job with `pool:` has its teachers chosen from the catalogue first; only those are read.
    """
    job, selection = resolve_pool_job(job, source)
    metas = {
        ref.name: in_field(source, f"teachers[{index}].checkpoint", lambda ref=ref: read_teacher_meta(ref.checkpoint))
        for index, ref in enumerate(job.teachers)
    }
    plan = make_plan(job, metas, source)
    if selection is not None:
        plan = replace(plan, selection=selection.as_dict())
    teachers = {
        ref.name: in_field(source, f"teachers[{index}].checkpoint", lambda ref=ref: load_teacher_model(ref.checkpoint))
        for index, ref in enumerate(job.teachers)
        if ref.name in plan.teachers
    }
    _check_student(job, plan, teachers, source)
    plan = replace(plan, costs={name: float(count_flops(model, plan.input_size)) for name, model in teachers.items()})
    for split in ("train", "eval"):
        url = getattr(job.data, split)
        meta = in_field(source, f"data.{split}", lambda url=url: read_dataset_meta(url))
        if meta.image_size != plan.input_size:
            raise BadInputError(
                f"{source}: data.{split}: images are {meta.image_size} px ({DATASET_META}), the teachers expect {plan.input_size} px"
            )
        in_field(source, f"data.{split}", lambda url=url: check_shards(url))
    return plan, teachers


def validate_job(job: JobSpec, source: str) -> AmalgamationPlan:
    """Everything that can be checked before training (see `load_pool`), writing nothing; the plan if all is well."""
    return load_pool(job, source)[0]


def write_job_record(job: JobSpec, source: str) -> None:
    """Create the output directory and write the job spec there as `job.json`: a run's first
    write, made once the job is known to be valid. An output that cannot be written is bad input."""
    try:
        fs, path = resolve(job.output)
        fs.makedirs(path, exist_ok=True)
        atomic_write_text(join(job.output, JOB_RECORD), dump_spec_json(job))
    except BadInputError as error:
        raise BadInputError(f"{source}: output: {error}") from None
    except (OSError, ValueError) as error:
        raise BadInputError(f"{source}: output: cannot write to {job.output} ({type(error).__name__}: {error})") from None


def load_teachers(plan: AmalgamationPlan) -> dict[str, MultiTaskNet]:
    """The frozen, eval-mode models of the teachers the plan keeps."""
    return {name: load_teacher_model(url) for name, url in plan.checkpoints.items()}
