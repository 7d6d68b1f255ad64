"""CIFAR ResNets with a 3×3 stem and four stages (CRD/RepDistiller's ``resnetv2``, also in mdistiller):
``ResNet18`` (basic blocks) and ``ResNet50`` (bottlenecks).

Written from the architecture description of RepDistiller's ``models/resnetv2.py`` (after He et al., 2016), not
copied. Unlike the ImageNet ResNet, the stem is a single 3×3 stride-1 ``conv1``/``bn1`` with no max pool, the
projection branch of a block is called ``shortcut`` (``nn.Sequential`` of 1×1 conv and BN; empty when the shape is
kept) and the classifier is ``linear``. Stages ``layer1..layer4`` have 64/128/256/512 planes and strides 1/2/2/2:
``ResNet18`` 2/2/2/2 basic blocks (two 3×3 convs, expansion 1), ``ResNet50`` 3/4/6/3 bottlenecks (expansion 4). Module
names and parameter shapes match RepDistiller's and mdistiller's state dicts key for key.

A 32×32 input gives 32, 16, 8 and 4-pixel stage maps; ``layer4`` (post-ReLU; 512 channels for ``ResNet18``, 2048 for
``ResNet50``) is the last stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from wkd_lightning.models.init import init_weights
from wkd_lightning.models.registry import register_model


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity (empty) when the shape is kept, else 1×1 conv (carrying the stride) + BN."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """3×3 (carries the stride) → BN → ReLU → 3×3 → BN, plus the shortcut, ReLU after the sum."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 → 3×3 (carries the stride) → 1×1 (×4 channels), each with BN, ReLU after the residual sum."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNetV2(nn.Module):
    """Four-stage ResNet for 32×32 images with a 3×3 stem.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        num_blocks: blocks in ``layer1..layer4``.
        num_classes: outputs of ``linear``.
        in_channels: input channels of ``conv1`` (3 for CIFAR, 1 for grey images).
        zero_init_residual: start every block's last BN at zero scale (identity blocks at initialisation).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        num_classes: int = 100,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            self._make_layer(block, planes, blocks, stride)
            for planes, blocks, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2))
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, block):
                    nn.init.zeros_(module.last_bn.weight)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            layers.append(block(self.in_planes, planes, stride if i == 0 else 1))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.avgpool(out).flatten(1))


class CifarBottleneckResNet(CifarResNetV2):
    """:class:`CifarResNetV2` of bottlenecks (``num_blocks`` per stage; 3/4/6/3 is ResNet-50)."""

    def __init__(
        self,
        num_blocks: Sequence[int] = (3, 4, 6, 3),
        num_classes: int = 100,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__(Bottleneck, num_blocks, num_classes, in_channels, zero_init_residual)


@register_model(input_size=(3, 32, 32), feature_channels={"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048})
def ResNet50(num_classes: int = 100, in_channels: int = 3) -> CifarBottleneckResNet:
    """CIFAR ResNet-50 (3/4/6/3 bottlenecks, 3×3 stem): a CRD teacher. Accepts 1×28×28 grey input (4×4 last map)."""
    return CifarBottleneckResNet((3, 4, 6, 3), num_classes, in_channels)


@register_model(input_size=(3, 32, 32), feature_channels={"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512})
def ResNet18(num_classes: int = 100, in_channels: int = 3) -> CifarResNetV2:
    """CIFAR ResNet-18 (2/2/2/2 basic blocks, 3×3 stem), mdistiller's and CRD's ``ResNet18``. Accepts 1×28×28 input."""
    return CifarResNetV2(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)
