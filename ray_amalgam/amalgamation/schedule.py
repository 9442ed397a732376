"""How long each stage trains and how its learning rate moves.

`auto` epochs follow the data: each stage sees about `samples_per_stage` images whatever the
dataset's size, so a small dataset is not left undertrained by a fixed epoch count (and a large
one is not walked over many times for nothing).
"""

from __future__ import annotations

import math

import torch

from ray_amalgam.spec import ScheduleSpec

WARMUP_FRACTION = 0.05
"""Share of a stage's steps spent ramping the learning rate up: a freshly built stage (new
adapters, a block that was frozen) starts from large gradients."""


def epochs_for(samples: int, train_rows: int) -> int:
    """Whole epochs that show about `samples` images from `train_rows` rows (at least one)."""
    return max(1, round(samples / max(train_rows, 1)))


def concrete_schedule(schedule: ScheduleSpec, train_rows: int) -> ScheduleSpec:
    """The schedule with `auto` epoch counts replaced by numbers for `train_rows` training rows."""
    update: dict[str, int] = {}
    if schedule.stage_epochs == "auto":
        update["stage_epochs"] = epochs_for(schedule.samples_per_stage, train_rows)
    if schedule.finetune_epochs == "auto":
        update["finetune_epochs"] = epochs_for(schedule.finetune_stages * schedule.samples_per_stage, train_rows)
    return schedule.model_copy(update=update)


def steps_per_epoch(train_rows: int, batch_size: int, workers: int = 1) -> int:
    """Optimizer steps in one epoch when `workers` data-parallel workers share `train_rows` rows."""
    return max(1, math.ceil(train_rows / max(workers, 1) / batch_size))


def stage_lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: ScheduleSpec, total_steps: int | None
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per step: `constant`, or `cosine` (a linear warm-up, then cosine decay to zero over the
    stage's `total_steps`; None, an unknown length, keeps the rate constant). Steps past
    `total_steps` (an uneven split) stay at the floor instead of raising."""
    if schedule.lr_schedule == "constant" or total_steps is None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup = max(1, round(WARMUP_FRACTION * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * done))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
