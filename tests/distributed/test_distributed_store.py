"""Teacher-output stores, one per teacher: reused when current, rebuilt when stale or half-written,
and a teacher added to a job computes only its own outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from ray_amalgam.amalgamation import make_plan
from ray_amalgam.distributed.pipeline import DriverRows, decoded_in_driver, split_in_driver
from ray_amalgam.distributed.resources import plan_resources
from ray_amalgam.distributed.runner import split_and_decode
from ray_amalgam.distributed.store import (
    DRIVER_PASS_PIXEL_BYTES,
    MANIFEST,
    ensure_store,
    load_store_targets,
    pass_device,
    read_store,
    store_tables,
    target_columns,
)
from ray_amalgam.io.checkpoints import read_teacher_meta
from ray_amalgam.io.shards import ID, IMAGE, list_shards
from ray_amalgam.spec import BadInputError

from .conftest import TEACHER_TASKS, make_teacher, train_with_a_late_bad_image


def _plan(job):
    return make_plan(job, {t.name: read_teacher_meta(t.checkpoint) for t in job.teachers})


@pytest.mark.timeout(300)
def test_store_per_teacher_added_teacher_changed_teacher_half_written(ray_cluster, new_job, pool, tmp_path):
    teacher_b = tmp_path / "teacher_B"
    make_teacher(str(teacher_b), TEACHER_TASKS["B"], seed=1)
    job = new_job(teachers=[{"name": "A", "checkpoint": str(pool / "teacher_A")}, {"name": "B", "checkpoint": str(teacher_b)}])
    plan = _plan(job)
    resources = plan_resources(job, 2, local=True)
    root = str(tmp_path / "store")

    def build(job=job, plan=plan):
        return ensure_store(job, plan, "train", job.data.train, root, resources, [], None)

    # A finished job with teacher A; then B is added to it: only B runs.
    only_a = new_job(teachers=[{"name": "A", "checkpoint": str(pool / "teacher_A")}], tasks=["shape"])
    assert build(only_a, _plan(only_a)).computed == ("A",)
    first = build()
    assert first.rebuilt and first.computed == ("B",) and first.num_rows == 160
    again = build()
    assert not again.rebuilt and again.computed == () and again.teachers == first.teachers

    # Only the needed columns are read back, joined by id, with one logits column per chosen head.
    rows = read_store(first, ["id", *target_columns(plan)], resources, 16).take_all()
    assert len(rows) == 160 and len({r["id"] for r in rows}) == 160
    assert sorted(rows[0]) == ["id", "logits/A/shape", "logits/B/position"]
    assert rows[0]["logits/A/shape"].shape == (4,)

    make_teacher(str(teacher_b), TEACHER_TASKS["B"], seed=7)  # new weights, same path
    second = build()
    assert second.computed == ("B",), "A's store is reused; only B runs again"
    assert second.teachers["A"] == first.teachers["A"] and second.teachers["B"] != first.teachers["B"]
    assert not os.path.exists(first.teachers["B"]), "the stale store of B is removed, never used again"

    os.remove(os.path.join(second.teachers["B"], MANIFEST))  # as if the writer died before the manifest
    third = build()
    assert third.computed == ("B",) and third.teachers["B"] == second.teachers["B"]

    # A store holds every head of its teacher: a job on other tasks of the same teachers runs none.
    other = new_job(teachers=job.model_dump()["teachers"], tasks=["color", "background"])
    assert build(other, _plan(other)).computed == ()


@pytest.mark.timeout(240)
def test_old_whole_set_store_is_replaced_with_a_message(ray_cluster, new_job, tmp_path, caplog):
    job = new_job()
    root = tmp_path / "store"
    old = root / "train-0123456789abcdef"
    old.mkdir(parents=True)
    (old / MANIFEST).write_text(json.dumps({"format_version": 1, "key": "0123456789abcdef"}))
    store = ensure_store(job, _plan(job), "train", job.data.train, str(root), plan_resources(job, 2, local=True), [], None)
    assert store.computed == ("A", "B") and not old.exists()
    assert "whole-set teacher store of an earlier version" in caplog.text


@pytest.mark.timeout(300)
def test_driver_and_actor_passes_write_the_same_store(ray_cluster, new_job, tmp_path):
    """`store_pass: auto` runs a small local pass in the driver; on a joined cluster, on actor
    pools. Both write the same outputs, so either store serves every later job."""
    job = new_job()
    shards = list_shards(job.data.train)
    assert pass_device(job, plan_resources(job, 2, local=True), shards, 32) == torch.device("cpu")
    assert pass_device(job, plan_resources(job, 2, local=False), shards, 32) is None
    large = shards * (DRIVER_PASS_PIXEL_BYTES // (160 * 32 * 32 * 3) + 1)  # the same shards, counted until over the limit
    assert pass_device(job, plan_resources(job, 2, local=True), large, 32) is None

    stores = {}
    for where in ("actors", "driver"):
        placed = new_job(resources={"store_pass": where})
        store = ensure_store(placed, _plan(placed), "train", placed.data.train, str(tmp_path / where), plan_resources(placed, 2, local=True), [], None)
        manifests = [json.loads(Path(url, MANIFEST).read_text()) for url in store.teachers.values()]
        assert [m["pass"] for m in manifests] == [where, where]
        stores[where] = load_store_targets(store, target_columns(_plan(placed)))
    (actor_ids, actor_columns), (driver_ids, driver_columns) = stores["actors"], stores["driver"]
    assert list(actor_ids) == list(driver_ids) and len(actor_ids) == 160
    assert sorted(actor_columns) == sorted(driver_columns) == ["logits/A/shape", "logits/B/position"]
    for column, values in actor_columns.items():
        np.testing.assert_allclose(driver_columns[column], values, rtol=1e-4, atol=1e-5, err_msg=column)


@pytest.mark.timeout(300)
def test_a_bad_image_in_the_actor_pass_ends_it_with_its_own_one_line_error(ray_cluster, new_job, pool, tmp_path):
    """The pass on actor pools (a sweep's store on a cluster, or `store_pass: actors`) meets a bad
    row in a Ray task: the caller gets the row's BadInputError, not the task's traceback, and no
    store is committed."""
    train = train_with_a_late_bad_image(pool, tmp_path)
    job = new_job(data={"train": str(train)}, resources={"store_pass": "actors"})
    root = tmp_path / "store"
    with pytest.raises(BadInputError, match=r"train/part-00001.parquet row 79: not a decodable image") as error:
        ensure_store(job, _plan(job), "train", job.data.train, str(root), plan_resources(job, 2, local=True), [], None)
    assert "\n" not in str(error.value)
    assert not list(root.glob(f"*/{MANIFEST}"))


def _rows(dataset) -> dict[str, np.ndarray]:
    if isinstance(dataset, DriverRows):
        batch = next(dataset.share(0, 1).iter_batches(dataset.count()))
    else:
        batch = next(iter(dataset.iter_batches(batch_size=dataset.count(), batch_format="numpy")))
    order = np.argsort(batch[ID])
    return {column: values[order] for column, values in batch.items()}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("held", [True, False])
def test_rows_decoded_in_the_driver_equal_ray_datas(ray_cluster, new_job, tmp_path, held):
    """A one-node job's in-memory rows are split and decoded in the driver; a joined cluster's by
    Ray Data tasks. Both give the same training and check rows: ids, pixels and targets."""
    job = new_job()
    plan = _plan(job)
    resources = plan_resources(job, 2, local=True)
    store = ensure_store(job, plan, "train", job.data.train, str(tmp_path / "store"), resources, [], None)
    columns = [ID, IMAGE, *target_columns(plan)]
    driver = dict(zip(("train", "check"), decoded_in_driver(store_tables(store, columns, 16), held, workers=2)))
    rows = read_store(store, columns, resources, 16)
    ray_data = {"train": split_and_decode(rows, store.url, False, resources, 16), "check": split_and_decode(rows, store.url, held, resources, 16)}
    assert len(driver["train"].blocks) >= 2  # each of the two workers gets a block of its own
    for name in ("train", "check"):
        ours, theirs = _rows(driver[name]), _rows(ray_data[name])
        assert sorted(ours) == sorted(theirs) == sorted(columns)
        assert 0 < len(ours[ID]) < 160, name  # training rows leave the held-out ones out
        assert ours[IMAGE].shape[1:] == (16, 16, 3) and ours[IMAGE].dtype == np.uint8
        for column in columns:
            np.testing.assert_array_equal(ours[column], theirs[column], err_msg=f"{name} {column}")
    train_ids, check_ids = set(_rows(driver["train"])[ID]), set(_rows(driver["check"])[ID])
    assert (train_ids.isdisjoint(check_ids) and len(train_ids | check_ids) == 160) if held else train_ids == check_ids


@pytest.mark.timeout(300)
def test_a_driver_pass_hands_on_the_rows_the_store_would_give(ray_cluster, new_job, tmp_path):
    """The teacher pass in the driver keeps its decoded rows and outputs; split, they equal the
    rows read back from the store it wrote (ids, pixels, targets), so the job need not read it."""
    job = new_job(resources={"store_pass": "driver"})
    plan = _plan(job)
    resources = plan_resources(job, 2, local=True)
    passed: list = []
    store = ensure_store(job, plan, "train", job.data.train, str(tmp_path / "store"), resources, [], None, passed.append)
    assert sorted(store.computed) == sorted(plan.checkpoints) and passed
    columns = [ID, IMAGE, *target_columns(plan)]
    kept = dict(zip(("train", "check"), split_in_driver((t.select(columns) for t in passed), True, workers=2)))
    read = dict(zip(("train", "check"), decoded_in_driver(store_tables(store, columns, 16), True, workers=2)))
    for name in ("train", "check"):
        ours, theirs = _rows(kept[name]), _rows(read[name])
        assert sorted(ours) == sorted(columns) and len(ours[ID]) > 0
        for column in columns:
            np.testing.assert_array_equal(ours[column], theirs[column], err_msg=f"{name} {column}")
    again: list = []  # a reused store runs no pass: nothing is handed on
    ensure_store(job, plan, "train", job.data.train, str(tmp_path / "store"), resources, [], None, again.append)
    assert again == []

@pytest.mark.timeout(120)
@pytest.mark.parametrize("world", [1, 2, 3])
def test_driver_rows_give_each_worker_an_equal_share_in_order(ray_cluster, world):
    """Blocks of 5, 7 and 4 rows read in batches of 3 that cross block ends: each worker gets the
    same number of rows, every row at most once and in order, and only a remainder smaller than
    the worker count is left out."""
    import pyarrow as pa

    sizes, start = (5, 7, 4), 0
    blocks = []
    for size in sizes:
        ids = [f"r{i:02d}" for i in range(start, start + size)]
        blocks.append(ray.put(pa.table({ID: ids, "value": np.arange(start, start + size) * 10})))
        start += size
    rows = DriverRows(tuple(blocks), sizes)
    shares = []
    for rank in range(world):
        batches = list(rows.share(rank, world).iter_batches(3))
        assert all(len(b[ID]) == 3 for b in batches[:-1]) and 0 < len(batches[-1][ID]) <= 3
        shares.append(np.concatenate([b["value"] for b in batches]))
    assert {len(share) for share in shares} == {16 // world}
    seen = np.concatenate(shares)
    np.testing.assert_array_equal(seen, np.arange(len(seen)) * 10)  # in order, none twice
    assert 16 - len(seen) < world
