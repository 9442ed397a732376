"""What a teacher emits for a batch: the logits of its chosen heads, and kept hint channels."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ray_amalgam.amalgamation.plan import AmalgamationPlan, hint_key, logits_key
from ray_amalgam.io.images import to_tensor
from ray_amalgam.models import MultiTaskNet, inference_copy


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


class TeacherRunner:
    """One frozen teacher on a device: uint8 (N, H, W, 3) pixels in, its filtered outputs out as
    numpy arrays. The same code runs in a teacher actor, in a driver-side store pass and in
    process. The model is an `inference_copy` (BatchNorm folded, channels_last); on CUDA it also
    runs under autocast, while the CPU path stays fp32."""

    def __init__(self, name: str, model: MultiTaskNet, plan: AmalgamationPlan, device: torch.device) -> None:
        self.name = name
        self.plan = plan
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        meta = plan.teachers[name]
        self.mean, self.std = meta.mean, meta.std
        self.model = inference_copy(model).to(self.device)

    def outputs(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        images = to_tensor(pixels, self.mean, self.std).to(self.device, non_blocking=True)
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self._cuda):
            outputs = teacher_outputs(self.model, self.name, images, self.plan)
        # Logits as float32, kept hint channels as float16 (set by teacher_outputs).
        return {key: value.cpu().numpy() for key, value in outputs.items()}
