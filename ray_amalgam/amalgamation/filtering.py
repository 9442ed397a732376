"""Feature-level filtering: keep the teacher channels that matter to the chosen heads."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ray_amalgam.amalgamation.engine import branch_teacher, entangled_blocks
from ray_amalgam.amalgamation.plan import AmalgamationPlan
from ray_amalgam.io.images import to_tensor
from ray_amalgam.models import MultiTaskNet, create_backbone
from ray_amalgam.spec import BadInputError


def hinted_blocks(plan: AmalgamationPlan, teachers: Mapping[str, MultiTaskNet]) -> dict[str, list[int]]:
    """teacher -> its blocks that some trunk block is entangled with (where a hint can apply)."""
    blocks = entangled_blocks(plan, create_backbone(plan.student), teachers)
    hinted: dict[str, set[int]] = {}
    for task, matched in blocks.items():
        hinted.setdefault(branch_teacher(plan, task), set()).update(matched)
    return {teacher: sorted(found) for teacher, found in hinted.items()}


def head_score(logits: Mapping[str, Tensor], plan: AmalgamationPlan) -> Tensor:
    """A scalar that grows with the chosen heads' confidence: the summed top logit of each
    multiclass head and the summed probabilities of each multilabel head."""
    total = []
    for task, values in logits.items():
        kind = plan.tasks[plan.task_names.index(task)].kind
        total.append(values.max(1).values.sum() if kind == "multiclass" else torch.sigmoid(values).sum())
    return torch.stack(total).sum()


def rank_hint_channels(
    plan: AmalgamationPlan,
    teachers: Mapping[str, MultiTaskNet],
    calibration_images: np.ndarray,
    keep_fraction: float,
) -> dict[str, dict[int, tuple[int, ...]]]:
    """teacher -> hinted block -> the top `keep_fraction` of its channels (sorted indices),
    ranked by |activation x gradient| of the chosen heads' score on uint8 (N, H, W, 3) images."""
    if not 0.0 < keep_fraction <= 1.0:
        raise BadInputError(f"hint.keep_fraction: expected a value in (0, 1], got {keep_fraction}")
    kept: dict[str, dict[int, tuple[int, ...]]] = {}
    for name, blocks in hinted_blocks(plan, teachers).items():
        teacher, meta = teachers[name], plan.teachers[name]
        device = next(teacher.parameters()).device
        images = to_tensor(calibration_images, meta.mean, meta.std).to(device)
        with torch.enable_grad():
            logits, features = teacher.forward_with_features(images.requires_grad_(True), plan.heads_of(name))
            chosen = [features[b - 1] for b in blocks]
            gradients = torch.autograd.grad(head_score(logits, plan), chosen)
        kept[name] = {}
        for block, activation, gradient in zip(blocks, chosen, gradients):
            importance = (activation.detach() * gradient).abs().sum(dim=(0, 2, 3))
            keep = max(1, math.ceil(keep_fraction * importance.numel()))
            kept[name][block] = tuple(sorted(importance.topk(keep).indices.tolist()))
    return kept
