import pytest
import torch

from ray_amalgam.amalgamation import concrete_schedule, stage_lr_scheduler, steps_per_epoch
from ray_amalgam.spec import ScheduleSpec


@pytest.mark.parametrize(
    ("rows", "stage", "finetune"),
    [(100, 150, 300), (3000, 5, 10), (15_000, 1, 2), (1_000_000, 1, 1)],
)
def test_auto_epochs_show_each_stage_about_its_sample_budget(rows, stage, finetune):
    schedule = concrete_schedule(ScheduleSpec(samples_per_stage=15_000, finetune_stages=2.0), rows)
    assert (schedule.stage_epochs, schedule.finetune_epochs) == (stage, finetune)


def test_explicit_epochs_are_kept():
    schedule = concrete_schedule(ScheduleSpec(stage_epochs=3, finetune_epochs=0), 10)
    assert (schedule.stage_epochs, schedule.finetune_epochs) == (3, 0)


def test_steps_per_epoch_splits_rows_across_workers():
    assert steps_per_epoch(1000, 64) == 16
    assert steps_per_epoch(1000, 64, workers=4) == 4
    assert steps_per_epoch(0, 64) == 1


def _rates(schedule: ScheduleSpec, total: int | None, steps: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=schedule.lr)
    scheduler = stage_lr_scheduler(optimizer, schedule, total)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_cosine_warms_up_peaks_at_the_rate_and_decays_to_zero():
    rates = _rates(ScheduleSpec(lr=0.1), total=100, steps=120)
    assert rates[0] < rates[4] == pytest.approx(0.1)  # five warm-up steps (5%)
    assert all(a >= b for a, b in zip(rates[4:100], rates[5:100]))
    assert rates[50] == pytest.approx(0.05, abs=0.01)
    assert rates[99] < 1e-3 and rates[119] == 0.0  # past the end: the floor, no error


@pytest.mark.parametrize(("schedule", "total"), [(ScheduleSpec(lr=0.1, lr_schedule="constant"), 100), (ScheduleSpec(lr=0.1), None)])
def test_constant_rate_when_asked_or_when_the_length_is_unknown(schedule, total):
    assert set(_rates(schedule, total, 30)) == {0.1}
