"""What a teacher emits for a batch: the logits of its chosen heads, and kept hint channels."""

from __future__ import annotations

import torch
from torch import Tensor

from ray_amalgam.amalgamation.plan import AmalgamationPlan, hint_key, logits_key
from ray_amalgam.models import MultiTaskNet


@torch.inference_mode()
def teacher_outputs(teacher: MultiTaskNet, name: str, images: Tensor, plan: AmalgamationPlan) -> dict[str, Tensor]:
    """Filtered outputs of teacher `name` for normalized `images` (N,3,H,W).

    Only the chosen heads are evaluated; hint features are cut down to the kept channels
    and sent as float16, so less data moves between teacher actors and trainers.
    """
    heads = plan.heads_of(name)
    hinted = plan.hint_channels.get(name, {})
    if hinted:
        logits, features = teacher.forward_with_features(images, heads)
    else:
        logits, features = teacher(images, heads), []
    out = {logits_key(name, task): value.float() for task, value in logits.items()}
    for block, channels in hinted.items():
        index = torch.as_tensor(channels, device=images.device)
        out[hint_key(name, block)] = features[block - 1].index_select(1, index).half()
    return out
