"""The one Ray instance of a test session (never two clusters at once), and the local S3 server
that every s3:// test talks to."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ray_amalgam.distributed.resources import plan_resources, start_local_ray
from ray_amalgam.spec import JobSpec

# The largest job the tests run: two teachers with up to one actor each, two train workers.
_REFERENCE_JOB = JobSpec.model_validate({
    "teachers": [{"name": "A", "checkpoint": "-"}, {"name": "B", "checkpoint": "-"}],
    "tasks": ["t"],
    "data": {"train": "-", "eval": "-"},
    "output": "-",
    "resources": {"num_workers": 2},
})


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    secret: str
    """The secret access key: no file the tests make may contain it."""

    def new_bucket(self) -> str:
        """A fresh, empty bucket; its `s3://` URL."""
        import fsspec

        name = f"ra-{uuid.uuid4().hex[:12]}"
        fsspec.filesystem("s3").mkdir(name)
        return f"s3://{name}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-compatible server (moto's server mode) on 127.0.0.1, configured the way users
    configure S3: the standard AWS environment variables, which the session's Ray inherits."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"the local S3 server did not start on port {port}")
            time.sleep(0.2)
    secret = f"ra-secret-{uuid.uuid4().hex}"
    environment = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "ra-test-key-id",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        yield S3Server(environment["AWS_ENDPOINT_URL"], secret)
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_cluster(s3_server: S3Server):
    """A local Ray sized by the same rule `run_job` uses; every Ray test shares it. Started after
    the S3 server so that its workers see the same AWS environment as the tests."""
    import ray

    cpus = int(plan_resources(_REFERENCE_JOB, num_teachers=2, local=True).cluster_cpus)
    start_local_ray(cpus)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _write_then_die(url: str, manifest: str, name: str, data: bytes) -> None:
    """In a child process: open `committed_directory(url, manifest)`, write `name`, and die
    there without any cleanup, as a killed writer does."""
    script = (
        "import os, sys; from ray_amalgam.io import committed_directory, join, write_bytes;"
        "target = committed_directory(sys.argv[1], sys.argv[2]).__enter__();"
        "write_bytes(join(target, sys.argv[3]), sys.argv[4].encode()); os._exit(9)"
    )
    assert subprocess.run([sys.executable, "-c", script, url, manifest, name, data.decode()], timeout=60).returncode == 9


@pytest.fixture
def write_then_die():
    """`write_then_die(url, manifest, name, data)`: what a writer killed mid-directory leaves."""
    return _write_then_die
