"""Staged backbones, teachers and TargetNet: block boundaries, shapes and widths per architecture."""

import pytest
import torch

from ray_amalgam.models import (
    MultiTaskNet,
    TaskBranch,
    build_targetnet,
    build_teacher,
    create_backbone,
    inference_copy,
    list_backbones,
    load_state_strict,
    matching_block,
)
from ray_amalgam.spec import (
    BackboneSpec,
    BadInputError,
    BranchSpec,
    StudentMeta,
    TaskSpec,
    TeacherMeta,
)

SHAPE = TaskSpec(name="shape", kind="multiclass", classes=("circle", "square", "triangle"))
ATTRS = TaskSpec(name="attrs", kind="multilabel", labels=("border", "rotated"))
ARCHS = ["resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large"]


def test_registry_lists_resnets_and_another_family():
    assert set(ARCHS) <= set(list_backbones())
    with pytest.raises(BadInputError, match="unknown architecture 'vgg11'; expected one of"):
        create_backbone(BackboneSpec(arch="vgg11"))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("small", [False, True])
def test_block_outputs_match_declared_channels_and_strides(arch, small):
    backbone = create_backbone(BackboneSpec(arch=arch, width=0.25, small_input_stem=small))
    assert backbone.num_blocks == 4
    h = backbone.stem(torch.randn(2, 3, 32, 32))
    for block, channels, stride in zip(backbone.blocks, backbone.channels, backbone.strides):
        h = block(h)
        assert h.shape == (2, channels, 32 // stride, 32 // stride)
    assert backbone.strides == ((1, 2, 4, 8) if small else (4, 8, 16, 32))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v3_small"])
def test_width_scales_channels_and_keeps_structure(arch):
    narrow = create_backbone(BackboneSpec(arch=arch, width=0.25))
    full = create_backbone(BackboneSpec(arch=arch, width=1.0))
    assert narrow.strides == full.strides
    assert all(n < f for n, f in zip(narrow.channels, full.channels))
    assert sum(p.numel() for p in narrow.parameters()) * 4 < sum(p.numel() for p in full.parameters())


def test_full_width_resnet18_matches_torchvision_parameter_count():
    from torchvision.models import resnet18

    ours = create_backbone(BackboneSpec(arch="resnet18", width=1.0))
    reference = resnet18()
    expected = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    assert sum(p.numel() for p in ours.parameters()) == expected


def test_teacher_heads_and_partial_forward_agree():
    meta = TeacherMeta(backbone=BackboneSpec(arch="resnet18", width=0.25), tasks=(SHAPE, ATTRS), input_size=32)
    teacher = build_teacher(meta).eval()
    x = torch.randn(3, 3, 32, 32)
    full = teacher(x)
    assert full["shape"].shape == (3, 3) and full["attrs"].shape == (3, 2)
    logits, features = teacher.forward_with_features(x, ["attrs"])
    assert list(logits) == ["attrs"] and len(features) == 4
    resumed = teacher.heads_from(features[1], 2, ["shape"])
    torch.testing.assert_close(resumed["shape"], full["shape"])


@pytest.mark.parametrize("arch", list_backbones())
@pytest.mark.parametrize("small", [False, True])
def test_an_inference_copy_folds_every_batchnorm_and_answers_as_the_teacher(arch, small):
    meta = TeacherMeta(backbone=BackboneSpec(arch=arch, width=0.25, small_input_stem=small), tasks=(SHAPE, ATTRS), input_size=32)
    torch.manual_seed(0)
    teacher = build_teacher(meta)
    for norm in teacher.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):  # trained statistics, not the identity ones
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.data.uniform_(0.5, 1.5)
            norm.bias.data.uniform_(-0.2, 0.2)
    teacher.eval()
    copy = inference_copy(teacher)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copy.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())  # the teacher is untouched
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected, expected_features = teacher.forward_with_features(x)
        got, got_features = copy.forward_with_features(x.contiguous(memory_format=torch.channels_last))
    # Float rounding only: deep blocks of random weights reach the hundreds, so the bound scales.
    pairs = [(got[t], expected[t], t) for t in expected]
    pairs += [(g, e, f"block {i}") for i, (g, e) in enumerate(zip(got_features, expected_features), start=1)]
    for g, e, where in pairs:
        torch.testing.assert_close(g, e, rtol=0, atol=1e-5 * e.abs().max().item(), msg=where)


def test_strict_loading_refuses_mismatched_weights():
    meta = TeacherMeta(backbone=BackboneSpec(arch="resnet18", width=0.25), tasks=(SHAPE,), input_size=32)
    wider = build_teacher(meta.model_copy(update={"backbone": BackboneSpec(arch="resnet18", width=0.5)}))
    with pytest.raises(BadInputError, match="ckpt: weight 'backbone.stem.0.weight' has shape"):
        load_state_strict(build_teacher(meta), wider.state_dict(), "ckpt")
    other_tasks = build_teacher(meta.model_copy(update={"tasks": (ATTRS,)}))
    with pytest.raises(BadInputError, match="ckpt: weights do not match the architecture"):
        load_state_strict(build_teacher(meta), other_tasks.state_dict(), "ckpt")


@pytest.mark.parametrize("student_arch", ["resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("teacher_arch", ["resnet50", "mobilenet_v3_small"])
def test_branches_bridge_architectures_at_matching_strides(student_arch, teacher_arch):
    trunk = create_backbone(BackboneSpec(arch=student_arch, width=0.25))
    teacher = MultiTaskNet(create_backbone(BackboneSpec(arch=teacher_arch, width=0.25)), [SHAPE])
    x = torch.randn(2, 3, 32, 32)
    h = trunk.stem(x)
    for block_number in range(1, 5):
        h = trunk.blocks[block_number - 1](h)
        teacher_block = matching_block(trunk, block_number, teacher.backbone)
        assert teacher_block == block_number
        branch = TaskBranch.from_teacher(trunk.channels[block_number - 1], teacher, "shape", teacher_block)
        assert branch(h).shape == (2, 3)


def test_no_matching_stride_gives_none():
    trunk = create_backbone(BackboneSpec(arch="resnet18", width=0.25, small_input_stem=True))
    teacher = create_backbone(BackboneSpec(arch="resnet18", width=0.25))
    assert matching_block(trunk, 1, teacher) is None
    assert matching_block(trunk, 3, teacher) == 1
    assert matching_block(trunk, 4, teacher) == 2


def test_targetnet_rebuilds_from_metadata_and_branches_where_told():
    teacher_backbone = BackboneSpec(arch="resnet18", width=0.25)
    meta = StudentMeta(
        backbone=BackboneSpec(arch="resnet18", width=0.25),
        branches=(
            BranchSpec(task=SHAPE, teacher="a", teacher_backbone=teacher_backbone, branch_point=2, teacher_block=2),
            BranchSpec(task=ATTRS, teacher="b", teacher_backbone=teacher_backbone, branch_point=4, teacher_block=4),
        ),
        input_size=32,
    )
    net = build_targetnet(meta)
    out = net(torch.randn(2, 3, 32, 32))
    assert out["shape"].shape == (2, 3) and out["attrs"].shape == (2, 2)
    assert net.branch_points == {"shape": 2, "attrs": 4} and net.depth == 4
    assert len(net.branches["shape"].tail) == 2 and len(net.branches["attrs"].tail) == 0
