import importlib.util

import pytest

from ray_amalgam.io import (
    absolute_url,
    atomic_write_bytes,
    atomic_write_text,
    exists,
    join,
    read_bytes,
    read_text,
    committed_directory,
    file_sizes,
    files_not_as_listed,
    manifest_json,
    read_manifest,
    renames_atomically,
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


def test_committed_directory_replaces_old_content(base_url, listing):
    target = join(base_url, "out")
    write_bytes(join(target, "old.txt"), b"old")
    with committed_directory(target, "manifest.json") as where:
        write_bytes(join(where, "nested", "new.txt"), b"new")
        write_bytes(join(where, "manifest.json"), manifest_json({"v": 2}, file_sizes(where)))
    assert read_bytes(join(target, "nested", "new.txt")) == b"new"
    assert not exists(join(target, "old.txt"))
    assert read_manifest(join(target, "manifest.json")) == {"v": 2}
    assert listing(target) == ["out"]


def test_failed_committed_directory_leaves_nothing(base_url, listing):
    target = join(base_url, "out")
    with pytest.raises(RuntimeError, match="boom"):
        with committed_directory(target, "manifest.json") as where:
            write_bytes(join(where, "partial.txt"), b"x")
            raise RuntimeError("boom")
    assert not exists(target)
    assert listing(target) == []


def test_failed_rewrite_keeps_the_old_version_or_nothing_readable(base_url, listing):
    """A local rename keeps the previous version; an object store, having no rename, has deleted
    the old manifest first, so no reader accepts what is left."""
    target = join(base_url, "out")
    with committed_directory(target, "manifest.json") as where:
        write_bytes(join(where, "keep.txt"), b"v1")
        write_bytes(join(where, "manifest.json"), manifest_json({}, file_sizes(where)))
    with pytest.raises(RuntimeError):
        with committed_directory(target, "manifest.json") as where:
            write_bytes(join(where, "keep.txt"), b"v2")
            raise RuntimeError("boom")
    fs, _ = resolve(target)
    if renames_atomically(fs):
        assert read_bytes(join(target, "keep.txt")) == b"v1"
        assert listing(target) == ["out"]
    else:
        assert not exists(join(target, "manifest.json"))


def test_killed_writer_leaves_nothing_accepted_and_the_rewrite_succeeds(base_url, listing, write_then_die):
    if base_url.startswith("memory://"):
        pytest.skip("an in-process memory filesystem is not shared with a child process")
    target = join(base_url, "out")
    with committed_directory(target, "manifest.json") as where:
        write_bytes(join(where, "weights.bin"), b"0123456789")
        write_bytes(join(where, "manifest.json"), manifest_json({"v": 1}, file_sizes(where)))
    write_then_die(target, "manifest.json", "weights.bin", b"01234")
    fs, _ = resolve(target)
    if renames_atomically(fs):  # the half-written copy is a temporary sibling; the old version stands
        assert read_manifest(join(target, "manifest.json")) == {"v": 1}
        assert read_bytes(join(target, "weights.bin")) == b"0123456789"
    else:
        with pytest.raises(BadInputError, match="manifest.json: file not found"):
            read_manifest(join(target, "manifest.json"))
    with committed_directory(target, "manifest.json") as where:
        write_bytes(join(where, "weights.bin"), b"abcdefghij")
        write_bytes(join(where, "manifest.json"), manifest_json({"v": 3}, file_sizes(where)))
    assert read_manifest(join(target, "manifest.json")) == {"v": 3}
    assert read_bytes(join(target, "weights.bin")) == b"abcdefghij"
    assert listing(target) == ["out"], "the killed write's temporary sibling is removed"


def test_manifest_refuses_a_directory_whose_files_differ_from_its_list(base_url):
    target = join(base_url, "out")
    with committed_directory(target, "manifest.json") as where:
        write_bytes(join(where, "a.bin"), b"abc")
        write_bytes(join(where, "manifest.json"), manifest_json({}, file_sizes(where)))
    assert file_sizes(target)["a.bin"] == 3
    assert files_not_as_listed(target, {"a.bin": 3}) == []
    write_bytes(join(target, "a.bin"), b"ab")  # a truncated copy
    assert files_not_as_listed(target, {"a.bin": 3, "b.bin": 1}) == ["a.bin", "b.bin"]
    with pytest.raises(BadInputError, match=r"out: a.bin is missing or not the 3 bytes manifest.json lists"):
        read_manifest(join(target, "manifest.json"))


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
