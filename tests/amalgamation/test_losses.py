import math

import pytest
import torch

from ray_amalgam.amalgamation.losses import (
    distillation_loss,
    hint_loss,
    least_ambiguous,
    prediction_entropy,
    ranking_loss,
)


def test_multiclass_kd_matches_hand_computed_kl_scaled_by_t_squared():
    student = torch.tensor([[0.0, 0.0]])
    # Teacher probabilities (0.75, 0.25) at T=1; the same at T=2 with doubled logits.
    expected_kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    at_t1 = distillation_loss(student, torch.tensor([[math.log(3.0), 0.0]]), "multiclass", 1.0)
    at_t2 = distillation_loss(student, torch.tensor([[2 * math.log(3.0), 0.0]]), "multiclass", 2.0)
    assert at_t1.item() == pytest.approx(expected_kl, rel=1e-5)
    assert at_t2.item() == pytest.approx(4 * expected_kl, rel=1e-5)


def test_multiclass_kd_is_zero_when_student_equals_teacher():
    logits = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    assert distillation_loss(logits, logits, "multiclass", 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_multilabel_kd_is_bce_against_teacher_probabilities_summed_over_labels():
    student = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # probabilities 0.75, 0.5; 0.5, 0.5
    teacher = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # probabilities 0.5, 0.5
    first = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    expected = ((first + math.log(2.0)) + 2 * math.log(2.0)) / 2  # per sample: the labels' sum; then the mean
    assert distillation_loss(student, teacher, "multilabel", 1.0).item() == pytest.approx(expected, rel=1e-5)
    # At T = 2 both sides' logits are halved and the loss is scaled by T^2.
    at_t2 = distillation_loss(2 * student, 2 * teacher, "multilabel", 2.0)
    assert at_t2.item() == pytest.approx(4 * expected, rel=1e-5)


def test_multilabel_kd_at_a_temperature_still_pulls_towards_a_confident_teachers_logit():
    teacher = torch.tensor([[8.0]])  # sigmoid 0.9997: saturated at T = 1
    pulls = {}
    for t in (1.0, 4.0):
        student = torch.tensor([[5.0]], requires_grad=True)
        distillation_loss(student, teacher, "multilabel", t).backward()
        pulls[t] = -student.grad.item()
    # d/ds = T * (sigmoid(s / T) - sigmoid(t / T)): 0.006 at T = 1, 0.41 at T = 4.
    assert pulls[1.0] == pytest.approx(torch.sigmoid(torch.tensor(8.0)).item() - torch.sigmoid(torch.tensor(5.0)).item(), rel=1e-4)
    assert pulls[4.0] > 50 * pulls[1.0] > 0


def test_ranking_loss_ignores_a_per_label_offset_and_pulls_the_teachers_top_image_up():
    teacher = torch.tensor([[3.0, -1.0], [0.0, 2.0], [-2.0, 0.5]])  # 3 images x 2 labels
    shifted = teacher + torch.tensor([5.0, -7.0])  # same order of images under every label
    assert ranking_loss(shifted, teacher, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(shifted, teacher, "multilabel", 4.0).item() > 1.0

    student = torch.zeros(3, 2, requires_grad=True)  # no order yet
    ranking_loss(student, teacher, 4.0).backward()
    # Label 0: image 0 is the teacher's top; label 1: image 1. Descent raises exactly those.
    assert student.grad[:, 0].argmin().item() == 0
    assert student.grad[:, 1].argmin().item() == 1
    assert student.grad.sum(0).abs().max().item() < 1e-6  # it moves images against each other only


def test_entropy_values():
    assert prediction_entropy(torch.zeros(1, 4), "multiclass").item() == pytest.approx(math.log(4.0), rel=1e-5)
    assert prediction_entropy(torch.zeros(1, 3), "multilabel").item() == pytest.approx(math.log(2.0), rel=1e-5)
    assert prediction_entropy(torch.tensor([[50.0, -50.0]]), "multilabel").item() == pytest.approx(0.0, abs=1e-6)


def test_least_ambiguous_picks_the_confident_teacher_per_sample():
    sure, unsure = torch.tensor([9.0, 0.0, 0.0]), torch.tensor([0.1, 0.0, 0.0])
    first = torch.stack([sure, unsure])
    second = torch.stack([unsure + 1, sure * 2])
    chosen = least_ambiguous([first, second], "multiclass")
    assert torch.equal(chosen[0], sure)
    assert torch.equal(chosen[1], sure * 2)


def test_hint_loss_is_mse_against_half_precision_targets():
    student = torch.tensor([[1.0, 3.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 1.0]], dtype=torch.float16)
    loss = hint_loss(student, teacher)
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2)
    loss.backward()
    assert student.grad is not None
