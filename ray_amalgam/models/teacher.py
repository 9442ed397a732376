"""Multi-task teacher: a staged backbone with one head per task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from copy import deepcopy
from itertools import pairwise

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ray_amalgam.models.backbones import StagedBackbone, create_backbone
from ray_amalgam.models.heads import TaskHead
from ray_amalgam.spec import BadInputError, TaskSpec, TeacherMeta


class MultiTaskNet(nn.Module):
    """Stem, blocks B1..BL, and a head per task on the output of BL."""

    def __init__(self, backbone: StagedBackbone, tasks: Sequence[TaskSpec]) -> None:
        super().__init__()
        self.backbone = backbone
        self.tasks = tuple(tasks)
        self.heads = nn.ModuleDict({t.name: TaskHead(backbone.channels[-1], t) for t in tasks})

    @property
    def num_blocks(self) -> int:
        return self.backbone.num_blocks

    def heads_from(self, h: Tensor, after_block: int, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Logits of `tasks` (default all) from the output `h` of block `after_block` (1-based)."""
        h = self.backbone.run_blocks(h, after_block, self.num_blocks)
        names = self.heads.keys() if tasks is None else tasks
        return {name: self.heads[name](h) for name in names}

    def forward(self, x: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        return self.heads_from(self.backbone.stem(x), 0, tasks)

    def forward_with_features(self, x: Tensor, tasks: Sequence[str] | None = None) -> tuple[dict[str, Tensor], list[Tensor]]:
        """Logits and the output of every block (index i holds block i+1)."""
        h = self.backbone.stem(x)
        features = []
        for block in self.backbone.blocks:
            h = block(h)
            features.append(h)
        names = self.heads.keys() if tasks is None else tasks
        return {name: self.heads[name](h) for name in names}, features


def build_teacher(meta: TeacherMeta) -> MultiTaskNet:
    return MultiTaskNet(create_backbone(meta.backbone), meta.tasks)


def load_state_strict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load weights that must match the architecture exactly; mismatches are bad input."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise BadInputError(f"{source}: weights do not match the architecture in its metadata ({detail})")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise BadInputError(
                f"{source}: weight '{name}' has shape {tuple(state[name].shape)}, expected {tuple(tensor.shape)}"
            )
    with torch.no_grad():
        model.load_state_dict(dict(state), strict=True)


def teacher_from_weights(meta: TeacherMeta, state: Mapping[str, Tensor], source: str) -> MultiTaskNet:
    """Rebuild a teacher from its metadata and weights, in eval mode."""
    model = build_teacher(meta)
    load_state_strict(model, state, source)
    return model.eval()


def inference_copy(model: MultiTaskNet) -> MultiTaskNet:
    """A frozen copy that only answers: each BatchNorm folded into the convolution before it,
    weights channels_last. The same outputs up to float rounding, 1.6x as fast on a 2-core CPU
    (`benchmarks/teacher_pass.py`)."""
    copy = deepcopy(model).eval().requires_grad_(False)
    _fold_batchnorms(copy)
    return copy.to(memory_format=torch.channels_last)


def _fold_batchnorms(module: nn.Module) -> None:
    # Registration order is call order in every registered backbone (a test holds each to it).
    for (conv_name, conv), (norm_name, norm) in pairwise(list(module.named_children())):
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
            setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
            setattr(module, norm_name, nn.Identity())
    for child in module.children():
        _fold_batchnorms(child)
