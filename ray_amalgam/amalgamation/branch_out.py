"""Branch-out: where each task leaves the shared trunk, from fidelity per block stage."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ray_amalgam.spec import BadInputError


def noise_margin(previous: float, previous_samples: int, current: float, current_samples: int) -> float:
    """About two standard errors of the difference of two fidelities measured on these many
    samples (binomial; conservative for multilabel fidelity): a smaller drop may be chance."""
    if previous_samples <= 0 or current_samples <= 0:
        return 0.0
    variance = previous * (1 - previous) / previous_samples + current * (1 - current) / current_samples
    return 2.0 * math.sqrt(variance)


def auto_branch_points(
    history: Sequence[Mapping[str, float]], tolerance: float, samples: Sequence[int] | None = None
) -> dict[str, int]:
    """Tasks that left the trunk, with their branch point (1-based trunk block).

    `history[i]` holds the fidelity of the tasks still on the trunk after block stage i+1,
    measured on `samples[i]` held-out rows. A task whose fidelity after stage l is more than
    `tolerance` (plus the measurement noise, when sample counts are given) below its fidelity
    after stage l-1 leaves at l-1; later entries for it are ignored.
    """
    counts = list(samples) if samples is not None else [0] * len(history)
    points: dict[str, int] = {}
    for index in range(1, len(history)):
        previous, current = history[index - 1], history[index]
        for task, fidelity in current.items():
            if task in points or task not in previous:
                continue
            margin = noise_margin(previous[task], counts[index - 1], fidelity, counts[index])
            if fidelity < previous[task] - tolerance - margin:
                points[task] = index
    return points


def manual_branch_points(branch_out: Mapping[str, int], tasks: Sequence[str], num_blocks: int) -> dict[str, int]:
    """Branch points given by hand; tasks not named stay on the trunk to the last block."""
    for task, block in branch_out.items():
        if not 1 <= block <= num_blocks:
            raise BadInputError(f"student.branch_out.{task}: expected a trunk block 1..{num_blocks}, got {block}")
    return {task: branch_out.get(task, num_blocks) for task in tasks}
