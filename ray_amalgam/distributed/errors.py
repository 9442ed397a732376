"""Errors that crossed a Ray task or actor call, as the caller should see them."""

from __future__ import annotations

import ray

from ray_amalgam.spec import BadInputError


def named_error(error: BaseException) -> BaseException:
    """A bad row's own one-line BadInputError, out of the Ray task error that carried it (whose
    message holds the task's traceback, and from a Ray Data task, retry advice); any other
    error as it is."""
    cause = getattr(error, "cause", None)
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(cause, BadInputError):
        return BadInputError(str(cause).splitlines()[0])
    return error
