import numpy as np
import pytest
import torch
from torch import nn

from ray_amalgam.amalgamation.metrics import (
    average_precision,
    count_flops,
    count_params,
    fidelity_matches,
    matches,
    mean_average_precision,
)


def test_average_precision_hand_computed():
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    positives = np.array([1, 0, 1, 0])
    assert average_precision(scores, positives) == pytest.approx((1.0 + 2.0 / 3.0) / 2)
    assert average_precision(scores, np.zeros(4)) is None
    labels = np.stack([positives, 1 - positives], axis=1)
    both = mean_average_precision(np.stack([scores, -scores], axis=1), labels)
    assert both == pytest.approx(((1 + 2 / 3) / 2 + (1 + 2 / 3) / 2) / 2)


def test_accuracy_and_fidelity():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    assert matches(logits, torch.tensor([0, 1, 1]), "multiclass").tolist() == [1.0, 1.0, 0.0]
    multilabel = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    assert matches(multilabel, torch.tensor([[1, 0], [0, 0]]), "multilabel").tolist() == [1.0, 0.0]
    teacher = torch.tensor([[5.0, -2.0], [-1.0, 3.0]])
    assert fidelity_matches(multilabel, teacher, "multilabel").tolist() == [1.0, 0.5]


def test_params_and_flops_of_a_linear_layer():
    layer = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    assert count_params(layer) == 3 * 64 * 10 + 10
    assert count_flops(layer, 8) == 2 * 3 * 64 * 10
