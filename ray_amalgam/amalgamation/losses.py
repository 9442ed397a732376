"""Distillation losses: soft targets per task kind, per-sample teacher choice, hint loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ray_amalgam.spec import TaskKind


def prediction_entropy(logits: Tensor, kind: TaskKind) -> Tensor:
    """Per-sample entropy (N,): of the softmax (multiclass) or the mean binary entropy (multilabel)."""
    if kind == "multiclass":
        log_p = F.log_softmax(logits, dim=1)
        return -(log_p.exp() * log_p).sum(1)
    p = torch.sigmoid(logits)
    # BCE of a probability against itself is its binary entropy.
    return F.binary_cross_entropy_with_logits(logits, p, reduction="none").mean(1)


def least_ambiguous(teacher_logits: Sequence[Tensor], kind: TaskKind) -> Tensor:
    """Per sample, the logits of the teacher with the lowest prediction entropy (ties: the first)."""
    if len(teacher_logits) == 1:
        return teacher_logits[0]
    stacked = torch.stack(list(teacher_logits))  # (T, N, C)
    entropy = torch.stack([prediction_entropy(t, kind) for t in teacher_logits])  # (T, N)
    choice = entropy.argmin(0)
    return stacked[choice, torch.arange(stacked.shape[1], device=stacked.device)]


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, kind: TaskKind, temperature: float) -> Tensor:
    """KL(teacher || student) at temperature T, scaled by T^2 (multiclass), or BCE between the
    student's and the teacher's sigmoids, both at temperature T, summed over labels and scaled by
    T^2 (multilabel); averaged over samples.

    Summed, not averaged, over labels, as the KL sums over classes: a mean would shrink a
    multilabel task's pull on the shared trunk by its label count (measured in
    benchmarks/quality.py --quick: fidelity on a 4-label task 0.89 averaged, 0.91-0.92 summed).
    At T = 1 a confident teacher's sigmoid saturates and its logit's size, which orders images
    for mAP, stops pulling the student; the temperature keeps it (benchmarks/quality.py, full
    setting, 3 seeds: attributes mAP 0.823 at T = 1, 0.856 at T = 4; fidelity 0.922, 0.945)."""
    teacher_logits = teacher_logits.detach().float()
    t = temperature
    if kind == "multiclass":
        log_student = F.log_softmax(student_logits / t, dim=1)
        log_teacher = F.log_softmax(teacher_logits / t, dim=1)
        loss = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    else:
        per_label = F.binary_cross_entropy_with_logits(student_logits / t, torch.sigmoid(teacher_logits / t), reduction="none")
        loss = per_label.sum(1).mean()
    return loss * (t * t)


def ranking_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per label, KL(teacher || student) between softmaxes over the batch's images at temperature
    T, summed over labels and scaled by T^2: it distils how the teacher orders images for each
    label, which is what mAP scores, where the per-label BCE matches each image on its own."""
    t = temperature
    log_student = F.log_softmax(student_logits / t, dim=0)
    log_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=0)
    per_label = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(0)
    return per_label.sum() * (t * t)


def hint_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """MSE between the student's adapted kept channels and the teacher's (float16 on the wire)."""
    return F.mse_loss(student_features, teacher_features.detach().to(student_features.dtype))
