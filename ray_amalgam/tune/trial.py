"""One trial: a Tune function trainable that runs the trial's job and forwards its per-stage
reports to Tune, then reports the finished student's numbers. The job is one Ray Train run
(`run_job`), or, for a one-CPU-worker job reading the sweep's store, trained in the trial's own
process (`amalgamate_local` on the stored targets)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from ray import tune

from ray_amalgam.amalgamation import amalgamate_local
from ray_amalgam.distributed import Store, load_store_targets, run_job, target_columns
from ray_amalgam.io.fs import join
from ray_amalgam.spec import JobSpec
from ray_amalgam.spec.sweep import FIDELITY_PREFIX, MetricSpec
from ray_amalgam.tune.capacity import TrialRun
from ray_amalgam.tune.score import QUALITY, SCORE, StageScoreCallback, StageScorer, final_score
from ray_amalgam.tune.space import trial_job

TRIALS_DIR = "trials"
FINISHED = "trial_finished"
"""Set (to 1) only by a trial's last report, sent after its student was written."""
ACCURACY_PREFIX = "accuracy/"
IN_CLUSTER = "auto"
"""A trial joins the cluster it runs in: a CPU train worker then asks for 1 CPU, not a whole
machine's share, so trials run side by side even on one machine."""


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares (sent once through the object store)."""

    base: JobSpec
    output: str
    metric: MetricSpec
    shared_store: Store | None
    source: str
    run: TrialRun
    threads: int
    """Torch threads of an in-process trial: the CPUs its bundle holds."""


def trial_output(sweep_output: str, trial_id: str) -> str:
    return join(sweep_output, TRIALS_DIR, trial_id)


class TeacherWatch:
    """A `run_job` progress callback that keeps the most teacher batches any snapshot counted:
    with a shared store it must stay 0 (no teacher ran in the trial)."""

    def __init__(self) -> None:
        self.batches = 0

    def __call__(self, event: dict[str, Any]) -> None:
        self.batches = max(self.batches, int(event.get("teacher_batches", 0)))


def teacher_passes(report: dict[str, Any]) -> float:
    """Teacher forward passes per training sample the trial's own job ran: none when it read a
    store it did not build; in stream mode, one per epoch that read its rows (not replayed)."""
    if "targets" in report:  # trained in process
        return 0.0 if report["targets"] == "stored" else 1.0
    if report["mode"] == "store":
        return 1.0 if report.get("store_rebuilt") else 0.0
    return float(sum(stage["epochs"] - stage.get("replayed_epochs", 0) for stage in report["stages"]))


def finished_metrics(report: dict[str, Any], metric: MetricSpec, teacher_batches: int) -> dict[str, Any]:
    """The finished trial's last Tune report: eval fidelity/accuracy per task, size and speed."""
    student, teachers = report["student"], report["teachers"]
    fidelity = {task: row["fidelity"] for task, row in report["tasks"].items()}
    value, score = final_score(metric, fidelity, student["params"], teachers["params"])
    return {
        FINISHED: 1,
        "stage": "done",
        QUALITY: value,
        SCORE: score,
        **{f"{FIDELITY_PREFIX}{task}": v for task, v in fidelity.items()},
        **{f"{ACCURACY_PREFIX}{task}": row["student_accuracy"] for task, row in report["tasks"].items() if "student_accuracy" in row},
        "params": student["params"],
        "flops": student["flops"],
        "latency_ms": student["latency_ms"],
        "teacher_params": teachers["params"],
        "branch_points": json.dumps(report["branch_points"], sort_keys=True),
        "student": student["checkpoint"],
        "teacher_batches": teacher_batches,
        "teacher_passes": teacher_passes(report),
        "seconds": report["seconds"],
    }


def _train_in_trial(job: JobSpec, setup: TrialSetup, source: str) -> dict[str, Any]:
    """The job trained here, on the targets the sweep's store holds for its tasks."""
    assert setup.shared_store is not None
    torch.set_num_threads(setup.threads)
    store, scorer = setup.shared_store, StageScorer(setup.metric)
    return amalgamate_local(job, source=source, stored=lambda plan: load_store_targets(store, target_columns(plan)),
                            on_stage=lambda metrics: tune.report(scorer.scored(metrics)))


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Tune function trainable. A retried or restored Ray Train trial resumes its job after the
    last finished stage (its stage checkpoints are in the trial's own output); an in-process trial
    starts again."""
    trial_id = tune.get_context().get_trial_id()
    job = trial_job(setup.base, config, trial_output(setup.output, trial_id))
    source = f"{setup.source} (trial {trial_id})"
    watch = TeacherWatch()
    if setup.run == "in_process":
        report = _train_in_trial(job, setup, source)
    else:
        report = run_job(
            job, source=source, address=IN_CLUSTER, resume=True, progress_callback=watch,
            shared_store=setup.shared_store, train_callbacks=[StageScoreCallback(setup.metric)],
        )
    tune.report(finished_metrics(report, setup.metric, watch.batches))
