"""Data x1, x4, x16 through the store-mode Ray pipeline: wall time and peak memory (RSS) of the
driver and of the Ray worker processes. Time should grow about linearly with the data and
memory should stay flat (nothing materializes the whole dataset).

    python -m benchmarks.scaling [--base-rows 512] [--factors 1 4 16] [--json]   (from the repository root)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.throughput import TEACHERS, make_job, prepare
from ray_amalgam.distributed import run_job


def _rss_mb(pid: str) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _ray_worker_pids() -> list[str]:
    """Ray worker processes (their command line starts with `ray::`), read from /proc (Linux)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if handle.read(5) == b"ray::":
                    pids.append(pid)
        except OSError:
            continue  # the process ended meanwhile
    return pids


class PeakMemory:
    """Samples RSS of this driver and of every Ray worker process every 0.2 s (the largest one)."""

    def __init__(self) -> None:
        self.driver_mb = 0.0
        self.worker_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.driver_mb = max(self.driver_mb, _rss_mb(str(os.getpid())))
            for pid in _ray_worker_pids():
                try:
                    self.worker_mb = max(self.worker_mb, _rss_mb(pid))
                except OSError:
                    continue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-rows", type=int, default=512)
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    for factor in args.factors:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            rows = args.base_rows * factor
            prepare(root, rows, 32)
            with PeakMemory() as peak:
                started = time.perf_counter()
                report = run_job(make_job(root, "store", 64), "scaling")
                wall = time.perf_counter() - started
            results.append({
                "factor": factor, "rows": rows, "wall_s": round(wall, 1), "fit_s": report["fit_seconds"],
                "store_pass_s": report["store_seconds"], "peak_driver_rss_mb": round(peak.driver_mb),
                "peak_worker_rss_mb": round(peak.worker_mb),
            })
    if args.json:
        print(json.dumps({"teachers": list(TEACHERS), "runs": results}))
        return
    for row in results:
        print("  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
