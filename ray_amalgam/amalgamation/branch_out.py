"""Branch-out: where each task leaves the shared trunk, from fidelity per block stage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ray_amalgam.spec import BadInputError


def auto_branch_points(history: Sequence[Mapping[str, float]], tolerance: float) -> dict[str, int]:
    """Tasks that left the trunk, with their branch point (1-based trunk block).

    `history[i]` holds the fidelity of the tasks still on the trunk after block stage i+1.
    A task whose fidelity after stage l is more than `tolerance` below its fidelity after
    stage l-1 leaves at l-1; later entries for it are ignored.
    """
    points: dict[str, int] = {}
    for index in range(1, len(history)):
        previous, current = history[index - 1], history[index]
        for task, fidelity in current.items():
            if task not in points and task in previous and fidelity < previous[task] - tolerance:
                points[task] = index
    return points


def manual_branch_points(branch_out: Mapping[str, int], tasks: Sequence[str], num_blocks: int) -> dict[str, int]:
    """Branch points given by hand; tasks not named stay on the trunk to the last block."""
    for task, block in branch_out.items():
        if not 1 <= block <= num_blocks:
            raise BadInputError(f"student.branch_out.{task}: expected a trunk block 1..{num_blocks}, got {block}")
    return {task: branch_out.get(task, num_blocks) for task in tasks}
