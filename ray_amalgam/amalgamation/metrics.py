"""Evaluation: fidelity to teachers, accuracy and mAP against labels, params, FLOPs, latency."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ray_amalgam.spec import TaskKind


def predictions(logits: Tensor, kind: TaskKind) -> Tensor:
    """Top-1 class (N,) for multiclass; 0/1 per label (N, C) at probability 0.5 for multilabel."""
    return logits.argmax(1) if kind == "multiclass" else (logits > 0).long()


def matches(logits: Tensor, targets: Tensor, kind: TaskKind) -> Tensor:
    """Per-sample agreement in [0, 1] of the predictions of `logits` with target predictions:
    class indices (N,) for multiclass, 0/1 per label (N, C) for multilabel (fraction of labels)."""
    same = predictions(logits, kind) == targets.long()
    return same.float() if kind == "multiclass" else same.float().mean(1)


def fidelity_matches(student_logits: Tensor, teacher_logits: Tensor, kind: TaskKind) -> Tensor:
    """Per-sample agreement of student with teacher: top-1 match, or per-label match at 0.5."""
    return matches(student_logits, predictions(teacher_logits, kind), kind)


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Average precision of one label (area under the step precision-recall curve); None
    when the label has no positive sample."""
    positives = positives.astype(bool)
    if not positives.any():
        return None
    order = np.argsort(-scores, kind="stable")
    hits = positives[order]
    precision_at_hit = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
    return float(precision_at_hit.mean())


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over labels (columns) with at least one positive; NaN if none has."""
    values = [ap for c in range(labels.shape[1]) if (ap := average_precision(scores[:, c], labels[:, c])) is not None]
    return float(np.mean(values)) if values else float("nan")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(forward: Callable[[Tensor], object], input_size: int) -> int:
    """FLOPs of one forward pass on one image (multiply-add = 2 FLOPs)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        forward(torch.zeros(1, 3, input_size, input_size))
    return int(counter.get_total_flops())


def cpu_latency_ms(forward: Callable[[Tensor], object], input_size: int, batch_size: int = 32, repeats: int = 5) -> float:
    """Median CPU milliseconds per image for batched inference."""
    images = torch.randn(batch_size, 3, input_size, input_size)
    times = []
    with torch.inference_mode():
        forward(images)  # warm-up: allocator and kernel selection
        for _ in range(repeats):
            start = time.perf_counter()
            forward(images)
            times.append((time.perf_counter() - start) * 1000.0 / batch_size)
    return float(np.median(times))
