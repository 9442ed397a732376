"""A trial's score: after each block stage (what ASHA compares) and once it finished (what the
report ranks by)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from ray_amalgam.spec.sweep import FIDELITY_PREFIX, MetricSpec

SCORE = "score"
QUALITY = "quality"


def quality(metric: MetricSpec, fidelity: Mapping[str, float]) -> float | None:
    """The metric's quality from per-task fidelity; None when no named task was measured.
    A diverged student's NaN counts as 0: Tune's schedulers ignore NaN, and it must lose."""
    task = metric.task
    if task is None:
        values = list(fidelity.values())
    else:
        values = [fidelity[task]] if task in fidelity else []
    if not values:
        return None
    return sum(0.0 if math.isnan(v) else v for v in values) / len(values)


def final_score(metric: MetricSpec, fidelity: Mapping[str, float], params: int, teacher_params: int) -> tuple[float, float]:
    """(quality, score) of a finished trial: eval-set fidelity, minus the size penalty on the
    student's share of the parameters of the teachers it replaces."""
    value = quality(metric, fidelity) or 0.0
    return value, value - metric.size_penalty * params / max(teacher_params, 1)


class StageScorer:
    """Adds the trial's `score` to each stage report.

    A stage that trained nothing (every task left the trunk) measures no fidelity: the last
    score stands, so a scheduler always has one to compare. The size penalty is not applied
    before the trial finished: branch-out, which decides the student's size, is not done yet.
    """

    def __init__(self, metric: MetricSpec) -> None:
        self._metric = metric
        self._last: float | None = None

    def scored(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fidelity = {k.removeprefix(FIDELITY_PREFIX): v for k, v in metrics.items() if k.startswith(FIDELITY_PREFIX)}
        value = quality(self._metric, fidelity)
        self._last = value if value is not None else self._last
        return {**metrics, **({SCORE: self._last, QUALITY: self._last} if self._last is not None else {})}


class StageScoreCallback(TuneReportCallback):
    """Ray Train's per-stage reports, forwarded to Tune with the trial's `score` added."""

    def __init__(self, metric: MetricSpec) -> None:
        super().__init__()
        self._scorer = StageScorer(metric)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        super().after_report(run_context, [self._scorer.scored(metrics[0]), *metrics[1:]], checkpoint)
