"""Plain end-to-end multi-teacher KD: the comparison point for block-wise amalgamation."""

from __future__ import annotations

from typing import Any

from rich.progress import Progress

from ray_amalgam.amalgamation.runner import train_in_process
from ray_amalgam.spec import JobSpec


def kd_baseline(job: JobSpec, progress: Progress | None = None, source: str = "job") -> dict[str, Any]:
    """Same trunk and branches with every branch point at the last trunk block, no block stages,
    and end-to-end KD for as many epochs as the job's block stages and finetune together.
    Writes and returns the same report as `amalgamate_local` (method `kd`)."""
    return train_in_process(job, progress, source, block_stages=False)
