"""Ray: teacher actor pools, the streaming pipeline, the teacher-output store, the Ray Train stage loop."""

from ray_amalgam._lazy import lazy_exports

_EXPORTS = {
    "run_demo": "demo",
    "LiveView": "progress",
    "index_pool": "pool_index",
    "LogLines": "progress",
    "ResourcePlan": "resources",
    "connect": "resources",
    "plan_resources": "resources",
    "run_job": "runner",
    "Store": "store",
    "load_store_targets": "store",
    "target_columns": "store",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
