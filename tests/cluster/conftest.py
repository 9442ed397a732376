"""A real two-node Ray cluster for the submission tests: a head (dashboard on, for the Jobs API)
whose node declares `teacher_node` and a worker node that declares `train_node`, on loopback,
non-default ports, token authentication on. One cluster per test module, always torn down."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import ray_amalgam
from distributed.conftest import job_dict, pool  # noqa: F401 - the tiny data and teachers, shared

from .multinode import MultiNodeCluster, start_cluster

TEACHER_NODE, TRAIN_NODE = "teacher_node", "train_node"
"""Custom node resources: the names clusters/ declares for its teacher and train node groups."""


@pytest.fixture(scope="module")
def multinode() -> Iterator[MultiNodeCluster]:
    # The nodes import ray_amalgam from this checkout, as an image with the package installed would.
    checkout = os.path.dirname(os.path.dirname(ray_amalgam.__file__))
    python_path = os.pathsep.join(p for p in (checkout, os.environ.get("PYTHONPATH", "")) if p)
    cluster = start_cluster(
        head_cpus=2, head_resources={TEACHER_NODE: 1}, worker_cpus=2, worker_resources={TRAIN_NODE: 1},
        extra_env={"PYTHONPATH": python_path},
    )
    try:
        yield cluster
    finally:
        cluster.stop()
