import importlib.util

import pytest

from ray_amalgam.io import (
    absolute_url,
    atomic_directory,
    atomic_write_bytes,
    atomic_write_text,
    exists,
    join,
    read_bytes,
    read_text,
    resolve,
    write_bytes,
)
from ray_amalgam.spec import BadInputError


def test_join_keeps_protocol_and_single_slashes():
    assert join("s3://bucket/data/", "/part-0.parquet") == "s3://bucket/data/part-0.parquet"
    assert join("/abs/dir", "a", "b.json") == "/abs/dir/a/b.json"
    assert join("memory://x", "") == "memory://x"


def test_relative_path_resolves_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    atomic_write_text("sub/file.txt", "hello")
    fs, path = resolve("sub/file.txt")
    assert path == str(tmp_path / "sub" / "file.txt")
    assert (tmp_path / "sub" / "file.txt").read_text() == "hello"


def test_atomic_write_replaces_and_leaves_no_temp(base_url, listing):
    target = join(base_url, "dir", "value.txt")
    atomic_write_text(target, "one")
    atomic_write_bytes(target, b"two")
    assert read_text(target) == "two"
    assert listing(target) == ["value.txt"]


def test_read_missing_file_names_url(base_url):
    missing = join(base_url, "nope.bin")
    with pytest.raises(BadInputError, match="nope.bin: file not found"):
        read_bytes(missing)


def test_atomic_directory_replaces_old_content(base_url, listing):
    target = join(base_url, "out")
    write_bytes(join(target, "old.txt"), b"old")
    with atomic_directory(target) as tmp:
        assert tmp != target and not exists(join(target, "new.txt"))
        write_bytes(join(tmp, "nested", "new.txt"), b"new")
    assert read_bytes(join(target, "nested", "new.txt")) == b"new"
    assert not exists(join(target, "old.txt"))
    assert listing(target) == ["out"]


def test_failed_atomic_directory_leaves_nothing(base_url, listing):
    target = join(base_url, "out")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(target) as tmp:
            write_bytes(join(tmp, "partial.txt"), b"x")
            raise RuntimeError("boom")
    assert not exists(target)
    assert listing(target) == []


def test_failed_atomic_directory_keeps_previous_version(base_url, listing):
    target = join(base_url, "out")
    write_bytes(join(target, "keep.txt"), b"v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            write_bytes(join(tmp, "keep.txt"), b"v2")
            raise RuntimeError("boom")
    assert read_bytes(join(target, "keep.txt")) == b"v1"
    assert listing(target) == ["out"]


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_missing_cloud_backend_says_what_to_install():
    with pytest.raises(BadInputError, match=r"s3://bucket/x: .*ray_amalgam\[cloud\]"):
        resolve("s3://bucket/x")


def test_unknown_protocol_is_bad_input():
    with pytest.raises(BadInputError, match="nosuch://x"):
        resolve("nosuch://x")


def test_absolute_url_resolves_local_paths_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_url("runs/a") == str(tmp_path / "runs" / "a")
    assert absolute_url("s3://bucket/runs/a") == "s3://bucket/runs/a"
    assert absolute_url("memory://x") == "memory://x"
