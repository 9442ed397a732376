"""Block-wise entangled training of the TargetNet: block stages, branch-out, finetune.

`Amalgamator` works one batch at a time and holds no global state, so the same object runs in
the local runner and inside each Ray Train worker (where the caller wraps `stage_module(...)`
with DistributedDataParallel and passes the wrapper to `train_step`).

Mixed architectures: trunk block l is entangled with the block of each task's teacher at the
same output stride. If some trunk block has no such teacher block, the job is refused with a
BadInputError at construction (no stage is silently skipped).
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ray_amalgam.amalgamation.branch_out import auto_branch_points, manual_branch_points
from ray_amalgam.amalgamation.losses import (
    distillation_loss,
    hint_loss,
    least_ambiguous,
    ranking_loss,
)
from ray_amalgam.amalgamation.metrics import fidelity_matches
from ray_amalgam.amalgamation.plan import AmalgamationPlan, hint_key, logits_key
from ray_amalgam.amalgamation.schedule import stage_lr_scheduler
from ray_amalgam.models import (
    Adapter,
    MultiTaskNet,
    StagedBackbone,
    TargetNet,
    TaskBranch,
    create_backbone,
    inference_copy,
    load_state_strict,
    matching_block,
)
from ray_amalgam.spec import (
    BadInputError,
    BranchSpec,
    JobSpec,
    StudentMeta,
    TaskSpec,
    TeacherMeta,
)

FINETUNE = "finetune"


def block_stage(block: int) -> str:
    return f"block{block}"


def branch_teacher(plan: AmalgamationPlan, task: str) -> str:
    """The teacher whose tail and head become the task's branch (the first of its sources)."""
    return plan.sources[task][0]


def student_normalization(plan: AmalgamationPlan) -> TeacherMeta:
    """The teacher whose mean/std and input size the student adopts: the first chosen one."""
    return next(iter(plan.teachers.values()))


def entangled_blocks(plan: AmalgamationPlan, trunk: StagedBackbone, teachers: Mapping[str, MultiTaskNet]) -> dict[str, list[int]]:
    """task -> for each trunk block l (index l-1), the block of its branch teacher at the same stride."""
    blocks: dict[str, list[int]] = {}
    for task in plan.task_names:
        name = branch_teacher(plan, task)
        teacher = teachers[name].backbone
        matched = []
        for block in range(1, trunk.num_blocks + 1):
            found = matching_block(trunk, block, teacher)
            if found is None:
                raise BadInputError(
                    f"student.arch: trunk block {block} of '{trunk.spec.arch}' (stride {trunk.strides[block - 1]}) has no block "
                    f"at the same stride in teacher '{name}' ('{teacher.spec.arch}', strides {list(teacher.strides)}); "
                    f"expected a student architecture whose block strides {list(trunk.strides)} all occur in every teacher"
                )
            matched.append(found)
        blocks[task] = matched
    return blocks


class StageNet(nn.Module):
    """Trunk up to block `depth`, then per task: adapter -> frozen teacher tail -> frozen head.

    Modules listed in `frozen` stay in eval mode even when the net is in train mode, so the
    BN statistics of teachers (and of frozen trunk blocks) never change.
    """

    def __init__(self, trunk: StagedBackbone, depth: int, branches: Mapping[str, TaskBranch], frozen: list[nn.Module]) -> None:
        super().__init__()
        self.trunk = trunk
        self.depth = depth
        self.branches = nn.ModuleDict(dict(branches))
        self._frozen = frozen  # a plain list: these are registered elsewhere in the tree already

    def train(self, mode: bool = True) -> StageNet:
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def forward(self, x: Tensor, with_adapted: bool = False) -> dict[str, Tensor] | tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Logits per task; with `with_adapted`, also each task's adapter output (for the hint loss)."""
        h = self.trunk.run_blocks(self.trunk.stem(x), 0, self.depth)
        logits: dict[str, Tensor] = {}
        adapted: dict[str, Tensor] = {}
        for task, branch in self.branches.items():
            adapted[task] = branch.adapter(h)
            logits[task] = branch.head(branch.tail(adapted[task]))
        return (logits, adapted) if with_adapted else logits


def _adapter_key(task: str, block: int) -> str:
    return f"{task}@{block}"


class Amalgamator:
    """Trains a TargetNet from frozen teachers, stage by stage: block1..blockL, then finetune.

    `block_stages=False` skips every block stage (all tasks stay on the trunk to its last block):
    plain end-to-end multi-teacher KD with the same student, used by the baseline.
    """

    def __init__(
        self,
        plan: AmalgamationPlan,
        teachers: Mapping[str, MultiTaskNet],
        job: JobSpec,
        device: torch.device,
        block_stages: bool = True,
    ) -> None:
        missing = [name for name in plan.teachers if name not in teachers]
        if missing:
            raise BadInputError(f"teachers: no model given for planned teacher(s) {missing}")
        self.plan = plan
        self.job = job
        self.device = torch.device(device)
        self.block_stages = block_stages
        self.teachers = {name: teachers[name] for name in plan.teachers}
        # Weights channels_last on every device: the layout the images arrive in (NHWC pixels),
        # so no convolution reorders its weights per call. CUDA adds bf16 autocast (losses in fp32).
        self._cuda = self.device.type == "cuda"
        for teacher in self.teachers.values():
            teacher.requires_grad_(False).eval().to(self.device, memory_format=torch.channels_last)
        # Block stages run and backpropagate through frozen teacher tails: BatchNorm folded away.
        tail_teachers = {branch_teacher(plan, task) for task in plan.task_names} if block_stages else set()
        self._frozen_teachers = {name: inference_copy(self.teachers[name]) for name in tail_teachers}
        normalization = student_normalization(plan)
        self._mean = torch.tensor(normalization.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(normalization.std, device=self.device).view(1, 3, 1, 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(job.schedule.seed)  # every worker starts from the same student
            trunk = create_backbone(plan.student)
            self.blocks = entangled_blocks(plan, trunk, self.teachers)
            adapters = {
                _adapter_key(task, block): Adapter(
                    trunk.channels[block - 1],
                    self._branch_backbone(task).channels[self.blocks[task][block - 1] - 1],
                )
                for task in plan.task_names
                for block in range(1, trunk.num_blocks + 1)
            }
        self.num_blocks = trunk.num_blocks
        self._parts = nn.ModuleDict({"trunk": trunk, "adapters": nn.ModuleDict(adapters)}).to(
            self.device, memory_format=torch.channels_last
        )
        self._manual_points = (
            manual_branch_points(job.student.branch_out, plan.task_names, self.num_blocks)
            if isinstance(job.student.branch_out, dict)
            else None
        )
        self._finished: list[str] = []
        self._fidelity: dict[str, dict[str, float]] = {}
        self._samples: dict[str, int] = {}
        self._best: tuple[int, dict[str, float], dict[str, Tensor]] | None = None
        self._stage: str | None = None
        self._module: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._hint_index = {
            (task, block): torch.as_tensor(channels, device=self.device)
            for task in plan.task_names
            for block, channels in plan.hint_channels.get(branch_teacher(plan, task), {}).items()
        }

    # ----- structure -------------------------------------------------------------------------

    def _branch_backbone(self, task: str) -> StagedBackbone:
        return self.teachers[branch_teacher(self.plan, task)].backbone

    @property
    def trunk(self) -> StagedBackbone:
        return self._parts["trunk"]

    def stage_names(self) -> list[str]:
        return [block_stage(b) for b in range(1, self.num_blocks + 1)] + [FINETUNE]

    def current_stage(self) -> str | None:
        """The first stage not finished yet; None when all are."""
        return next((s for s in self.stage_names() if s not in self._finished), None)

    def _block_history(self) -> tuple[list[dict[str, float]], list[int]]:
        stages = [block_stage(b) for b in range(1, self.num_blocks + 1) if block_stage(b) in self._finished]
        return [self._fidelity.get(s, {}) for s in stages], [self._samples.get(s, 0) for s in stages]

    def branch_points(self) -> dict[str, int]:
        """Branch points decided so far (all of them once the block stages are finished)."""
        if not self.block_stages:
            return {task: self.num_blocks for task in self.plan.task_names}
        if self._manual_points is not None:
            return dict(self._manual_points)
        history, samples = self._block_history()
        points = auto_branch_points(history, self.job.student.branch_tolerance, samples)
        if block_stage(self.num_blocks) in self._finished:
            points = {task: points.get(task, self.num_blocks) for task in self.plan.task_names}
        return points

    def tasks_on_trunk(self, block: int) -> list[str]:
        """Tasks trained through trunk block `block` in its stage."""
        if not self.block_stages:
            return []
        decided = self.branch_points()
        return [t for t in self.plan.task_names if decided.get(t, self.num_blocks) >= block]

    def skips(self, stage: str) -> bool:
        """True when a stage has nothing to train (no task left on the trunk, or no finetune
        epochs): the caller calls `finish_stage(stage, {})` without training."""
        if stage == FINETUNE:
            return self.stage_epochs(FINETUNE) == 0
        return not self.tasks_on_trunk(int(stage.removeprefix("block")))

    def _check_current(self, stage: str) -> None:
        if stage not in self.stage_names():
            raise ValueError(f"unknown stage '{stage}'; expected one of {self.stage_names()}")
        if stage != self.current_stage():
            raise ValueError(f"stage '{stage}' is not the current stage '{self.current_stage()}'")

    def _build_stage(self, stage: str) -> tuple[nn.Module, list[nn.Parameter]]:
        trunk = self.trunk
        trunk.requires_grad_(False)
        if stage == FINETUNE:
            student = self.student()
            student.requires_grad_(True)
            for block in trunk.blocks[student.depth :]:  # unused blocks would stall DDP's reducer
                block.requires_grad_(False)
            return student, [p for p in student.parameters() if p.requires_grad]
        block = int(stage.removeprefix("block"))
        first = 1 if self.job.student.train_earlier_blocks else block
        trainable: list[nn.Module] = [trunk.blocks[b - 1] for b in range(first, block + 1)]
        if first == 1:
            trainable.append(trunk.stem)
        frozen = [m for m in [trunk.stem, *trunk.blocks[:block]] if all(m is not t for t in trainable)]
        branches = {}
        for task in self.tasks_on_trunk(block):
            teacher = self._frozen_teachers[branch_teacher(self.plan, task)]
            teacher_block = self.blocks[task][block - 1]
            adapter = self._parts["adapters"][_adapter_key(task, block)]
            branches[task] = TaskBranch(adapter, teacher.backbone.blocks[teacher_block:], teacher.heads[task])
            trainable.append(adapter)
            frozen += [branches[task].tail, branches[task].head]
        for module in trainable:
            module.requires_grad_(True)
        net = StageNet(trunk, block, branches, frozen)
        return net, [p for m in trainable for p in m.parameters()]

    def stage_module(self, stage: str, steps: int | None = None) -> nn.Module:
        """The module holding `stage`'s trainable parameters; `forward(images) -> {task: logits}`.
        Starting a stage creates its optimizer, and its learning-rate schedule over the stage's
        `steps` optimizer steps (None, a length not known: a constant rate)."""
        self._check_current(stage)
        if self._stage != stage:
            module, params = self._build_stage(stage)
            schedule = self.job.schedule
            # fused: one kernel for all parameters, not a loop of small ops per tensor.
            self._optimizer = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay, fused=True)
            self._lr_scheduler = stage_lr_scheduler(self._optimizer, schedule, steps)
            self._stage, self._module = stage, module
        return self._module

    def stage_epochs(self, stage: str) -> int:
        """Epochs the stage trains for (the schedule's epochs must be concrete numbers by now)."""
        epochs = self.job.schedule.finetune_epochs if stage == FINETUNE else self.job.schedule.stage_epochs
        if not isinstance(epochs, int):
            raise ValueError("schedule epochs are still 'auto': resolve them with concrete_schedule first")
        return epochs

    def student(self) -> TargetNet:
        """The TargetNet; its branches own copies of the teacher tails. Needs all block stages done."""
        if "branches" not in self._parts:
            blocks_done = all(block_stage(b) in self._finished for b in range(1, self.num_blocks + 1))
            if self.block_stages and not blocks_done:
                raise ValueError("the student exists once every block stage is finished")
            self._parts["branches"] = nn.ModuleDict(self._student_branches(self.branch_points()))
        return TargetNet(self.trunk, dict(self._parts["branches"].items()), self.branch_points())

    def _student_branches(self, points: Mapping[str, int]) -> dict[str, TaskBranch]:
        branches = {}
        for task, point in points.items():
            teacher = self.teachers[branch_teacher(self.plan, task)]
            teacher_block = self.blocks[task][point - 1]
            tail = [copy.deepcopy(b) for b in teacher.backbone.blocks[teacher_block:]]
            adapter = self._parts["adapters"][_adapter_key(task, point)]
            branches[task] = TaskBranch(adapter, tail, copy.deepcopy(teacher.heads[task])).to(self.device)
        return branches

    def student_meta(self, source_teachers: dict[str, str]) -> StudentMeta:
        """Metadata to rebuild the student; `source_teachers` maps teacher name -> checkpoint hash."""
        normalization = student_normalization(self.plan)
        branches = tuple(
            BranchSpec(
                task=task,
                teacher=branch_teacher(self.plan, task.name),
                teacher_backbone=self._branch_backbone(task.name).spec,
                branch_point=point,
                teacher_block=self.blocks[task.name][point - 1],
            )
            for task in self.plan.tasks
            for point in [self.branch_points()[task.name]]
        )
        return StudentMeta(
            backbone=self.plan.student,
            branches=branches,
            input_size=self.plan.input_size,
            mean=normalization.mean,
            std=normalization.std,
            source_teachers=source_teachers,
        )

    # ----- training --------------------------------------------------------------------------

    def _tensor(self, value: Any) -> Tensor:
        return torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value).to(self.device, non_blocking=True)

    def normalize(self, images: Any) -> Tensor:
        """uint8 (N, H, W, 3) images -> normalized float (N, 3, H, W) on the engine's device."""
        x = self._tensor(images)
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[3] != 3:
            raise BadInputError(f"batch 'image': expected uint8 (N, H, W, 3) images, got {x.dtype} {tuple(x.shape)}")
        # NHWC pixels permuted to NCHW keep their NHWC memory: the input is channels_last already.
        return (x.permute(0, 3, 1, 2).float().div_(255.0) - self._mean) / self._std

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._cuda)

    def _target(self, batch: Mapping[str, Any], task: str) -> Tensor:
        kind = self.plan_task(task).kind
        columns = [logits_key(teacher, task) for teacher in self.plan.sources[task]]
        absent = [c for c in columns if c not in batch]
        if absent:
            raise BadInputError(f"batch: missing teacher target column(s) {absent}")
        return least_ambiguous([self._tensor(batch[c]).float() for c in columns], kind)

    def plan_task(self, task: str) -> TaskSpec:
        return self.plan.tasks[self.plan.task_names.index(task)]

    def _uses_hints(self, stage: str) -> bool:
        return stage != FINETUNE and self.job.hint.enabled and bool(self._hint_index)

    def train_step(self, batch: Mapping[str, Any], model: nn.Module | None = None) -> dict[str, float]:
        """One optimizer step of the current stage on one batch; returns the loss values.
        `model` is the (DDP-wrapped) stage module to call instead of the bare one."""
        stage = self.current_stage()
        if stage is None:
            raise ValueError("every stage is finished")
        module = self.stage_module(stage)
        net = module if model is None else model
        net.train()
        x = self.normalize(batch["image"])
        hints = self._uses_hints(stage)
        with self._autocast():
            if hints:
                logits, adapted = net(x, with_adapted=True)
            else:
                logits, adapted = net(x), {}
        schedule = self.job.schedule
        terms: dict[str, Tensor] = {}
        total = x.new_zeros(())
        for task, task_logits in logits.items():
            student, target, kind = task_logits.float(), self._target(batch, task), self.plan_task(task).kind
            loss = distillation_loss(student, target, kind, schedule.temperature)
            if kind == "multilabel" and schedule.multilabel_rank_weight > 0:
                loss = loss + schedule.multilabel_rank_weight * ranking_loss(student, target, schedule.temperature)
            total = total + schedule.task_weights.get(task, 1.0) * loss
            terms[f"loss/{task}"] = loss.detach()
        if hints:
            hint = self._hint_term(batch, {task: a.float() for task, a in adapted.items()}, int(stage.removeprefix("block")))
            total = total + self.job.hint.weight * hint
            terms["loss/hint"] = hint.detach()
        self._optimizer.zero_grad(set_to_none=True)
        total.backward()
        self._optimizer.step()
        self._lr_scheduler.step()
        terms["loss"] = total.detach()
        # One device-to-host copy for all loss values (one sync per step on CUDA, not one per task).
        return dict(zip(terms, torch.stack(list(terms.values())).tolist()))

    def _hint_term(self, batch: Mapping[str, Any], adapted: Mapping[str, Tensor], block: int) -> Tensor:
        terms = []
        for task, features in adapted.items():
            teacher_block = self.blocks[task][block - 1]
            index = self._hint_index.get((task, teacher_block))
            if index is not None:
                target = self._tensor(batch[hint_key(branch_teacher(self.plan, task), teacher_block)])
                terms.append(hint_loss(features.index_select(1, index), target))
        return torch.stack(terms).mean() if terms else next(iter(adapted.values())).new_zeros(())

    # ----- fidelity and stage bookkeeping ------------------------------------------------------

    @torch.no_grad()
    def fidelity_sums(self, batches: Iterable[Mapping[str, Any]]) -> tuple[dict[str, float], int]:
        """Per task, the summed per-sample agreement with the teacher targets, and the sample
        count (sums add up across DDP workers)."""
        stage = self.current_stage()
        module = self.student() if stage is None else self.stage_module(stage)
        was_training = module.training
        module.eval()
        sums: dict[str, float] = {}
        count = 0
        for batch in batches:
            with self._autocast():
                logits = module(self.normalize(batch["image"]))
            for task, task_logits in logits.items():
                match = fidelity_matches(task_logits.float(), self._target(batch, task), self.plan_task(task).kind)
                sums[task] = sums.get(task, 0.0) + float(match.sum())
            count += len(batch["image"])
        module.train(was_training)
        return sums, count

    def fidelity(self, batches: Iterable[Mapping[str, Any]]) -> tuple[dict[str, float], int]:
        """Agreement of the current stage's outputs with the teacher targets, per task, in 0..1,
        and the number of samples it was measured on."""
        sums, count = self.fidelity_sums(batches)
        return {task: value / max(count, 1) for task, value in sums.items()}, count

    def keeps_best(self, stage: str) -> bool:
        """Whether the runner measures held-out fidelity after each of the stage's epochs and
        calls `keep_if_best` (the finetune stage, with `schedule.keep_best`)."""
        return stage == FINETUNE and self.job.schedule.keep_best

    def keep_if_best(self, fidelity: Mapping[str, float], epoch: int) -> None:
        """Remember the weights after `epoch` when their held-out fidelity (mean over tasks) is
        the best of the stage so far; `finish_stage` returns to them unless the stage ends better."""
        if self._best is None or statistics.fmean(fidelity.values()) > statistics.fmean(self._best[1].values()):
            state = {key: value.detach().clone() for key, value in self._parts.state_dict().items()}
            self._best = (epoch, {task: float(value) for task, value in fidelity.items()}, state)

    def _return_to_best(self, fidelity: Mapping[str, float]) -> tuple[Mapping[str, float], int | None]:
        """The kept weights and their fidelity when they beat `fidelity` (and the epoch they
        come from); else `fidelity` unchanged and None."""
        best, self._best = self._best, None
        if best is None or not fidelity or statistics.fmean(best[1].values()) <= statistics.fmean(fidelity.values()):
            return fidelity, None
        epoch, kept_fidelity, state = best
        self._parts.load_state_dict(state)
        return kept_fidelity, epoch

    def finish_stage(self, stage: str, fidelity: Mapping[str, float], samples: int = 0) -> dict[str, Any]:
        """Record the stage's fidelity (measured on `samples` rows: the more, the smaller a drop
        auto branch-out trusts), apply branch-out, and return a JSON-able record. A stage that
        kept its best weights (`keep_if_best`) ends on them when they beat its last epoch."""
        self._check_current(stage)
        fidelity, kept_epoch = self._return_to_best(fidelity)
        before = self.branch_points()
        self._fidelity[stage] = {task: float(value) for task, value in fidelity.items()}
        self._samples[stage] = int(samples)
        self._finished.append(stage)
        self._stage = self._module = self._optimizer = self._lr_scheduler = None
        after = self.branch_points()
        left = {t: p for t, p in after.items() if t not in before and p < self.num_blocks}
        record = {"stage": stage, "fidelity": self._fidelity[stage], "samples": int(samples), "left_trunk": left, "branch_points": after}
        return record if kept_epoch is None else {**record, "kept_epoch": kept_epoch}

    def progress(self) -> dict[str, Any]:
        return {
            "finished": list(self._finished),
            "fidelity": dict(self._fidelity),
            "samples": dict(self._samples),
            "branch_points": self.branch_points(),
        }

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu() for k, v in self._parts.state_dict().items()}

    def load(self, state: Mapping[str, Tensor], progress: Mapping[str, Any]) -> None:
        """Resume after the last finished stage recorded in `progress`."""
        unknown = [s for s in progress["finished"] if s not in self.stage_names()]
        if unknown:
            raise BadInputError(f"progress.finished: unknown stage(s) {unknown}; expected names from {self.stage_names()}")
        self._finished = list(progress["finished"])
        self._fidelity = {stage: dict(values) for stage, values in progress["fidelity"].items()}
        self._samples = dict(progress.get("samples", {}))
        self._stage = self._module = self._optimizer = self._lr_scheduler = None
        if "branches" in self._parts:
            del self._parts["branches"]
        if any(key.startswith("branches.") for key in state):
            self.student()  # builds the branches so their saved weights have somewhere to go
        load_state_strict(self._parts, state, "amalgamation state")
