"""Typed, validated configs: tasks, teachers, pools and jobs."""

from ray_amalgam.spec.dataset import DATASET_FORMAT_VERSION, DatasetMeta
from ray_amalgam.spec.errors import BadInputError
from ray_amalgam.spec.job import (
    ALL,
    BOTH,
    EVERY_OWNER,
    ActorRange,
    DataSpec,
    HintSpec,
    JobSpec,
    ResourcesSpec,
    ScheduleSpec,
    StudentSpec,
    TeacherRef,
    set_job_field,
)
from ray_amalgam.spec.loading import (
    dump_spec_json,
    load_spec_text,
    parse_spec,
    validation_message,
)
from ray_amalgam.spec.pool import CATALOGUE_FORMAT_VERSION, OK, REFUSED, Catalogue, CatalogueEntry
from ray_amalgam.spec.student import STUDENT_FORMAT_VERSION, BranchSpec, StudentMeta
from ray_amalgam.spec.tasks import TaskKind, TaskSpec
from ray_amalgam.spec.teacher import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TEACHER_FORMAT_VERSION,
    BackboneSpec,
    TeacherMeta,
    task_owners,
)

__all__ = [
    "ALL",
    "CATALOGUE_FORMAT_VERSION",
    "Catalogue",
    "CatalogueEntry",
    "EVERY_OWNER",
    "OK",
    "REFUSED",
    "DATASET_FORMAT_VERSION",
    "DatasetMeta",
    "BOTH",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TEACHER_FORMAT_VERSION",
    "ActorRange",
    "BackboneSpec",
    "BadInputError",
    "BranchSpec",
    "DataSpec",
    "HintSpec",
    "JobSpec",
    "ResourcesSpec",
    "STUDENT_FORMAT_VERSION",
    "ScheduleSpec",
    "StudentMeta",
    "StudentSpec",
    "TaskKind",
    "TaskSpec",
    "TeacherMeta",
    "TeacherRef",
    "dump_spec_json",
    "load_spec_text",
    "parse_spec",
    "set_job_field",
    "task_owners",
    "validation_message",
]
