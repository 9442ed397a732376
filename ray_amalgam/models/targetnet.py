"""TargetNet: a width-scaled shared trunk with one branch per task (adapter + teacher tail + head)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from ray_amalgam.models.backbones import StagedBackbone, create_backbone
from ray_amalgam.models.heads import TaskHead
from ray_amalgam.models.teacher import MultiTaskNet
from ray_amalgam.spec import BadInputError, StudentMeta


class Adapter(nn.Sequential):
    """1x1 convolution + batch norm from student channels to teacher channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


class TaskBranch(nn.Module):
    """adapter -> teacher blocks after the matched one -> task head."""

    def __init__(self, adapter: Adapter, tail: Sequence[nn.Module], head: TaskHead) -> None:
        super().__init__()
        self.adapter = adapter
        self.tail = nn.Sequential(*tail)
        self.head = head

    def forward(self, h: Tensor) -> Tensor:
        return self.head(self.tail(self.adapter(h)))

    @classmethod
    def from_teacher(
        cls, in_channels: int, teacher: MultiTaskNet, task: str, teacher_block: int, share: bool = False
    ) -> TaskBranch:
        """A branch entering `teacher` after its block `teacher_block` (1-based).

        `share=True` reuses the teacher's own (frozen) modules, as the block stages do;
        otherwise the tail and head are copies that the student owns.
        """
        take = (lambda m: m) if share else copy.deepcopy
        tail = [take(b) for b in teacher.backbone.blocks[teacher_block:]]
        adapter = Adapter(in_channels, teacher.backbone.channels[teacher_block - 1])
        return cls(adapter, tail, take(teacher.heads[task]))


def matching_block(trunk: StagedBackbone, trunk_block: int, teacher: StagedBackbone) -> int | None:
    """The teacher block (1-based) at the same output stride as trunk block `trunk_block`, if any."""
    stride = trunk.strides[trunk_block - 1]
    for index, teacher_stride in enumerate(teacher.strides, start=1):
        if teacher_stride == stride:
            return index
    return None


class TargetNet(nn.Module):
    """The student. Task t branches out after trunk block `branch_points[t]` (1-based)."""

    def __init__(self, trunk: StagedBackbone, branches: Mapping[str, TaskBranch], branch_points: Mapping[str, int]) -> None:
        super().__init__()
        if set(branches) != set(branch_points):
            raise ValueError("every branch needs a branch point")
        self.trunk = trunk
        self.branches = nn.ModuleDict(dict(branches))
        self.branch_points = dict(branch_points)

    @property
    def depth(self) -> int:
        """Trunk blocks actually used: the deepest branch point."""
        return max(self.branch_points.values())

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk.stem(x)
        outputs: dict[str, Tensor] = {}
        for block_number in range(1, self.depth + 1):
            h = self.trunk.blocks[block_number - 1](h)
            for task, point in self.branch_points.items():
                if point == block_number:
                    outputs[task] = self.branches[task](h)
        return {task: outputs[task] for task in self.branch_points}


def build_targetnet(meta: StudentMeta) -> TargetNet:
    """Rebuild the student's structure from its metadata alone (weights are loaded afterwards)."""
    trunk = create_backbone(meta.backbone)
    branches: dict[str, TaskBranch] = {}
    points: dict[str, int] = {}
    for spec in meta.branches:
        if spec.branch_point > trunk.num_blocks:
            raise BadInputError(
                f"branch point {spec.branch_point} of task '{spec.task.name}' exceeds the {trunk.num_blocks} trunk blocks"
            )
        skeleton = MultiTaskNet(create_backbone(spec.teacher_backbone), [spec.task])
        branches[spec.task.name] = TaskBranch.from_teacher(
            trunk.channels[spec.branch_point - 1], skeleton, spec.task.name, spec.teacher_block, share=True
        )
        points[spec.task.name] = spec.branch_point
    return TargetNet(trunk, branches, points)
