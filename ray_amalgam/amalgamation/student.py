"""Student checkpoints (safetensors + `student.json`) and batch prediction to Parquet."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ray_amalgam.io.checkpoints import TEACHER_META, load_checkpoint, save_checkpoint
from ray_amalgam.io.fs import atomic_write_bytes, exists, join
from ray_amalgam.io.images import decode_batch, to_tensor
from ray_amalgam.io.shards import iter_batches
from ray_amalgam.models import TargetNet, build_targetnet, load_state_strict
from ray_amalgam.spec import (
    STUDENT_FORMAT_VERSION,
    BadInputError,
    StudentMeta,
    parse_spec,
)

STUDENT_META = "student.json"


def save_student(url: str, student: TargetNet, meta: StudentMeta) -> None:
    """Write the student's weights and metadata into directory `url`, atomically."""
    save_checkpoint(url, student.state_dict(), STUDENT_META, meta.model_dump(mode="json"))


def load_student(url: str) -> tuple[StudentMeta, TargetNet]:
    """Rebuild a student from its checkpoint alone (no teacher needed), in eval mode."""
    if not exists(join(url, STUDENT_META)) and exists(join(url, TEACHER_META)):
        # Both are checkpoint directories; "missing student.json" alone leaves the user guessing.
        raise BadInputError(f"{url}: a teacher checkpoint ({TEACHER_META}), not a student; expected a directory with {STUDENT_META}")
    data, tensors = load_checkpoint(url, STUDENT_META)
    version = data.get("format_version", STUDENT_FORMAT_VERSION)
    if version != STUDENT_FORMAT_VERSION:
        raise BadInputError(f"{url}/{STUDENT_META}: format_version {version!r} is not supported; expected {STUDENT_FORMAT_VERSION}")
    meta = parse_spec(StudentMeta, data, f"{url}/{STUDENT_META}")
    student = build_targetnet(meta)
    load_state_strict(student, tensors, url)
    return meta, student.eval()


def iter_image_batches(meta: StudentMeta, data_url: str, batch_size: int) -> Iterator[tuple[list, torch.Tensor]]:
    """(ids, normalized image tensor) batches of dataset `data_url`, in the student's preprocessing;
    images of another size than the student's input are refused."""
    first_row = 0
    for table in iter_batches(data_url, ["id", "image"], batch_size):
        images = decode_batch(table.column("image").to_pylist(), data_url, first_row=first_row)
        if images.shape[1:3] != (meta.input_size, meta.input_size):
            raise BadInputError(f"{data_url}: images are {images.shape[2]}x{images.shape[1]}, the student expects {meta.input_size}x{meta.input_size}")
        first_row += table.num_rows
        yield table.column("id").to_pylist(), to_tensor(images, meta.mean, meta.std)


@torch.inference_mode()
def predict(student: TargetNet, meta: StudentMeta, data_url: str, out_url: str, batch_size: int = 256) -> int:
    """Write one Parquet file `out_url` with `id` and, per task, `<task>` (class name, or list of
    label names at probability 0.5) and `<task>_prob` (class/label probabilities). Returns rows."""
    student.eval()
    device = next(student.parameters()).device
    columns: dict[str, list] = {"id": []}
    for task in meta.tasks:
        columns[task.name], columns[f"{task.name}_prob"] = [], []
    for ids, images in iter_image_batches(meta, data_url, batch_size):
        logits = student(images.to(device))
        columns["id"] += ids
        for task in meta.tasks:
            values = logits[task.name].float().cpu()
            if task.kind == "multiclass":
                probabilities = values.softmax(1)
                columns[task.name] += [task.classes[i] for i in probabilities.argmax(1).tolist()]
            else:
                probabilities = values.sigmoid()
                columns[task.name] += [[task.labels[i] for i, on in enumerate(row) if on] for row in (probabilities > 0.5).tolist()]
            columns[f"{task.name}_prob"] += probabilities.tolist()
    probability_columns = {f"{task.name}_prob" for task in meta.tasks}
    table = pa.table(
        {
            name: pa.array(values, type=pa.list_(pa.float32()) if name in probability_columns else None)
            for name, values in columns.items()
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write_bytes(out_url, buffer.getvalue())
    return table.num_rows
