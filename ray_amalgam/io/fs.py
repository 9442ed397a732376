"""fsspec helpers: one URL form (local path, file://, s3://, gs://, memory://) for every file we touch."""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterator

import fsspec
from fsspec.core import url_to_fs

from ray_amalgam.spec import BadInputError


def resolve(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem that serves `url` and the path inside it."""
    try:
        return url_to_fs(url)
    except ImportError as error:
        raise BadInputError(f"{url}: {error}; install ray_amalgam[cloud] for s3:// and gs:// URLs") from None
    except ValueError as error:
        raise BadInputError(f"{url}: not a usable URL ({error}); expected a path or file://, s3://, gs://, memory:// URL") from None


def absolute_url(url: str) -> str:
    """A local path made absolute (Ray Train and pyarrow refuse relative ones); URLs unchanged."""
    return url if "://" in url else os.path.abspath(url)


def join(url: str, *parts: str) -> str:
    """`url` with path parts appended by `/`, keeping its protocol."""
    tail = "/".join(p.strip("/") for p in parts if p.strip("/"))
    if not tail:
        return url
    return f"{url.rstrip('/')}/{tail}" if url else tail


def _temp_sibling(url: str) -> str:
    return f"{url.rstrip('/')}.tmp-{uuid.uuid4().hex}"


def exists(url: str) -> bool:
    fs, path = resolve(url)
    return fs.exists(path)


def read_bytes(url: str) -> bytes:
    """The whole content of a file; BadInputError if it does not exist."""
    fs, path = resolve(url)
    try:
        return fs.cat_file(path)
    except (FileNotFoundError, IsADirectoryError):
        raise BadInputError(f"{url}: file not found") from None


def read_text(url: str) -> str:
    data = read_bytes(url)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadInputError(f"{url}: expected UTF-8 text ({error.reason} at byte {error.start})") from None


def write_bytes(url: str, data: bytes) -> None:
    """Plain (non-atomic) write, creating parent directories; for files inside an `atomic_directory`."""
    fs, path = resolve(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)


def atomic_write_bytes(url: str, data: bytes) -> None:
    """Write beside the target under a temporary name, then move it into place."""
    fs, path = resolve(url)
    tmp_url = _temp_sibling(url)
    write_bytes(tmp_url, data)
    _, tmp = resolve(tmp_url)
    try:
        fs.mv(tmp, path)
    except BaseException:
        fs.rm(tmp)
        raise


def atomic_write_text(url: str, text: str) -> None:
    atomic_write_bytes(url, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(url: str) -> Iterator[str]:
    """Yield a temporary sibling directory URL; on clean exit it replaces `url`, on error it is removed.

    Callers should write their marker/metadata file last: on object stores the final move is a copy.
    """
    fs, path = resolve(url)
    tmp_url = _temp_sibling(url)
    _, tmp = resolve(tmp_url)
    fs.makedirs(tmp, exist_ok=True)
    try:
        yield tmp_url
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)
        raise
    if fs.exists(path):
        fs.rm(path, recursive=True)
    fs.mv(tmp, path, recursive=True)
