"""`index_pool`: find the checkpoints under a prefix and describe the new or changed ones, as Ray
tasks for large pools, into the pool's Parquet catalogue."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray

from ray_amalgam.amalgamation.pool import carry_quality, describe_checkpoint, index_plan
from ray_amalgam.distributed.resources import check_reachable, physical_cpus, start_local_ray
from ray_amalgam.io.catalogue import Candidate, find_checkpoints, read_catalogue, write_catalogue
from ray_amalgam.io.fs import absolute_url, exists, join
from ray_amalgam.spec import Catalogue, CatalogueEntry

CATALOGUE_NAME = "_catalogue.parquet"
"""The catalogue's default place: inside the pool's prefix (no checkpoint is named like it)."""

RAY_MIN_CHECKPOINTS = 8
"""Fewer checkpoints to read than this are read in this process: starting Ray and a worker per
CPU (each importing torch) costs more than reading them one by one."""

INDEX_TASK_CPUS = 0.5
"""Per describe task: mostly reading bytes and one tiny forward pass for the FLOP count."""


@ray.remote
def _describe_chunk(candidates: list[Candidate]) -> list[CatalogueEntry]:
    return [describe_checkpoint(c) for c in candidates]


def _connect(address: str | None) -> None:
    if ray.is_initialized():
        return
    if address is not None:
        check_reachable(address)
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        start_local_ray(physical_cpus())


def describe_all(
    to_read: Sequence[Candidate], use_ray: bool, address: str | None, on_done: Callable[[int], None],
) -> list[CatalogueEntry]:
    """Describe every candidate; with `use_ray`, in about two chunks per CPU of the cluster."""
    if not use_ray:
        described = []
        for candidate in to_read:
            described.append(describe_checkpoint(candidate))
            on_done(1)
        return described
    _connect(address)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    size = max(1, math.ceil(len(to_read) / (2 * cpus)))
    chunks = [list(to_read[i : i + size]) for i in range(0, len(to_read), size)]
    pending = {_describe_chunk.options(num_cpus=INDEX_TASK_CPUS).remote(chunk): len(chunk) for chunk in chunks}
    described = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        described += ray.get(done[0])
        on_done(pending.pop(done[0]))
    return described


def index_pool(
    prefix: str, out: str | None = None, address: str | None = None, use_ray: bool | None = None,
    on_start: Callable[[int, int], None] | None = None, on_done: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Index the checkpoints under `prefix` into the catalogue `out` (default
    `<prefix>/_catalogue.parquet`); returns a summary. Checkpoints whose file listing is
    unchanged since the last index are not read; corrupt or pickled ones are listed as refused.

    `use_ray`: None decides by the number of checkpoints to read (RAY_MIN_CHECKPOINTS).
    `on_start(to_read, total)` and `on_done(n)` report progress.
    """
    started = time.perf_counter()
    prefix = absolute_url(prefix)
    out = absolute_url(out) if out else join(prefix, CATALOGUE_NAME)
    candidates = find_checkpoints(prefix)
    old = read_catalogue(out) if exists(out) else None
    kept, to_read = index_plan(candidates, old)
    if on_start is not None:
        on_start(len(to_read), len(candidates))
    parallel = len(to_read) >= RAY_MIN_CHECKPOINTS if use_ray is None else use_ray
    described = describe_all(to_read, parallel and bool(to_read), address, on_done or (lambda n: None))
    entries = sorted([*kept, *(carry_quality(e, old) for e in described)], key=lambda e: e.name)
    write_catalogue(out, Catalogue(prefix=prefix, entries=tuple(entries)))
    refused = [e for e in entries if not e.ok]
    return {
        "prefix": prefix,
        "catalogue": out,
        "checkpoints": len(entries),
        "accepted": len(entries) - len(refused),
        "refused": [{"name": e.name, "reason": e.reason} for e in refused],
        "read": sorted(c.name for c in to_read),
        "unchanged": len(kept),
        "dropped": sorted({e.name for e in old.entries} - {e.name for e in entries}) if old else [],
        "ray": parallel and bool(to_read),
        "seconds": round(time.perf_counter() - started, 2),
    }

