"""CIFAR ResNet-50 (bottleneck ResNet with a 3×3 stem, four stages) of the CRD/RepDistiller lineage: ``ResNet50``.

Written from the architecture description of RepDistiller's ``models/resnetv2.py`` (after He et al., 2016), not
copied. Unlike the ImageNet ResNet, the stem is a single 3×3 stride-1 ``conv1``/``bn1`` with no max pool, the
projection branch of a block is called ``shortcut`` (``nn.Sequential`` of 1×1 conv and BN; empty when the shape is
kept) and the classifier is ``linear``. Stages ``layer1..layer4`` (64/128/256/512 planes, expansion 4, strides
1/2/2/2) with 3/4/6/3 blocks. Module names and parameter shapes match RepDistiller's state dicts key for key.

A 32×32 input gives 32, 16, 8 and 4-pixel stage maps; ``layer4`` (2048 channels, post-ReLU) is the last stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from wkd_lightning.models.init import init_weights
from wkd_lightning.models.registry import register_model


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
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarBottleneckResNet(nn.Module):
    """Four-stage bottleneck ResNet for 32×32 images.

    Args:
        num_blocks: bottleneck blocks in ``layer1..layer4``.
        num_classes: outputs of ``linear``.
        in_channels: input channels of ``conv1`` (3 for CIFAR, 1 for grey images).
        zero_init_residual: start every block's last BN at zero scale (identity blocks at initialisation).
    """

    def __init__(
        self,
        num_blocks: Sequence[int] = (3, 4, 6, 3),
        num_classes: int = 100,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            self._make_layer(planes, blocks, stride)
            for planes, blocks, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2))
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * Bottleneck.expansion, num_classes)
        init_weights(self)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            layers.append(Bottleneck(self.in_planes, planes, stride if i == 0 else 1))
            self.in_planes = planes * Bottleneck.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.avgpool(out).flatten(1))


@register_model(input_size=(3, 32, 32), feature_channels={"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048})
def ResNet50(num_classes: int = 100, in_channels: int = 3) -> CifarBottleneckResNet:
    """CIFAR ResNet-50 (3/4/6/3 bottlenecks, 3×3 stem): a CRD teacher. Accepts 1×28×28 grey input (4×4 last map)."""
    return CifarBottleneckResNet((3, 4, 6, 3), num_classes, in_channels)
