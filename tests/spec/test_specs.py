"""Spec validation: good configs load, bad ones name the file, field and what was expected."""

import pytest

from ray_amalgam.spec import (
    BackboneSpec,
    BadInputError,
    JobSpec,
    TaskSpec,
    TeacherMeta,
    load_spec_text,
    parse_spec,
    set_job_field,
    task_owners,
)

GOOD_JOB = """
teachers:
  - {name: a, checkpoint: /ckpt/a}
  - {name: b, checkpoint: s3://bucket/b}
tasks: [shape, position]
data: {train: /data/train, eval: /data/eval}
student: {width: 0.5, branch_out: {shape: 3}}
schedule: {stage_epochs: 2, finetune_epochs: 1, batch_size: 32}
teacher_outputs: stream
resources: {num_workers: 2, teacher_actors: {min: 1, max: 2}}
output: /out
"""


def test_good_job_loads_with_defaults():
    job = load_spec_text(JobSpec, GOOD_JOB, "job.yaml")
    assert job.tasks == ("shape", "position")
    assert job.student.branch_out == {"shape": 3}
    assert job.resources.teacher_actors.max == 2
    assert job.hint.enabled is False and job.schedule.temperature == 4.0
    assert job.schedule.stage_epochs == 2 and job.schedule.lr_schedule == "cosine"
    assert JobSpec.model_fields["schedule"].default.finetune_epochs == "auto"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("output: /out", ""), "job.yaml: output: Field required"),
        (lambda t: t.replace("width: 0.5", "width: 3"), "job.yaml: student.width: Input should be less than or equal to 1"),
        (lambda t: t.replace("teacher_outputs: stream", "teacher_outputs: disk"), "job.yaml: teacher_outputs: Input should be 'stream' or 'store'"),
        (lambda t: t.replace("batch_size: 32", "batch_size: 32, epochs: 3"), "job.yaml: schedule.epochs: Extra inputs are not permitted"),
        (lambda t: t.replace("batch_size: 32", "batch_size: 32, stage_epochs: lots"),
         "job.yaml: schedule.stage_epochs: expected 'auto' or a whole number >= 1 (got 'lots')"),
        (lambda t: t.replace("batch_size: 32", "batch_size: 32, finetune_epochs: -1"),
         "job.yaml: schedule.finetune_epochs: expected 'auto' or a whole number >= 0 (got -1)"),
        (lambda t: t.replace("[shape, position]", "[shape, shape]"), "job.yaml: tasks: tasks repeat"),
        (lambda t: t.replace("{shape: 3}", "{color: 3}"), "student.branch_out names task 'color'"),
        (lambda t: t.replace("{min: 1, max: 2}", "{min: 3, max: 2}"), "resources.teacher_actors: max (2) must be >= min (3)"),
        (lambda t: t.replace("name: b,", "name: a,"), "teacher names repeat"),
        (lambda t: t + "task_teachers: {shape: z}\n", "task_teachers.shape: 'z' is not a teacher of this job"),
        (lambda t: t.replace("teachers:\n", "teachers: 5\nx:\n"), "job.yaml: teachers: Input should be a valid tuple"),
        (lambda t: t + "  bad: [\n", "job.yaml: not valid YAML at line"),
    ],
)
def test_bad_job_names_file_and_field(edit, message):
    with pytest.raises(BadInputError) as error:
        load_spec_text(JobSpec, edit(GOOD_JOB), "job.yaml")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_set_job_field_sets_a_nested_field_and_an_unknown_section_is_refused_by_name():
    data = load_spec_text(JobSpec, GOOD_JOB, "job.yaml").model_dump(mode="json")
    set_job_field(data, ("schedule", "lr"), 0.01)
    set_job_field(data, ("tasks",), ["shape"])
    job = JobSpec.model_validate(data)
    assert job.schedule.lr == 0.01 and job.schedule.batch_size == 32 and job.tasks == ("shape",)
    set_job_field(data, ("schedul", "lr"), 0.01)
    with pytest.raises(BadInputError, match=r"job.yaml: schedul: Extra inputs are not permitted"):
        parse_spec(JobSpec, data, "job.yaml")


def test_top_level_must_be_mapping():
    with pytest.raises(BadInputError, match=r"job.yaml: expected a mapping at the top level, got list"):
        load_spec_text(JobSpec, "- 1\n- 2\n", "job.yaml")


def test_augment_requires_stream():
    text = GOOD_JOB.replace("teacher_outputs: stream", "teacher_outputs: store").replace("batch_size: 32", "batch_size: 32, augment: true")
    with pytest.raises(BadInputError, match="augment needs teacher_outputs: stream"):
        load_spec_text(JobSpec, text, "job.yaml")


def test_task_kinds():
    shape = TaskSpec(name="shape", kind="multiclass", classes=("circle", "square"))
    attrs = TaskSpec(name="attrs", kind="multilabel", labels=("border",))
    assert shape.names == ("circle", "square") and shape.num_outputs == 2
    assert attrs.names == ("border",) and attrs.num_outputs == 1
    for text, message in [
        ("name: s\nkind: multiclass\nclasses: [a]", "at least 2 classes"),
        ("name: s\nkind: multilabel\nclasses: [a, b]", "takes 'labels', not 'classes'"),
        ("name: s\nkind: regression\nclasses: [a, b]", "kind: Input should be 'multiclass' or 'multilabel'"),
        ("name: s\nkind: multiclass\nclasses: [a, a]", "repeats a class/label name"),
        ("name: 'a b'\nkind: multiclass\nclasses: [a, b]", "task name must be letters"),
    ]:
        with pytest.raises(BadInputError, match=message):
            load_spec_text(TaskSpec, text, "task.yaml")


def _teacher(*tasks: TaskSpec) -> TeacherMeta:
    return TeacherMeta(backbone=BackboneSpec(arch="resnet18", width=0.25), tasks=tasks, input_size=32)


def test_pool_shares_identical_tasks_and_refuses_conflicts():
    shape = TaskSpec(name="shape", kind="multiclass", classes=("circle", "square"))
    color = TaskSpec(name="color", kind="multiclass", classes=("red", "blue"))
    owners = task_owners({"a": _teacher(shape, color), "b": _teacher(shape)})
    assert owners == {"shape": ["a", "b"], "color": ["a"]}
    other_shape = TaskSpec(name="shape", kind="multiclass", classes=("circle", "star"))
    with pytest.raises(BadInputError, match="teachers 'a' and 'b' both define task 'shape' differently"):
        task_owners({"a": _teacher(shape), "b": _teacher(other_shape)})
