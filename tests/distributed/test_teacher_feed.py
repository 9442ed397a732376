"""TeacherFeed: a train worker's batches get their own teachers' outputs, in order, with several
calls in flight across each pool's actors. KeptShard: a worker's rows (stream mode: with the
teachers' answers) are read once per job and replayed, while they fit the worker's memory cap."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import ray.data
import torch

from ray_amalgam.distributed.pipeline import TeacherFeed
from ray_amalgam.distributed.train_loop import CHECK_KEEP_BYTES, FIDELITY_BATCH, KeptShard


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


def _check_rows(dataset: ray.data.Dataset, feed: TeacherFeed, cap_bytes: int = CHECK_KEEP_BYTES) -> KeptShard:
    return KeptShard(dataset, FIDELITY_BATCH, torch.device("cpu"), feed, cap_bytes, keep_ids=False)


@pytest.mark.timeout(120)
def test_check_rows_ask_the_teachers_once_and_replay_their_answers(ray_cluster):
    teacher = EchoTeacher.remote(1.0)
    check = _check_rows(_check_dataset(600), TeacherFeed({"A": [teacher]}, window=2))
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
def test_check_rows_are_read_again_when_any_worker_cannot_keep_its_own(ray_cluster):
    """Beyond the cap a worker reads (and asks for) its rows at every check; so does a worker
    under the cap when another is over it: a split dataset's workers read it in step."""
    teacher = EchoTeacher.remote(1.0)
    fits = _check_rows(_check_dataset(600), TeacherFeed({"A": [teacher]}, window=2))
    list(fits)
    assert not fits.over_cap
    fits.settle(every_worker_keeps=False)
    assert sum(len(b["image"]) for b in fits) == 600
    assert ray.get(teacher.count.remote()) == 6

    other = EchoTeacher.remote(1.0)
    over = _check_rows(_check_dataset(600), TeacherFeed({"A": [other]}, window=2), cap_bytes=1024)
    assert sum(len(b["image"]) for b in over) == 600
    assert over.over_cap
    over.settle(every_worker_keeps=False)
    assert sum(len(b["image"]) for b in over) == 600
    assert ray.get(other.count.remote()) == 6


@pytest.mark.timeout(120)
def test_training_rows_are_replayed_with_their_ids_in_the_same_order(ray_cluster):
    teacher = EchoTeacher.remote(1.0)
    rows = KeptShard(_check_dataset(100), 16, torch.device("cpu"), TeacherFeed({"A": [teacher]}, window=2), 2**20, keep_ids=True)
    first = [(list(b["id"]), b["logits/t1/sum"].clone()) for b in rows]
    rows.settle(every_worker_keeps=True)
    assert rows.replaying
    for _ in range(2):
        again = [(list(b["id"]), b["logits/t1/sum"]) for b in rows]
        assert [ids for ids, _ in again] == [ids for ids, _ in first]
        for (_, a), (_, b) in zip(first, again, strict=True):
            torch.testing.assert_close(a, b)
    assert ray.get(teacher.count.remote()) == 7, "100 rows in batches of 16, asked for once"


@pytest.mark.timeout(120)
def test_rows_with_no_room_to_keep_are_read_and_asked_for_every_pass(ray_cluster):
    """`cap_bytes` 0 is how augmented views (new at every pass) are never replayed."""
    teacher = EchoTeacher.remote(1.0)
    rows = KeptShard(_check_dataset(100), 16, torch.device("cpu"), TeacherFeed({"A": [teacher]}, window=2), 0, keep_ids=True)
    for _ in range(2):
        assert sum(len(b["id"]) for b in rows) == 100
        assert rows.over_cap
        rows.settle(every_worker_keeps=False)
        assert not rows.replaying
    assert ray.get(teacher.count.remote()) == 14
