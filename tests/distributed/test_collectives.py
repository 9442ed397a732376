"""Collectives run on the device the process group reduces, as Ray Train sets it up per worker:
gloo for CPU workers (CPU tensors), NCCL for GPU workers (CUDA tensors only).

Without a GPU, a "cuda:gloo" group stands in for NCCL: like NCCL it has no CPU backend, so a
CPU tensor fails there exactly as it did on the GPU machine. With a GPU the real NCCL runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist

from ray_amalgam.distributed.collectives import collective_device, sum_across_workers, sum_digests_across_workers


@pytest.fixture
def process_group(request: pytest.FixtureRequest) -> Iterator[None]:
    """A one-process group with the backend named by the test's parameter."""
    dist.init_process_group(request.param, store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_without_a_process_group_sums_are_local():
    assert collective_device() == torch.device("cpu")
    assert sum_across_workers([1.5, 2.0]) == [1.5, 2.0]
    assert sum_digests_across_workers(3, 2**63 + 5) == (3, 2**63 + 5)


@pytest.mark.parametrize("process_group", ["gloo"], indirect=True)
def test_gloo_group_reduces_cpu_tensors(process_group):
    """Ray Train's backend for CPU workers."""
    assert collective_device() == torch.device("cpu")
    assert sum_across_workers([1.5, 2.0]) == [1.5, 2.0]
    # 64-bit digests survive the int64 all-reduce exactly, top bit included.
    assert sum_digests_across_workers(3, 2**64 - 7) == (3, 2**64 - 7)


@pytest.mark.parametrize("process_group", ["cuda:gloo"], indirect=True)
def test_a_group_without_cpu_backend_gets_accelerator_tensors(process_group):
    """What NCCL looks like to the helpers: they pick CUDA, and a CPU tensor would fail."""
    assert collective_device() == torch.device("cuda")
    with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
        sum_across_workers([1.0], device=torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_nccl_available(), reason="needs a CUDA GPU and NCCL")
@pytest.mark.parametrize("process_group", ["nccl"], indirect=True)
def test_nccl_group_reduces_on_the_gpu(process_group):
    """Ray Train's backend for GPU workers (the crash this module fixes)."""
    torch.cuda.set_device(0)
    assert collective_device().type == "cuda"
    assert sum_across_workers([1.5, 2.0]) == [1.5, 2.0]
    assert sum_digests_across_workers(3, 2**64 - 7) == (3, 2**64 - 7)
