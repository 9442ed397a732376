"""Staged backbones: stem + blocks B1..BL with known channels and output strides, at any width.

A timm-style registry maps architecture names to builders. Every builder reuses torchvision's
building blocks, so a width-1.0 backbone is the torchvision network minus its classifier.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from ray_amalgam.spec import BackboneSpec, BadInputError


class StagedBackbone(nn.Module):
    """`stem` then `blocks`; `channels[i]` and `strides[i]` describe the output of block i+1."""

    def __init__(
        self,
        spec: BackboneSpec,
        stem: nn.Module,
        blocks: Sequence[nn.Module],
        channels: Sequence[int],
        strides: Sequence[int],
    ) -> None:
        super().__init__()
        self.spec = spec
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.channels = tuple(channels)
        self.strides = tuple(strides)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def run_blocks(self, h: Tensor, start: int, stop: int) -> Tensor:
        """Apply blocks start+1..stop (1-based numbering: `run_blocks(h, 0, L)` runs them all)."""
        for block in self.blocks[start:stop]:
            h = block(h)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.run_blocks(self.stem(x), 0, self.num_blocks)


BackboneBuilder = Callable[[BackboneSpec], StagedBackbone]
_REGISTRY: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    def add(builder: BackboneBuilder) -> BackboneBuilder:
        _REGISTRY[name] = builder
        return builder

    return add


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(spec: BackboneSpec) -> StagedBackbone:
    """Build a registered backbone; unknown names raise BadInputError listing the known ones."""
    builder = _REGISTRY.get(spec.arch)
    if builder is None:
        raise BadInputError(f"unknown architecture '{spec.arch}'; expected one of {list_backbones()}")
    return builder(spec)


def scaled_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Channels at a width multiplier, rounded to a multiple of `divisor` (as MobileNet does)."""
    return max(divisor, int(channels * width + divisor / 2) // divisor * divisor)


def _resnet(spec: BackboneSpec, block: type[BasicBlock | Bottleneck], layers: Sequence[int]) -> StagedBackbone:
    stem_channels = scaled_channels(64, spec.width)
    if spec.small_input_stem:
        stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        stride = 1
    else:
        stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stride = 4
    inplanes = stem_channels
    blocks, channels, strides = [], [], []
    for index, (base_planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
        planes = scaled_channels(base_planes, spec.width)
        block_stride = 1 if index == 0 else 2
        out = planes * block.expansion
        downsample = None
        if block_stride != 1 or inplanes != out:
            downsample = nn.Sequential(conv1x1(inplanes, out, block_stride), nn.BatchNorm2d(out))
        units = [block(inplanes, planes, block_stride, downsample)]
        units += [block(out, planes) for _ in range(1, count)]
        inplanes = out
        stride *= block_stride
        blocks.append(nn.Sequential(*units))
        channels.append(out)
        strides.append(stride)
    backbone = StagedBackbone(spec, stem, blocks, channels, strides)
    _init_resnet(backbone)
    return backbone


def _init_resnet(module: nn.Module) -> None:
    # torchvision's ResNet initialisation, which its own constructor would have applied.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


@register_backbone("resnet18")
def resnet18(spec: BackboneSpec) -> StagedBackbone:
    return _resnet(spec, BasicBlock, (2, 2, 2, 2))


@register_backbone("resnet34")
def resnet34(spec: BackboneSpec) -> StagedBackbone:
    return _resnet(spec, BasicBlock, (3, 4, 6, 3))


@register_backbone("resnet50")
def resnet50(spec: BackboneSpec) -> StagedBackbone:
    return _resnet(spec, Bottleneck, (3, 4, 6, 3))


def _mobilenet_v3(spec: BackboneSpec, arch: str) -> StagedBackbone:
    settings, last_channel = _mobilenet_v3_conf(arch, width_mult=spec.width)
    if spec.small_input_stem:
        # Stride 1 in the stem and in the first downsampling unit keeps small images large
        # enough, and puts the blocks at the same strides (1, 2, 4, 8) as the ResNet small stem.
        first_down = next(i for i, s in enumerate(settings) if s.stride == 2)
        settings = list(settings)
        settings[first_down] = copy.copy(settings[first_down])
        settings[first_down].stride = 1
    # torchvision's MobileNetV3 BatchNorm has momentum 0.01 (TensorFlow's 0.99 decay, meant for
    # long ImageNet runs): in short runs its running statistics barely leave their initial
    # values, and a trained network evaluates to one class. 0.1 is PyTorch's default, as in ResNet.
    norm_layer = functools.partial(nn.BatchNorm2d, eps=0.001, momentum=0.1)
    features = MobileNetV3(settings, last_channel, norm_layer=norm_layer).features
    if spec.small_input_stem:
        features[0][0].stride = (1, 1)
    stem_stride = features[0][0].stride[0]
    groups: list[list[nn.Module]] = []
    channels: list[int] = []
    strides: list[int] = []
    stride = stem_stride
    for unit, setting in zip(features[1:-1], settings):
        stride *= setting.stride
        if not strides or strides[-1] != stride:
            groups.append([])
            strides.append(stride)
            channels.append(0)
        groups[-1].append(unit)
        channels[-1] = setting.out_channels
    # Keep four blocks: leading groups below the first full-resolution block join the stem.
    stem_units: list[nn.Module] = [features[0]]
    while len(groups) > 4:
        stem_units += groups.pop(0)
        strides.pop(0)
        channels.pop(0)
    groups[-1].append(features[-1])
    channels[-1] = features[-1].out_channels
    blocks = [nn.Sequential(*g) for g in groups]
    return StagedBackbone(spec, nn.Sequential(*stem_units), blocks, channels, strides)


@register_backbone("mobilenet_v3_small")
def mobilenet_v3_small(spec: BackboneSpec) -> StagedBackbone:
    return _mobilenet_v3(spec, "mobilenet_v3_small")


@register_backbone("mobilenet_v3_large")
def mobilenet_v3_large(spec: BackboneSpec) -> StagedBackbone:
    return _mobilenet_v3(spec, "mobilenet_v3_large")


__all__ = [
    "StagedBackbone",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "scaled_channels",
]
