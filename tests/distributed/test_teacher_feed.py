"""TeacherFeed: a train worker's batches get their own teachers' outputs, in order, with several
calls in flight across each pool's actors. CheckRows: stream mode's check rows are answered by the
teachers once per job, while they fit the worker's memory cap."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import ray.data
import torch

from ray_amalgam.distributed import train_loop
from ray_amalgam.distributed.pipeline import TeacherFeed
from ray_amalgam.distributed.train_loop import CheckRows


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


def _check_dataset(rows: int) -> ray.data.Dataset:
    rng = np.random.default_rng(1)
    return ray.data.from_items([{"id": str(i), "image": rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)} for i in range(rows)])


@pytest.mark.timeout(120)
def test_check_rows_ask_the_teachers_once_and_replay_their_answers(ray_cluster):
    teacher = EchoTeacher.remote(1.0)
    check = CheckRows(_check_dataset(600), torch.device("cpu"), TeacherFeed({"A": [teacher]}, window=2))
    first = list(check)
    assert ray.get(teacher.count.remote()) == 3, "600 rows in batches of 256"
    assert not check.over_cap
    check.settle(every_worker_keeps=True)
    second = list(check)
    assert ray.get(teacher.count.remote()) == 3, "the kept answers are replayed, not asked again"
    assert sum(len(b["image"]) for b in second) == 600
    for a, b in zip(first, second, strict=True):
        assert "id" not in b
        torch.testing.assert_close(a["logits/t1/sum"], b["logits/t1/sum"])
        torch.testing.assert_close(a["logits/t1/sum"], b["image"].reshape(len(b["image"]), -1).sum(dim=1).float())


@pytest.mark.timeout(120)
def test_check_rows_are_read_again_when_any_worker_cannot_keep_its_own(ray_cluster, monkeypatch):
    """Beyond the cap a worker reads (and asks for) its rows at every check; so does a worker
    under the cap when another is over it: a split dataset's workers read it in step."""
    teacher = EchoTeacher.remote(1.0)
    fits = CheckRows(_check_dataset(600), torch.device("cpu"), TeacherFeed({"A": [teacher]}, window=2))
    list(fits)
    assert not fits.over_cap
    fits.settle(every_worker_keeps=False)
    assert sum(len(b["image"]) for b in fits) == 600
    assert ray.get(teacher.count.remote()) == 6

    monkeypatch.setattr(train_loop, "CHECK_KEEP_BYTES", 1024)
    other = EchoTeacher.remote(1.0)
    over = CheckRows(_check_dataset(600), torch.device("cpu"), TeacherFeed({"A": [other]}, window=2))
    assert sum(len(b["image"]) for b in over) == 600
    assert over.over_cap
    over.settle(every_worker_keeps=False)
    assert sum(len(b["image"]) for b in over) == 600
    assert ray.get(other.count.remote()) == 6
