"""JSON metadata files (`_dataset.json`, `teacher.json`, ...) beside data and weights."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel

from ray_amalgam.io.fs import read_text
from ray_amalgam.spec import BadInputError, parse_spec

M = TypeVar("M", bound=BaseModel)


def read_json(url: str) -> Any:
    """Parse a JSON file; BadInputError naming the file if it is missing or not JSON."""
    try:
        return json.loads(read_text(url))
    except json.JSONDecodeError as error:
        raise BadInputError(f"{url}: not valid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None


def load_versioned(model: type[M], url: str, supported_version: int) -> M:
    """Read a metadata file and validate it, refusing format versions this code does not read."""
    data = read_json(url)
    if isinstance(data, dict):
        version = data.get("format_version", supported_version)
        if version != supported_version:
            raise BadInputError(
                f"{url}: format_version {version!r} is not supported; this ray_amalgam reads format_version {supported_version}"
            )
    return parse_spec(model, data, url)
