"""CIFAR ResNets (depth 6n+2) of the CRD/RepDistiller lineage: resnet8 … resnet110, resnet8x4, resnet32x4.

Written from the architecture description of RepDistiller's ``models/resnet.py`` (itself after fb.resnet.torch), not
copied: a 3×3 ``conv1``/``bn1`` stem, three stages ``layer1..layer3`` of post-activation BasicBlocks (strides 1, 2, 2;
a 1×1-conv + BN ``downsample`` branch where the shape changes), global average pooling and a linear ``fc``. Module
names and parameter shapes match RepDistiller's state dicts key for key, so the released ``cifar_teachers.tar``
checkpoints (``{"model": state_dict}``) load with strict checking.

Differences that do not touch the state dict or the 32×32 outputs: ``forward`` returns the logits only (features are
read by forward hooks on ``layer1..layer3``), and the reference's fixed ``AvgPool2d(8)`` is written as global average
pooling, which is the same on the 8×8 map of a 32×32 input and also accepts 28×28 inputs (7×7 last map).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from wkd_lightning.models.init import init_weights
from wkd_lightning.models.registry import register_model


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is identity or ``downsample``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """Three-stage CIFAR ResNet with ``n = (depth − 2) / 6`` BasicBlocks per stage.

    Args:
        depth: total depth ``6n + 2`` (8, 14, 20, 32, 44, 56, 110, ...).
        num_filters: channels of the stem and of ``layer1``, ``layer2``, ``layer3`` (e.g. ``(16, 16, 32, 64)``).
        num_classes: outputs of ``fc``.
        in_channels: input channels of ``conv1`` (3 for CIFAR, 1 for grey images).
    """

    def __init__(self, depth: int, num_filters: Sequence[int], num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR BasicBlock ResNet needs depth 6n+2 with n >= 1, got {depth}")
        if len(num_filters) != 4:
            raise ValueError(f"num_filters needs 4 entries (stem, layer1, layer2, layer3), got {num_filters}")
        blocks = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(in_channels, num_filters[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(num_filters[1], blocks, stride=1)
        self.layer2 = self._make_layer(num_filters[2], blocks, stride=2)
        self.layer3 = self._make_layer(num_filters[3], blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_filters[3] * BasicBlock.expansion, num_classes)
        init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_planes = planes * BasicBlock.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = out_planes
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)
_NARROW_STAGES = {"layer1": 16, "layer2": 32, "layer3": 64}
_WIDE_STAGES = {"layer1": 64, "layer2": 128, "layer3": 256}


@register_model(input_size=(3, 32, 32), feature_channels=_NARROW_STAGES)
def resnet8(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-8 (1 block per stage, widths 16/16/32/64). Accepts 1×28×28 grey input with ``in_channels=1``."""
    return CifarResNet(8, _NARROW, num_classes, in_channels)


@register_model(input_size=(3, 32, 32), feature_channels=_NARROW_STAGES)
def resnet14(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-14 (2 blocks per stage, widths 16/16/32/64). Accepts 1×28×28 grey input."""
    return CifarResNet(14, _NARROW, num_classes, in_channels)


@register_model(input_size=(3, 32, 32), feature_channels=_NARROW_STAGES)
def resnet20(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-20 (3 blocks per stage, widths 16/16/32/64). Accepts 1×28×28 grey input."""
    return CifarResNet(20, _NARROW, num_classes, in_channels)


@register_model(input_size=(3, 32, 32), feature_channels=_NARROW_STAGES)
def resnet32(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-32 (5 blocks per stage, widths 16/16/32/64). Accepts 1×28×28 grey input."""
    return CifarResNet(32, _NARROW, num_classes, in_channels)


@register_model(input_size=(3, 32, 32), feature_channels=_NARROW_STAGES)
def resnet44(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-44 (7 blocks per stage, widths 16/16/32/64). Accepts 1×28×28 grey input."""
    return CifarResNet(44, _NARROW, num_classes, in_channels)


@register_model(input_size=(3, 32, 32), feature_channels=_NARROW_STAGES)
def resnet56(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-56 (9 blocks per stage, widths 16/16/32/64; a CRD teacher). Accepts 1×28×28 grey input."""
    return CifarResNet(56, _NARROW, num_classes, in_channels)


@register_model(input_size=(3, 32, 32), feature_channels=_NARROW_STAGES)
def resnet110(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-110 (18 blocks per stage, widths 16/16/32/64; a CRD teacher). Accepts 1×28×28 grey input."""
    return CifarResNet(110, _NARROW, num_classes, in_channels)


@register_model(input_size=(3, 32, 32), feature_channels=_WIDE_STAGES)
def resnet8x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-8 at 4× width (32/64/128/256): the WKD paper's CIFAR student. Accepts 1×28×28 grey input."""
    return CifarResNet(8, _WIDE, num_classes, in_channels)


@register_model(input_size=(3, 32, 32), feature_channels=_WIDE_STAGES)
def resnet32x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-32 at 4× width (32/64/128/256): the WKD paper's CIFAR teacher. Accepts 1×28×28 grey input."""
    return CifarResNet(32, _WIDE, num_classes, in_channels)
