"""Benchmarks: each prints its numbers as a table, or with --json one JSON document."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ray_amalgam.cli.console import print_json, stdout_reserved_for_json


def report(args: argparse.Namespace, measure: Callable[[argparse.Namespace], dict[str, Any]], show: Callable[[dict[str, Any]], None]) -> None:
    """Run `measure(args)`; print its result as JSON under --json (stdout then carries nothing
    else, not even what Ray prints), else `show` it."""
    if args.json:
        with stdout_reserved_for_json(until_exit=True):
            print_json(measure(args))
        return
    show(measure(args))
