"""Checkpoints: a directory (any fsspec URL) holding `model.safetensors` and a JSON metadata file.

Weights are only ever read as safetensors: pickles can run code and are refused.
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError

from ray_amalgam.io.fs import (
    committed_directory,
    exists,
    join,
    read_bytes,
    resolve,
    write_bytes,
)
from ray_amalgam.io.metafile import load_versioned, manifest_json, read_manifest
from ray_amalgam.spec import TEACHER_FORMAT_VERSION, BadInputError, TeacherMeta

WEIGHTS = "model.safetensors"
TEACHER_META = "teacher.json"


def save_checkpoint(url: str, tensors: dict[str, torch.Tensor], meta_name: str, meta: dict[str, Any]) -> None:
    """Write `model.safetensors` and `meta_name` (JSON) into `url`, replacing it atomically."""
    # Own, contiguous CPU copies: safetensors refuses tensors that share storage.
    owned = {name: t.detach().to("cpu").clone(memory_format=torch.contiguous_format) for name, t in tensors.items()}
    weights = safetensors.torch.save(owned)
    # Built before the old checkpoint is replaced: on object stores that deletes it first.
    manifest = manifest_json(meta, {WEIGHTS: len(weights)})
    with committed_directory(url, meta_name) as target:
        write_bytes(join(target, WEIGHTS), weights)
        write_bytes(join(target, meta_name), manifest)


def _require(url: str, name: str, meta_name: str) -> str:
    """URL of `name` inside checkpoint `url`; BadInputError naming what is missing."""
    expected = f"expected a checkpoint directory with {WEIGHTS} and {meta_name}"
    if not exists(url):
        raise BadInputError(f"{url}: checkpoint not found; {expected}")
    file_url = join(url, name)
    if not exists(file_url):
        raise BadInputError(f"{url}: missing {name}; {expected}")
    return file_url


def _load_tensors(url: str, meta_name: str) -> dict[str, torch.Tensor]:
    weights_url = _require(url, WEIGHTS, meta_name)
    try:
        return safetensors.torch.load(read_bytes(weights_url))
    except SafetensorError as error:
        raise BadInputError(f"{weights_url} is not a safetensors file (pickled checkpoints are refused): {error}") from None


def read_checkpoint_meta(url: str, meta_name: str) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without reading its weights."""
    meta_url = _require(url, meta_name, meta_name)
    meta = read_manifest(meta_url)
    if not isinstance(meta, dict):
        raise BadInputError(f"{meta_url}: expected a JSON object at the top level, got {type(meta).__name__}")
    return meta


def load_checkpoint(url: str, meta_name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a checkpoint written by `save_checkpoint`."""
    meta = read_checkpoint_meta(url, meta_name)
    return meta, _load_tensors(url, meta_name)


def save_teacher(url: str, state_dict: dict[str, torch.Tensor], meta: TeacherMeta) -> None:
    save_checkpoint(url, state_dict, TEACHER_META, meta.model_dump(mode="json"))


def read_teacher_meta(url: str) -> TeacherMeta:
    """`<url>/teacher.json`, validated; errors name the file and the field."""
    return load_versioned(TeacherMeta, _require(url, TEACHER_META, TEACHER_META), TEACHER_FORMAT_VERSION)


def load_teacher(url: str) -> tuple[TeacherMeta, dict[str, torch.Tensor]]:
    """(metadata, state dict) of a teacher checkpoint; the metadata is validated before weights are read."""
    meta = read_teacher_meta(url)
    return meta, _load_tensors(url, TEACHER_META)


def checkpoint_hash(url: str) -> str:
    """sha256 hex over every file of a checkpoint directory (relative name, size and content)."""
    fs, root = resolve(url)
    if not fs.isdir(root):
        raise BadInputError(f"{url}: checkpoint not found; expected a checkpoint directory")
    root = root.rstrip("/")
    digest = hashlib.sha256()
    for path, info in sorted(fs.find(root, detail=True).items()):
        digest.update(f"{posixpath.relpath(path, root)}\0{info['size']}\0".encode("utf-8"))
        with fs.open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()
