"""The one Ray instance of a test session (never two clusters at once)."""

from __future__ import annotations

import pytest

from ray_amalgam.distributed.resources import plan_resources
from ray_amalgam.spec import JobSpec

# The largest job the tests run: two teachers with up to one actor each, two train workers.
_REFERENCE_JOB = JobSpec.model_validate({
    "teachers": [{"name": "A", "checkpoint": "-"}, {"name": "B", "checkpoint": "-"}],
    "tasks": ["t"],
    "data": {"train": "-", "eval": "-"},
    "output": "-",
    "resources": {"num_workers": 2},
})


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray sized by the same rule `run_job` uses; every Ray test shares it."""
    import ray

    cpus = int(plan_resources(_REFERENCE_JOB, num_teachers=2, local=True).cluster_cpus)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
