"""JSON metadata files (`_dataset.json`, `teacher.json`, ...) beside data and weights.

Each is also its directory's manifest: written last, it lists the name and size of every file
the directory held when it was committed, so a reader can tell a whole directory from one an
interrupted write or copy left behind (object stores have no atomic directory rename).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, TypeVar

from pydantic import BaseModel

from ray_amalgam.io.fs import files_not_as_listed, read_text
from ray_amalgam.spec import BadInputError, parse_spec

M = TypeVar("M", bound=BaseModel)


def read_json(url: str) -> Any:
    """Parse a JSON file; BadInputError naming the file if it is missing or not JSON."""
    try:
        return json.loads(read_text(url))
    except json.JSONDecodeError as error:
        raise BadInputError(f"{url}: not valid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None


LISTED_FILES = "files"
"""The manifest's key for {file name: size}; absent in files written before manifests listed them."""


def manifest_json(meta: dict[str, Any], sizes: dict[str, int]) -> bytes:
    """`meta` plus the {name: size} of the files it covers, as JSON."""
    return json.dumps({**meta, LISTED_FILES: sizes}, indent=2, sort_keys=True).encode("utf-8")


def read_manifest(url: str) -> Any:
    """A metadata file's JSON with its file list checked against its directory and removed;
    BadInputError if a listed file is missing or has another size."""
    data = read_json(url)
    if isinstance(data, dict) and LISTED_FILES in data:
        listed = data.pop(LISTED_FILES)
        directory = url.rsplit("/", 1)[0]
        wrong = files_not_as_listed(directory, listed)
        if wrong:
            raise BadInputError(
                f"{directory}: {wrong[0]} is missing or not the {listed[wrong[0]]} bytes {posixpath.basename(url)} lists; "
                "expected a complete directory (was a write or copy interrupted? write it again)"
            )
    return data


def load_versioned(model: type[M], url: str, supported_version: int) -> M:
    """Read a manifest and validate it, refusing format versions this code does not read."""
    data = read_manifest(url)
    if isinstance(data, dict):
        version = data.get("format_version", supported_version)
        if version != supported_version:
            raise BadInputError(
                f"{url}: format_version {version!r} is not supported; this ray_amalgam reads format_version {supported_version}"
            )
    return parse_spec(model, data, url)
