"""Ray Tune sweeps over student widths, task subsets and hyperparameters, all trials sharing
one teacher-output store."""

from ray_amalgam._lazy import lazy_exports

_EXPORTS = {
    "SweepLiveView": "progress",
    "load_sweep": "sweep",
    "run_sweep": "sweep",
    "render_report": "results",
    "read_trials": "results",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
