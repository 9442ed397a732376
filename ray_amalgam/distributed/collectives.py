"""Sums across train workers on the device the process group can reduce.

Ray Train sets up NCCL for GPU workers, and NCCL reduces only CUDA tensors: a CPU tensor fails
with "No backend type associated with device type cpu". Gloo (CPU workers) takes CPU tensors.
So every collective here builds its tensor on `collective_device()`, read from the process
group's own device -> backend map, never assumed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def collective_device() -> torch.device:
    """CPU where the default process group has a CPU backend (gloo), else its accelerator."""
    if not _distributed():
        return torch.device("cpu")
    # get_backend_config(): "cpu:gloo,cuda:gloo" for gloo, "cuda:nccl" for nccl.
    device_types = [pair.split(":")[0] for pair in dist.get_backend_config().split(",")]
    if "cpu" in device_types:
        return torch.device("cpu")
    return torch.device(device_types[0])  # the current device of that type, which Ray Train sets per worker


def sum_across_workers(values: list[float], device: torch.device | None = None) -> list[float]:
    """Element-wise sum over all workers (identity with no process group)."""
    if not _distributed():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device or collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def sum_digests_across_workers(count: int, total: int, device: torch.device | None = None) -> tuple[int, int]:
    """Sum (row count, id-hash sum mod 2**64) over workers exactly: hashes travel as two 32-bit halves."""
    if not _distributed():
        return count, total
    tensor = torch.tensor([count, total >> 32, total & 0xFFFFFFFF], dtype=torch.int64, device=device or collective_device())
    dist.all_reduce(tensor)
    count, high, low = (int(v) for v in tensor.tolist())
    return count, ((high << 32) + low) % (1 << 64)
