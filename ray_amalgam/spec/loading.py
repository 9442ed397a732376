"""Load specs from YAML/JSON text with one-line errors naming the file and field path."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ray_amalgam.spec.errors import BadInputError

M = TypeVar("M", bound=BaseModel)


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def validation_message(source: str, error: ValidationError) -> str:
    """The first validation problem as `source: field.path: what was expected (got ...)`."""
    first = error.errors(include_url=False)[0]
    msg = first["msg"].removeprefix("Value error, ")
    got = ""
    if first["type"] not in ("missing", "value_error") and "input" in first:
        shown = repr(first["input"])
        got = f" (got {shown[:60]})"
    more = len(error.errors()) - 1
    extra = f" [+{more} more problem{'s' if more > 1 else ''}]" if more else ""
    return f"{source}: {_field_path(first['loc'])}: {msg}{got}{extra}"


def parse_spec(model: type[M], data: Any, source: str) -> M:
    """Validate already-parsed data against a spec model."""
    if not isinstance(data, dict):
        raise BadInputError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise BadInputError(validation_message(source, error)) from None


def load_spec_text(model: type[M], text: str, source: str) -> M:
    """Parse YAML (JSON is YAML too) and validate it."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise BadInputError(f"{source}: not valid YAML{where}: {problem}") from None
    return parse_spec(model, data, source)


def dump_spec_json(spec: BaseModel) -> str:
    return json.dumps(spec.model_dump(mode="json"), indent=2, sort_keys=True)
