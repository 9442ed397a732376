"""Staged backbones, multi-task teachers and the TargetNet student."""

from ray_amalgam.models.backbones import (
    StagedBackbone,
    create_backbone,
    list_backbones,
    register_backbone,
    scaled_channels,
)
from ray_amalgam.models.heads import TaskHead
from ray_amalgam.models.targetnet import (
    Adapter,
    TargetNet,
    TaskBranch,
    build_targetnet,
    matching_block,
)
from ray_amalgam.models.teacher import (
    MultiTaskNet,
    build_teacher,
    inference_copy,
    load_state_strict,
    teacher_from_weights,
)

__all__ = [
    "Adapter",
    "MultiTaskNet",
    "StagedBackbone",
    "TargetNet",
    "TaskBranch",
    "TaskHead",
    "build_targetnet",
    "build_teacher",
    "create_backbone",
    "inference_copy",
    "list_backbones",
    "load_state_strict",
    "matching_block",
    "register_backbone",
    "scaled_channels",
    "teacher_from_weights",
]
