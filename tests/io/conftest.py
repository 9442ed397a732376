import uuid

import pytest

from ray_amalgam.io import join, resolve


@pytest.fixture(params=["local", "memory", "s3"])
def base_url(request, tmp_path):
    """A fresh, empty directory URL on the local disk, fsspec's in-process memory filesystem, or
    the session's local S3 server."""
    if request.param == "local":
        yield str(tmp_path / "store")
        return
    if request.param == "s3":
        yield join(request.getfixturevalue("s3_server").new_bucket(), "store")
        return
    url = f"memory://io-test-{uuid.uuid4().hex}"
    yield url
    fs, path = resolve(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _listing(url: str) -> list[str]:
    fs, path = resolve(url)
    parent, name = path.rstrip("/").rsplit("/", 1)
    if not fs.exists(parent):
        return []
    return sorted(p.rsplit("/", 1)[1] for p in fs.ls(parent, detail=False) if p.rsplit("/", 1)[1].startswith(name))


@pytest.fixture
def listing():
    """Names beside `url` that start with its name: spots leftover temp files and directories."""
    return _listing
