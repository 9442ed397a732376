import io
import json

import pytest
import torch

from ray_amalgam.io import (
    LISTED_FILES,
    checkpoint_hash,
    exists,
    join,
    load_checkpoint,
    load_teacher,
    read_bytes,
    read_teacher_meta,
    resolve,
    save_checkpoint,
    save_teacher,
    write_bytes,
)
from ray_amalgam.spec import BackboneSpec, BadInputError, TaskSpec, TeacherMeta

META = TeacherMeta(
    backbone=BackboneSpec(arch="resnet18", width=0.25),
    tasks=(TaskSpec(name="shape", kind="multiclass", classes=("circle", "square")),),
    input_size=32,
)


def _state():
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    return {"weight": weight, "weight_t": weight.t(), "row": weight[1], "steps": torch.tensor(7)}


@pytest.fixture(autouse=True)
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", refuse)


def test_checkpoint_round_trip_with_shared_storage(base_url):
    url = join(base_url, "ckpt")
    state = _state()
    save_checkpoint(url, state, "student.json", {"width": 0.5, "tasks": ["shape"]})
    meta, tensors = load_checkpoint(url, "student.json")
    assert meta == {"width": 0.5, "tasks": ["shape"]}
    assert tensors.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(tensors[name], tensor), name


def test_teacher_round_trip_and_hash(base_url):
    url = join(base_url, "teacher")
    save_teacher(url, _state(), META)
    meta, tensors = load_teacher(url)
    assert meta == META and read_teacher_meta(url) == META
    assert torch.equal(tensors["weight"], _state()["weight"])

    digest = checkpoint_hash(url)
    assert len(digest) == 64 and digest == checkpoint_hash(url)
    save_teacher(url, _state(), META)
    assert checkpoint_hash(url) == digest  # same content, same hash
    changed = _state() | {"steps": torch.tensor(8)}
    save_teacher(url, changed, META)
    assert checkpoint_hash(url) != digest


def test_pickled_weights_are_refused(base_url):
    url = join(base_url, "teacher")
    save_teacher(url, _state(), META)
    buffer = io.BytesIO()
    torch.save(_state(), buffer)
    write_bytes(join(url, "model.safetensors"), buffer.getvalue())
    # Without the file list, as in a checkpoint made by hand or before manifests listed files.
    meta = json.loads(read_bytes(join(url, "teacher.json")))
    del meta[LISTED_FILES]
    write_bytes(join(url, "teacher.json"), json.dumps(meta).encode())
    with pytest.raises(BadInputError, match=r"teacher/model\.safetensors is not a safetensors file \(pickled checkpoints are refused\)"):
        load_teacher(url)


def test_missing_directory_or_file(base_url):
    url = join(base_url, "teacher")
    with pytest.raises(BadInputError, match=r"teacher: checkpoint not found; expected a checkpoint directory with model\.safetensors and teacher\.json"):
        load_teacher(url)
    save_teacher(url, _state(), META)
    weights = read_bytes(join(url, "model.safetensors"))
    fs, path = resolve(join(url, "model.safetensors"))
    fs.rm(path)
    with pytest.raises(BadInputError, match=r"teacher: model\.safetensors is missing or not the \d+ bytes teacher\.json lists"):
        load_teacher(url)
    write_bytes(join(url, "model.safetensors"), weights)
    fs.rm(resolve(join(url, "teacher.json"))[1])
    with pytest.raises(BadInputError, match=r"teacher: missing teacher\.json"):
        load_teacher(url)


def test_teacher_meta_errors_name_file_and_field(base_url):
    url = join(base_url, "teacher")
    save_teacher(url, _state(), META)
    meta_url = join(url, "teacher.json")
    data = json.loads(read_bytes(meta_url))

    write_bytes(meta_url, json.dumps(data | {"format_version": 2}).encode())
    with pytest.raises(BadInputError, match=r"teacher\.json: format_version 2 is not supported; this ray_amalgam reads format_version 1"):
        load_teacher(url)

    write_bytes(meta_url, json.dumps(data | {"input_size": 4}).encode())
    with pytest.raises(BadInputError, match=r"teacher/teacher\.json: input_size: "):
        load_teacher(url)

    write_bytes(meta_url, b"[1, 2]")
    with pytest.raises(BadInputError, match=r"teacher\.json: expected a mapping"):
        read_teacher_meta(url)


def test_failed_save_keeps_previous_checkpoint(base_url):
    url = join(base_url, "ckpt")
    save_checkpoint(url, _state(), "student.json", {"version": 1})
    with pytest.raises(TypeError):
        save_checkpoint(url, _state(), "student.json", {"not_json": object()})
    assert load_checkpoint(url, "student.json")[0] == {"version": 1}
    assert exists(join(url, "model.safetensors"))
