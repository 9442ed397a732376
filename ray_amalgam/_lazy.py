"""Package faces that import a submodule only when one of its names is first used.

Ray starts worker processes for data tasks freely, and a worker that unpickles a small decode
function imports that function's package first. With eager faces that pulled in torch and
torchvision (about 4 s a process here) for work that needs only numpy and PIL.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`'s __init__: `exports` maps each public name to its submodule."""

    def __getattr__(name: str) -> Any:
        submodule = exports.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{submodule}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
