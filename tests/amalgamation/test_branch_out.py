import pytest

from ray_amalgam.amalgamation.branch_out import (
    auto_branch_points,
    manual_branch_points,
    noise_margin,
)
from ray_amalgam.spec import BadInputError


def test_auto_branch_out_on_a_constructed_fidelity_sequence():
    history = [
        {"shape": 0.90, "color": 0.80, "size": 0.70},
        {"shape": 0.86, "color": 0.80, "size": 0.50},  # size drops 0.20 -> leaves at block 1
        {"shape": 0.70, "color": 0.79},  # shape drops 0.16 vs 0.86 -> leaves at block 2
        {"color": 0.71},  # color drops 0.08, within tolerance
    ]
    assert auto_branch_points(history, tolerance=0.1) == {"size": 1, "shape": 2}
    assert auto_branch_points(history, tolerance=0.05) == {"size": 1, "shape": 2, "color": 3}
    assert auto_branch_points(history, tolerance=0.5) == {}


def test_a_task_leaves_once_even_if_it_drops_again():
    history = [{"a": 0.9}, {"a": 0.5}, {"a": 0.1}]
    assert auto_branch_points(history, tolerance=0.02) == {"a": 1}


def test_manual_branch_points_default_to_the_last_block():
    assert manual_branch_points({"a": 2}, ["a", "b"], 4) == {"a": 2, "b": 4}
    with pytest.raises(BadInputError, match="student.branch_out.a"):
        manual_branch_points({"a": 5}, ["a"], 4)


def test_a_drop_within_measurement_noise_does_not_branch():
    history = [{"a": 0.80, "b": 0.80}, {"a": 0.70, "b": 0.50}]
    assert auto_branch_points(history, tolerance=0.05) == {"a": 1, "b": 1}
    # On 40 rows per stage, two standard errors of the difference are about 0.19.
    assert noise_margin(0.8, 40, 0.7, 40) == pytest.approx(2 * ((0.16 + 0.21) / 40) ** 0.5)
    assert auto_branch_points(history, tolerance=0.05, samples=[40, 40]) == {"b": 1}
    # Measured on many rows the same 0.10 drop is real.
    assert auto_branch_points(history, tolerance=0.05, samples=[5000, 5000]) == {"a": 1, "b": 1}
