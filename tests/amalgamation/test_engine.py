import itertools

import numpy as np
import pytest
import torch

from ray_amalgam.amalgamation import (
    Amalgamator,
    TeacherRunner,
    hint_key,
    logits_key,
    make_plan,
    rank_hint_channels,
    teacher_outputs,
)
from ray_amalgam.io.images import to_tensor
from ray_amalgam.models import TaskBranch, build_teacher
from ray_amalgam.spec import (
    BackboneSpec,
    BadInputError,
    DataSpec,
    HintSpec,
    JobSpec,
    ScheduleSpec,
    StudentSpec,
    TaskSpec,
    TeacherMeta,
    TeacherRef,
)

SIZE = 32
SHAPE = TaskSpec(name="shape", kind="multiclass", classes=("a", "b", "c"))
TAGS = TaskSpec(name="tags", kind="multilabel", labels=("x", "y"))
ARCHS = ("resnet18", "resnet50", "mobilenet_v3_small")


def pool(specs: dict[str, tuple[BackboneSpec, tuple[TaskSpec, ...]]], seed: int = 0):
    torch.manual_seed(seed)
    metas = {name: TeacherMeta(backbone=b, tasks=t, input_size=SIZE) for name, (b, t) in specs.items()}
    return metas, {name: build_teacher(meta).eval() for name, meta in metas.items()}


def job(metas, tasks, **overrides) -> JobSpec:
    fields = dict(
        teachers=tuple(TeacherRef(name=n, checkpoint=f"/none/{n}") for n in metas),
        tasks=tasks,
        data=DataSpec(train="/none/train", eval="/none/eval"),
        student=StudentSpec(width=0.25),
        schedule=ScheduleSpec(stage_epochs=1, finetune_epochs=1, batch_size=4, lr=1e-2),
        output="/none/out",
    )
    fields.update(overrides)
    return JobSpec(**fields)


def images(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def batch_for(plan, teachers, raw: np.ndarray) -> dict:
    batch = {"image": raw}
    for name, teacher in teachers.items():
        meta = plan.teachers[name]
        batch.update(teacher_outputs(teacher, name, to_tensor(raw, meta.mean, meta.std), plan))
    return batch


@pytest.mark.parametrize("student_arch,teacher_arch", list(itertools.product(ARCHS, ARCHS)))
def test_adapter_and_tail_shapes_for_each_architecture_pair(student_arch, teacher_arch):
    metas, teachers = pool({"t": (BackboneSpec(arch=teacher_arch, width=0.25), (SHAPE, TAGS))})
    spec = job(metas, ("shape", "tags"), student=StudentSpec(arch=student_arch, width=0.25))
    plan = make_plan(spec, metas)
    engine = Amalgamator(plan, teachers, spec, torch.device("cpu"))
    teacher = teachers["t"].backbone
    x = engine.normalize(images(2))
    for block in range(1, engine.num_blocks + 1):
        stage = f"block{block}"
        logits, adapted = engine.stage_module(stage)(x, with_adapted=True)
        matched = engine.blocks["shape"][block - 1]
        side = SIZE // teacher.strides[matched - 1]
        assert teacher.strides[matched - 1] == engine.trunk.strides[block - 1]
        assert adapted["shape"].shape == (2, teacher.channels[matched - 1], side, side)
        assert logits["shape"].shape == (2, 3) and logits["tags"].shape == (2, 2)
        engine.finish_stage(stage, {})
    assert {k: v.shape for k, v in engine.student()(x).items()} == {"shape": (2, 3), "tags": (2, 2)}


def test_a_trunk_block_without_a_teacher_block_at_its_stride_is_refused():
    metas, teachers = pool({
        "small": (BackboneSpec(arch="resnet18", width=0.25, small_input_stem=True), (SHAPE,)),
        "standard": (BackboneSpec(arch="resnet18", width=0.25), (TAGS,)),
    })
    spec = job(metas, ("shape", "tags"))
    with pytest.raises(BadInputError, match="trunk block 1 .* no block at the same stride in teacher 'standard'"):
        Amalgamator(make_plan(spec, metas), teachers, spec, torch.device("cpu"))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_teachers_and_earlier_trunk_blocks_stay_frozen_through_stages():
    metas, teachers = pool({
        "a": (BackboneSpec(arch="resnet18", width=0.25), (SHAPE,)),
        "b": (BackboneSpec(arch="mobilenet_v3_small", width=0.25), (TAGS,)),
    })
    spec = job(metas, ("shape", "tags"))
    plan = make_plan(spec, metas)
    before = {name: snapshot(t) for name, t in teachers.items()}
    engine = Amalgamator(plan, teachers, spec, torch.device("cpu"))
    batch = batch_for(plan, teachers, images(8))
    engine.train_step(batch)
    engine.finish_stage("block1", *engine.fidelity([batch]))
    block1 = snapshot(engine.trunk.blocks[0])
    block2 = snapshot(engine.trunk.blocks[1])
    for _ in range(2):
        losses = engine.train_step(batch)
    assert set(losses) == {"loss", "loss/shape", "loss/tags"}
    for name, teacher in teachers.items():
        assert not teacher.training
        assert all(not p.requires_grad for p in teacher.parameters())
        for key, value in teacher.state_dict().items():  # includes BN running statistics
            assert torch.equal(value, before[name][key]), f"{name}.{key} changed"
    assert all(torch.equal(v, block1[k]) for k, v in engine.trunk.blocks[0].state_dict().items())
    assert any(not torch.equal(v, block2[k]) for k, v in engine.trunk.blocks[1].state_dict().items())


def test_resume_after_a_finished_stage_restores_state_and_progress():
    metas, teachers = pool({"a": (BackboneSpec(arch="resnet18", width=0.25), (SHAPE, TAGS))})
    spec = job(metas, ("shape", "tags"), student=StudentSpec(width=0.25, branch_out={"tags": 2}))
    plan = make_plan(spec, metas)
    engine = Amalgamator(plan, teachers, spec, torch.device("cpu"))
    batch = batch_for(plan, teachers, images(4))
    for stage in engine.stage_names()[:-1]:
        if not engine.skips(stage):
            engine.train_step(batch)
        record = engine.finish_stage(stage, *(engine.fidelity([batch]) if not engine.skips(stage) else ({}, 0)))
    assert record["branch_points"] == {"shape": 4, "tags": 2}
    assert engine.tasks_on_trunk(3) == ["shape"]
    engine.train_step(batch)  # finetune: builds the student with owned teacher-tail copies
    engine.finish_stage("finetune", *engine.fidelity([batch]))
    resumed = Amalgamator(plan, teachers, spec, torch.device("cpu"))
    resumed.load(engine.state_dict(), engine.progress())
    assert resumed.current_stage() is None
    assert resumed.progress() == engine.progress()
    x = engine.normalize(batch["image"])
    expected, got = engine.student().eval()(x), resumed.student().eval()(x)
    assert all(torch.allclose(expected[t], got[t]) for t in expected)


def test_hint_channels_are_ranked_and_used_in_the_loss():
    metas, teachers = pool({"a": (BackboneSpec(arch="resnet18", width=0.25), (SHAPE,))})
    spec = job(metas, ("shape",), hint=HintSpec(enabled=True, keep_fraction=0.25))
    plan = make_plan(spec, metas)
    channels = rank_hint_channels(plan, teachers, images(8), keep_fraction=0.25)
    widths = teachers["a"].backbone.channels
    assert {b: len(c) for b, c in channels["a"].items()} == {b: widths[b - 1] // 4 for b in (1, 2, 3, 4)}
    assert all(list(c) == sorted(set(c)) for c in channels["a"].values())
    plan = plan.with_hint_channels(channels)
    batch = batch_for(plan, teachers, images(4))
    assert batch[hint_key("a", 2)].shape == (4, widths[1] // 4, 4, 4)
    assert batch[hint_key("a", 2)].dtype == torch.float16
    engine = Amalgamator(plan, teachers, spec, torch.device("cpu"))
    losses = engine.train_step(batch)
    assert losses["loss/hint"] > 0
    assert losses["loss"] == pytest.approx(losses["loss/shape"] + losses["loss/hint"], rel=1e-4)


def with_trained_batchnorms(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm statistics and affine weights away from a fresh net's identity ones, so that a
    folded BatchNorm that was dropped or misapplied shows in the outputs."""
    for norm in model.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.running_var.uniform_(0.5, 2.0)
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.weight.data.uniform_(0.5, 1.5)
            norm.bias.data.uniform_(-0.2, 0.2)
    return model


def test_a_block_stage_learns_through_the_teachers_tail_as_the_teacher_computes_it():
    """Block stages run the frozen teacher tails from folded copies (no BatchNorm left): the
    logits, and the gradients that reach the trunk block and the adapter, are what the teacher's
    own tail gives, to float rounding. The student's branches still copy the teacher's tails,
    BatchNorms included, since the finetune stage trains them."""
    metas, teachers = pool({"a": (BackboneSpec(arch="resnet18", width=0.25), (SHAPE, TAGS))})
    teacher = with_trained_batchnorms(teachers["a"])
    spec = job(metas, ("shape", "tags"), student=StudentSpec(width=0.25, branch_out={"tags": 2}))
    engine = Amalgamator(make_plan(spec, metas), teachers, spec, torch.device("cpu"))
    stage = engine.stage_module("block1")
    adapter = stage.branches["shape"].adapter
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in stage.branches["shape"].tail.modules())
    as_teacher = TaskBranch(adapter, teacher.backbone.blocks[engine.blocks["shape"][0] :], teacher.heads["shape"])
    x = engine.normalize(images(4))
    weights = torch.randn(4, len(SHAPE.classes))
    trained = [*engine.trunk.blocks[0].parameters(), *adapter.parameters()]

    def logits_and_grads(forward):
        for p in trained:
            p.grad = None
        logits = forward(x)
        (logits * weights).sum().backward()
        return [logits.detach()] + [p.grad.clone() for p in trained]

    got = logits_and_grads(lambda x: stage(x)["shape"])
    expected = logits_and_grads(lambda x: as_teacher(engine.trunk.run_blocks(engine.trunk.stem(x), 0, 1)))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-4 * float(e.abs().max()))
    for stage_name in engine.stage_names()[:-1]:
        engine.finish_stage(stage_name, {})
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in engine.student().branches["tags"].tail.modules())


def test_a_teacher_runner_answers_as_its_teacher_does_hints_included():
    """The runner answers from a folded, channels_last copy: the same logits and kept hint
    channels as the teacher itself (to float rounding), in NCHW order, and the teacher keeps
    its BatchNorms for the student's branch tails."""
    metas, teachers = pool({"a": (BackboneSpec(arch="resnet18", width=0.25), (SHAPE, TAGS))})
    with_trained_batchnorms(teachers["a"])
    spec = job(metas, ("shape", "tags"), hint=HintSpec(enabled=True, keep_fraction=0.25))
    plan = make_plan(spec, metas)
    plan = plan.with_hint_channels(rank_hint_channels(plan, teachers, images(8), keep_fraction=0.25))
    raw = images(6, seed=3)
    with torch.no_grad():
        expected = {k: v.numpy() for k, v in batch_for(plan, teachers, raw).items() if k != "image"}
    got = TeacherRunner("a", teachers["a"], plan, torch.device("cpu")).outputs(raw)
    assert set(got) == set(expected) and hint_key("a", 3) in got
    for key, value in got.items():
        assert value.dtype == expected[key].dtype and value.flags.c_contiguous, key
        np.testing.assert_allclose(value.astype(np.float32), expected[key].astype(np.float32), rtol=2e-3, atol=2e-3, err_msg=key)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in teachers["a"].modules())


def test_both_teachers_of_a_shared_task_give_per_sample_targets():
    metas, teachers = pool({
        "a": (BackboneSpec(arch="resnet18", width=0.25), (SHAPE,)),
        "b": (BackboneSpec(arch="resnet18", width=0.25), (SHAPE,)),
    })
    spec = job(metas, ("shape",), task_teachers={"shape": "both"})
    plan = make_plan(spec, metas)
    batch = batch_for(plan, teachers, images(4))
    assert {logits_key("a", "shape"), logits_key("b", "shape")} <= set(batch)
    engine = Amalgamator(plan, teachers, spec, torch.device("cpu"))
    assert engine.train_step(batch)["loss/shape"] >= 0
    del batch[logits_key("b", "shape")]
    with pytest.raises(BadInputError, match="logits/b/shape"):
        engine.train_step(batch)


def test_the_ranking_term_adds_to_multilabel_tasks_only():
    metas, teachers = pool({"a": (BackboneSpec(arch="resnet18", width=0.25), (SHAPE, TAGS))})
    losses = {}
    for weight in (0.0, 2.0):
        spec = job(metas, ("shape", "tags"), schedule=ScheduleSpec(stage_epochs=1, finetune_epochs=1, batch_size=4, lr=1e-2, multilabel_rank_weight=weight))
        plan = make_plan(spec, metas)
        losses[weight] = Amalgamator(plan, teachers, spec, torch.device("cpu")).train_step(batch_for(plan, teachers, images(8)))
    assert losses[2.0]["loss/shape"] == pytest.approx(losses[0.0]["loss/shape"])
    assert losses[2.0]["loss/tags"] > losses[0.0]["loss/tags"] + 1e-4


def finetune_engine(keep_best: bool):
    metas, teachers = pool({"a": (BackboneSpec(arch="resnet18", width=0.25), (SHAPE, TAGS))})
    spec = job(metas, ("shape", "tags"), schedule=ScheduleSpec(stage_epochs=1, finetune_epochs=3, batch_size=4, lr=1e-2, keep_best=keep_best))
    plan = make_plan(spec, metas)
    engine = Amalgamator(plan, teachers, spec, torch.device("cpu"))
    batch = batch_for(plan, teachers, images(8))
    for stage in engine.stage_names()[:-1]:
        engine.train_step(batch)
        engine.finish_stage(stage, *engine.fidelity([batch]))
    return engine, batch


@pytest.mark.parametrize("keep_best", [True, False])
def test_finetune_ends_on_its_best_epoch_when_keep_best(keep_best):
    engine, batch = finetune_engine(keep_best)
    assert engine.keeps_best("finetune") is keep_best and not engine.keeps_best("block1")
    x = engine.normalize(batch["image"])
    engine.train_step(batch)
    engine.keep_if_best({"shape": 0.9, "tags": 0.8}, epoch=1)
    after_first = {k: v.detach().clone() for k, v in engine.student().eval()(x).items()}
    engine.train_step(batch)
    engine.keep_if_best({"shape": 0.5, "tags": 0.5}, epoch=2)  # worse: not kept
    engine.train_step(batch)
    record = engine.finish_stage("finetune", {"shape": 0.7, "tags": 0.7}, 8)
    # The runners call keep_if_best only when keeps_best; called anyway, it is always honoured.
    assert record["kept_epoch"] == 1 and record["fidelity"] == {"shape": 0.9, "tags": 0.8}
    assert engine.progress()["fidelity"]["finetune"] == {"shape": 0.9, "tags": 0.8}
    got = engine.student().eval()(x)
    assert all(torch.allclose(after_first[t], got[t]) for t in got)


def test_finetune_keeps_its_last_epoch_when_no_earlier_one_beats_it():
    engine, batch = finetune_engine(True)
    engine.train_step(batch)
    engine.keep_if_best({"shape": 0.6, "tags": 0.6}, epoch=1)
    engine.train_step(batch)
    x = engine.normalize(batch["image"])
    last = {k: v.detach().clone() for k, v in engine.student().eval()(x).items()}
    record = engine.finish_stage("finetune", {"shape": 0.6, "tags": 0.6}, 8)  # a tie: the last stays
    assert "kept_epoch" not in record
    got = engine.student().eval()(x)
    assert all(torch.allclose(last[t], got[t]) for t in got)


def test_auto_branch_out_fires_on_a_real_drop_and_shapes_the_student():
    """A task whose fidelity through its teacher's tail falls by more than the tolerance plus the
    measurement noise leaves the trunk after the last block it did well on; the student built
    afterwards gives it its own branch from there, and the other task stays on the trunk."""
    metas, teachers = pool({"a": (BackboneSpec(arch="resnet18", width=0.25), (SHAPE, TAGS))})
    spec = job(metas, ("shape", "tags"), student=StudentSpec(width=0.25, branch_tolerance=0.05))
    engine = Amalgamator(make_plan(spec, metas), teachers, spec, torch.device("cpu"))
    history = [{"shape": 0.90, "tags": 0.92}, {"shape": 0.91, "tags": 0.90}, {"shape": 0.90, "tags": 0.70}]
    records = [engine.finish_stage(f"block{i}", fidelity, 2000) for i, fidelity in enumerate(history, start=1)]
    assert [r["left_trunk"] for r in records] == [{}, {}, {"tags": 2}]
    assert engine.tasks_on_trunk(4) == ["shape"] and engine.skips("block4") is False
    engine.finish_stage("block4", {"shape": 0.9}, 2000)
    assert engine.branch_points() == {"shape": 4, "tags": 2}
    meta = engine.student_meta({"a": "0" * 64})
    assert {b.task.name: (b.branch_point, b.teacher_block) for b in meta.branches} == {"shape": (4, 4), "tags": (2, 2)}
    # The same drop measured on a few rows is within noise: no branch-out.
    noisy = Amalgamator(make_plan(spec, metas), teachers, spec, torch.device("cpu"))
    for i, fidelity in enumerate(history, start=1):
        noisy.finish_stage(f"block{i}", fidelity, 20)
    assert noisy.tasks_on_trunk(4) == ["shape", "tags"]
