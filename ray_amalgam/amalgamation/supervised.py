"""Supervised multi-task teacher training from label columns (for users with labels, and the demo)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ray_amalgam.amalgamation.metrics import matches
from ray_amalgam.io.images import decode_batch, to_tensor
from ray_amalgam.io.shards import holdout_mask, DATASET_META, iter_batches, read_dataset_meta
from ray_amalgam.models import MultiTaskNet, build_teacher
from ray_amalgam.spec import BackboneSpec, BadInputError, TaskSpec, TeacherMeta


@dataclass
class LabelledData:
    ids: list[str]
    images: np.ndarray
    """(N, H, W, 3) uint8."""
    labels: dict[str, np.ndarray]
    """task -> (N,) class indices (multiclass) or (N, L) 0/1 (multilabel)."""
    tasks: tuple[TaskSpec, ...]


def load_labelled(url: str, task_names: Sequence[str]) -> LabelledData:
    """Decode every row of a (small) labelled dataset into memory."""
    meta = read_dataset_meta(url)
    offered = [t.name for t in meta.tasks]
    for name in task_names:
        if name not in offered:
            raise BadInputError(f"{url}: no label column for task '{name}'; its {DATASET_META} offers {offered}")
    tasks = tuple(meta.task(name) for name in task_names)
    ids: list[str] = []
    images: list[np.ndarray] = []
    labels: dict[str, list[np.ndarray]] = {name: [] for name in task_names}
    for table in iter_batches(url, ["id", "image", *task_names], batch_size=512):
        ids += table.column("id").to_pylist()
        images.append(decode_batch(table.column("image").to_pylist(), url, first_row=len(ids) - table.num_rows))
        for task in tasks:
            values = table.column(task.name).to_pylist()
            labels[task.name].append(np.asarray(values, dtype=np.int64 if task.kind == "multiclass" else np.float32))
    if not ids:
        raise BadInputError(f"{url}: the dataset has no rows")
    return LabelledData(ids, np.concatenate(images), {k: np.concatenate(v) for k, v in labels.items()}, tasks)


def task_loss(task: TaskSpec, logits: Tensor, target: Tensor) -> Tensor:
    if task.kind == "multiclass":
        return F.cross_entropy(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, images: Tensor, batch_size: int) -> None:
    """Set every BatchNorm's running statistics to the plain average over `images` under the
    final weights, and leave the model in eval mode.

    During training the running statistics trail the weights as an exponential average, so after
    a short run they describe earlier weights, and eval mode uses them.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    model.train()
    for chunk in images.split(batch_size):
        if len(chunk) > 1:  # one row gives no batch variance where a feature map is 1x1
            model(chunk)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


@dataclass
class TeacherTrainingResult:
    model: MultiTaskNet
    meta: TeacherMeta
    accuracy: dict[str, float]
    """Per-task accuracy on the held-out rows."""
    train_rows: int
    holdout_rows: int


def train_teacher(
    data: LabelledData,
    backbone: BackboneSpec,
    epochs: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    holdout: float = 0.2,
    seed: int = 0,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TeacherTrainingResult:
    """Train a multi-task teacher on labelled rows; `on_step(epoch, rows_done, loss)` reports progress."""
    torch.manual_seed(seed)
    held = holdout_mask(data.ids, holdout)
    if held.all() or not held.any():
        raise BadInputError(f"holdout {holdout} leaves no rows for training or evaluation ({len(data.ids)} rows)")
    train_images = data.images[~held]
    mean = tuple(float(m) for m in train_images.reshape(-1, 3).mean(0) / 255.0)
    std = tuple(float(s) for s in train_images.reshape(-1, 3).std(0) / 255.0 + 1e-3)
    meta = TeacherMeta(backbone=backbone, tasks=data.tasks, input_size=data.images.shape[1], mean=mean, std=std)
    model = build_teacher(meta)
    x_train, x_eval = to_tensor(train_images, mean, std), to_tensor(data.images[held], mean, std)
    y_train = {t.name: torch.from_numpy(data.labels[t.name][~held]) for t in data.tasks}
    y_eval = {t.name: torch.from_numpy(data.labels[t.name][held]) for t in data.tasks}
    steps_per_epoch = max(1, (len(x_train) + batch_size - 1) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            logits = model(x_train[rows])
            loss = sum(task_loss(t, logits[t.name], y_train[t.name][rows]) for t in data.tasks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if on_step is not None:
                on_step(epoch, min(start + batch_size, len(order)), loss.item())
    recalibrate_batch_norm(model, x_train, batch_size)
    correct = {t.name: 0.0 for t in data.tasks}
    with torch.inference_mode():
        for start in range(0, len(x_eval), 256):
            logits = model(x_eval[start : start + 256])
            for t in data.tasks:
                correct[t.name] += float(matches(logits[t.name], y_eval[t.name][start : start + 256], t.kind).sum())
    accuracy = {name: value / len(x_eval) for name, value in correct.items()}
    return TeacherTrainingResult(model, meta, accuracy, len(x_train), len(x_eval))
