"""Teacher answers per second, in ONE process: `TeacherRunner` (the folded, channels_last
inference copy every teacher pass uses) against the teacher itself on contiguous input (what
the runner did on the CPU before), on the same pixels, batches and teachers as
`benchmarks/throughput.py`. Interleaved repeats, so machine noise hits both alike.

    python -m benchmarks.teacher_pass [--rows 8192] [--repeats 3] [--teacher-width 0.5] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import report
from benchmarks.throughput import make_job, prepare
from ray_amalgam.amalgamation import TeacherRunner, load_pool, teacher_outputs
from ray_amalgam.amalgamation.supervised import load_labelled
from ray_amalgam.cli.console import print_table
from ray_amalgam.io.images import to_tensor

BATCH = 256
"""The throughput benchmark's `teacher_batch_size`."""


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        prepare(root, args.rows, 32, args.teacher_width)
        job = make_job(root, "store", 64)
        plan, teachers = load_pool(job)
        pixels = load_labelled(job.data.train, []).images
    batches = [pixels[start : start + BATCH] for start in range(0, len(pixels), BATCH)]
    runners = [TeacherRunner(name, teacher, plan, torch.device("cpu")) for name, teacher in teachers.items()]

    def as_is() -> list[dict[str, np.ndarray]]:
        answers = []
        with torch.inference_mode():
            for name, teacher in teachers.items():
                meta = plan.teachers[name]
                for batch in batches:
                    outputs = teacher_outputs(teacher, name, to_tensor(batch, meta.mean, meta.std), plan)
                    answers.append({k: v.numpy() for k, v in outputs.items()})
        return answers

    def runner() -> list[dict[str, np.ndarray]]:
        return [r.outputs(batch) for r in runners for batch in batches]

    times: dict[str, list[float]] = {"teacher_as_is": [], "runner": []}
    answers: dict[str, list[dict[str, np.ndarray]]] = {}
    for _ in range(args.repeats):
        for name, answer in (("teacher_as_is", as_is), ("runner", runner)):
            started = time.perf_counter()
            answers[name] = answer()
            times[name].append(time.perf_counter() - started)
    worst = max(
        float(np.abs(got[key] - expected[key]).max() / max(np.abs(expected[key]).max(), 1e-6))
        for got, expected in zip(answers["runner"], answers["teacher_as_is"])
        for key in expected
    )
    result: dict[str, Any] = {"rows": len(pixels), "teachers": len(teachers), "repeats": args.repeats,
                              "teacher_width": args.teacher_width, "max_relative_difference": worst}
    for name, samples in times.items():
        seconds = statistics.median(samples)
        result[name] = {"seconds": seconds, "images_per_s": len(pixels) * len(teachers) / seconds, "runs_s": samples}
    result["runner_vs_as_is"] = result["teacher_as_is"]["seconds"] / result["runner"]["seconds"]
    return result


def show(result: dict[str, Any]) -> None:
    rows = [[name, f"{result[name]['seconds']:.2f}", f"{result[name]['images_per_s']:.0f}"] for name in ("teacher_as_is", "runner")]
    title = f"{result['teachers']} teachers x {result['rows']} images, median of {result['repeats']}"
    print_table(title, ["path", "s", "teacher answers/s"], rows)
    print(f"runner: {result['runner_vs_as_is']:.2f}x the teacher as is; largest difference {result['max_relative_difference']:.1e} of an output's scale")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--teacher-width", type=float, default=0.5)
    parser.add_argument("--json", action="store_true")
    report(parser.parse_args(argv), measure, show)


if __name__ == "__main__":
    main()
