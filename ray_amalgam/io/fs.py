"""fsspec helpers: one URL form (local path, file://, s3://, gs://, memory://) for every file we touch."""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import uuid
from collections.abc import Iterator

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from ray_amalgam.spec import BadInputError

OBJECT_STORES = ("s3", "s3a", "gs", "gcs")
"""Protocols whose first path part is a bucket, checked once per process before first use."""

_answering_buckets: set[tuple[str, str]] = set()


def resolve(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem that serves `url` and the path inside it; for object stores, only once the
    bucket has answered (BadInputError naming the URL for a missing bucket, denied access or an
    unreachable endpoint, instead of a failure deep inside a job)."""
    protocol = url.split("://", 1)[0] if "://" in url else ""
    # Other processes (Ray workers, other jobs) write the same prefixes: a cached listing would
    # hide their files, so object-store listings are always fresh.
    options = {"use_listings_cache": False} if protocol in OBJECT_STORES else {}
    try:
        fs, path = url_to_fs(url, **options)
    except ImportError as error:
        raise BadInputError(f"{url}: {error}; install ray_amalgam[cloud] for s3:// and gs:// URLs") from None
    except ValueError as error:
        raise BadInputError(f"{url}: not a usable URL ({error}); expected a path or file://, s3://, gs://, memory:// URL") from None
    if protocol in OBJECT_STORES:
        _check_bucket(fs, url, protocol, path.split("/", 1)[0])
    return fs, path


def _check_bucket(fs: fsspec.AbstractFileSystem, url: str, protocol: str, bucket: str) -> None:
    if (protocol, bucket) in _answering_buckets:
        return
    # info, not exists: exists answers False for an endpoint that never answered.
    try:
        fs.info(bucket)
    except FileNotFoundError:
        raise BadInputError(f"{url}: bucket '{bucket}' does not exist (or these credentials cannot see it)") from None
    except PermissionError as error:
        raise BadInputError(f"{url}: access to bucket '{bucket}' denied ({error}); check the credentials in the environment or config file") from None
    except Exception as error:  # noqa: BLE001 - each backend has its own connection errors
        raise BadInputError(f"{url}: storage endpoint not reachable ({type(error).__name__}: {error})") from None
    _answering_buckets.add((protocol, bucket))


def absolute_url(url: str) -> str:
    """A local path made absolute (Ray Train and pyarrow refuse relative ones); URLs unchanged."""
    return url if "://" in url else os.path.abspath(url)


def join(url: str, *parts: str) -> str:
    """`url` with path parts appended by `/`, keeping its protocol."""
    tail = "/".join(p.strip("/") for p in parts if p.strip("/"))
    if not tail:
        return url
    return f"{url.rstrip('/')}/{tail}" if url else tail


TEMP_MARK = ".tmp-"

_log = logging.getLogger(__name__)


def _temp_sibling(url: str) -> str:
    return f"{url.rstrip('/')}{TEMP_MARK}{uuid.uuid4().hex}"


def renames_atomically(fs: fsspec.AbstractFileSystem) -> bool:
    """Only a local disk moves a file or directory in one step; object stores copy key by key."""
    return isinstance(fs, LocalFileSystem)


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
    """Plain (non-atomic) write, creating parent directories; for files inside a `committed_directory`."""
    fs, path = resolve(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)


def atomic_write_bytes(url: str, data: bytes) -> None:
    """Replace the file at `url` so that readers see the old or the new content, never a part."""
    fs, path = resolve(url)
    if not renames_atomically(fs):
        # One object PUT is all-or-nothing already; a temporary key would only add a copy.
        write_bytes(url, data)
        return
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


def remove_stale_temporaries(url: str) -> list[str]:
    """Delete `<url>.tmp-*` siblings that interrupted writes left behind (they are never read)."""
    fs, path = resolve(url)
    path = path.rstrip("/")
    stale = fs.glob(f"{path}{TEMP_MARK}*")
    for leftover in stale:
        _log.warning("%s: removed %s, left by an interrupted write", url, posixpath.basename(leftover.rstrip("/")))
        fs.rm(leftover, recursive=True)
    return stale


def files_not_as_listed(url: str, sizes: dict[str, int]) -> list[str]:
    """Files a manifest lists (name -> size) that directory `url` lacks or holds at another size."""
    present = file_sizes(url)
    return [name for name, size in sorted(sizes.items()) if present.get(name) != size]


def modified_time(info: dict) -> str:
    """A listing entry's modification time as each store reports it (local mtime, S3
    LastModified, GCS updated), as text; "" where the store gives none."""
    value = info.get("mtime") or info.get("LastModified") or info.get("updated") or info.get("created")
    return "" if value is None else str(value)


def file_sizes(url: str) -> dict[str, int]:
    """Name (relative to directory `url`) -> size of every file below it."""
    fs, root = resolve(url)
    root = root.rstrip("/")
    # One listing (a LIST call on object stores), not a request per file.
    return {posixpath.relpath(path, root): info["size"] for path, info in fs.find(root, detail=True).items()}


@contextlib.contextmanager
def committed_directory(url: str, manifest: str) -> Iterator[str]:
    """Yield where to write directory `url`'s files; the caller writes `manifest` last, and a
    reader accepts the directory only when `manifest` exists (and, where it lists them, the files
    have their listed sizes: see `metafile.read_manifest`).

    Local disk: a temporary sibling that replaces `url` by one rename on clean exit.
    Object stores have no such rename (a "move" copies every key, and failed on S3): files are
    written under `url` itself, after its old manifest and then its old files are deleted, so no
    reader accepts it until the new manifest lands. On error what was written is removed.
    """
    fs, path = resolve(url)
    remove_stale_temporaries(url)
    if renames_atomically(fs):
        where = _temp_sibling(url)
    else:
        _remove_if_present(fs, posixpath.join(path.rstrip("/"), manifest))
        _remove_if_present(fs, path)
        where = url
    _, where_path = resolve(where)
    fs.makedirs(where_path, exist_ok=True)
    try:
        yield where
    except BaseException:
        _remove_if_present(fs, where_path)
        raise
    if where != url:
        _remove_if_present(fs, path)
        fs.mv(where_path, path, recursive=True)


def _remove_if_present(fs: fsspec.AbstractFileSystem, path: str) -> None:
    if fs.exists(path):
        fs.rm(path, recursive=True)
