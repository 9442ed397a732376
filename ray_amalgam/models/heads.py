"""Per-task classification heads."""

from __future__ import annotations

from torch import Tensor, nn

from ray_amalgam.spec import TaskSpec


class TaskHead(nn.Module):
    """Global average pool + linear layer: logits for one task (softmax or per-label sigmoid)."""

    def __init__(self, in_channels: int, task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, task.num_outputs)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc(self.pool(h).flatten(1))
