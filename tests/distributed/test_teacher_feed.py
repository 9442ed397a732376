"""TeacherFeed: a train worker's batches get their own teachers' outputs, in order, with several
calls in flight across each pool's actors."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from ray_amalgam.distributed.pipeline import TeacherFeed


@ray.remote(num_cpus=0)
class EchoTeacher:
    """Outputs derived from the pixels themselves, so a batch paired with another's outputs shows."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.calls = 0

    def outputs(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        return {f"logits/t{self.scale:g}/sum": pixels.reshape(len(pixels), -1).sum(axis=1).astype(np.float32) * self.scale}

    def count(self) -> int:
        return self.calls


@pytest.mark.timeout(120)
def test_every_batch_gets_its_own_outputs_in_order(ray_cluster):
    pools = {"A": [EchoTeacher.remote(1.0), EchoTeacher.remote(1.0)], "B": [EchoTeacher.remote(2.0)]}
    rng = np.random.default_rng(0)
    batches = [{"id": np.arange(i * 4, i * 4 + 4).astype(str), "image": rng.integers(0, 256, (4, 3, 3, 3), dtype=np.uint8)} for i in range(10)]
    fed = list(TeacherFeed(pools, window=3)(iter(batches)))
    assert [list(b["id"]) for b in fed] == [list(b["id"]) for b in batches]
    for batch in fed:
        sums = batch["image"].reshape(4, -1).sum(axis=1).astype(np.float32)
        np.testing.assert_array_equal(batch["logits/t1/sum"], sums)
        np.testing.assert_array_equal(batch["logits/t2/sum"], 2 * sums)
    assert ray.get([actor.count.remote() for actor in pools["A"]]) == [5, 5], "a pool's actors take turns"
    assert ray.get(pools["B"][0].count.remote()) == 10
