"""Ray: teacher actor pools, the streaming pipeline, the teacher-output store, the Ray Train stage loop."""

from ray_amalgam.distributed.demo import run_demo
from ray_amalgam.distributed.progress import LiveView
from ray_amalgam.distributed.resources import ResourcePlan, connect, plan_resources
from ray_amalgam.distributed.runner import run_job

__all__ = ["LiveView", "ResourcePlan", "connect", "plan_resources", "run_demo", "run_job"]
