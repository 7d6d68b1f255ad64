"""CIFAR ShuffleNet V2 (1× size: 116/232/464 channels, 1024-channel head) of the CRD/RepDistiller lineage.

Written from the architecture description of RepDistiller's ``models/ShuffleNetv2.py`` (after Ma et al., 2018), not
copied. A 1×1 ``conv1``/``bn1`` stem to 24 channels (no stride, no max pool), three stages ``layer1..layer3`` that
each start with a ``DownBlock`` (two stride-2 branches, concatenated and shuffled) followed by ``BasicBlock`` units
(split the channels in half, transform one half, concatenate, shuffle), then a 1×1 ``conv2``/``bn2`` head with ReLU,
global average pooling and ``linear``. Units per stage: 3, 7, 3. Module names and parameter shapes match
RepDistiller's state dicts key for key.

Kept from the reference: each stage's ``nn.Sequential`` holds its ``DownBlock`` at index 0 and the basic units at
1..n, and the depthwise convolutions' BNs are followed by no ReLU. Stage outputs (hook paths ``layer1..layer3``) are
the shuffled concatenations; ``layer3`` is the last stage of the reference's feature list (the head's
``conv2``/``bn2``/ReLU come after it). The reference's ``avg_pool2d(·, 4)`` is written as global average pooling
(equal on the 4×4 map of a 32×32 input).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wkd_lightning.models.cifar.shufflenetv1 import ShuffleBlock
from wkd_lightning.models.registry import register_model


class SplitBlock(nn.Module):
    """Split the channels at ``ratio``: returns (first part, rest)."""

    def __init__(self, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        cut = int(x.shape[1] * self.ratio)
        return x[:, :cut], x[:, cut:]


class BasicBlock(nn.Module):
    """Keep half the channels, send the other half through 1×1 → depthwise 3×3 → 1×1, concatenate, shuffle."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split = SplitBlock(split_ratio)
        half = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.shuffle = ShuffleBlock(2)

    def forward(self, x: Tensor) -> Tensor:
        kept, transformed = self.split(x)
        out = F.relu(self.bn1(self.conv1(transformed)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([kept, out], 1))


class DownBlock(nn.Module):
    """Halve the resolution with two branches of ``out_channels / 2`` channels each, concatenate, shuffle.

    Left: depthwise 3×3 stride 2 (``conv1``/``bn1``, no ReLU) → 1×1 (``conv2``/``bn2``) → ReLU.
    Right: 1×1 (``conv3``/``bn3``) → ReLU → depthwise 3×3 stride 2 (``conv4``/``bn4``) → 1×1 (``conv5``/``bn5``) → ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ShuffleBlock(2)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    """ShuffleNet V2 for 32×32 images.

    Args:
        out_channels: widths of ``layer1..layer3`` and of the ``conv2`` head.
        num_blocks: basic units per stage (after each stage's ``DownBlock``).
        num_classes: outputs of ``linear``.
        in_channels: input channels of the stem (3 for CIFAR, 1 for grey images).
    """

    def __init__(
        self,
        out_channels: Sequence[int] = (116, 232, 464, 1024),
        num_blocks: Sequence[int] = (3, 7, 3),
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1, self.layer2, self.layer3 = (
            self._make_layer(width, blocks) for width, blocks in zip(out_channels[:3], num_blocks)
        )
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, width: int, blocks: int) -> nn.Sequential:
        units = [DownBlock(self.in_channels, width)] + [BasicBlock(width) for _ in range(blocks)]
        self.in_channels = width
        return nn.Sequential(*units)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(self.avgpool(out).flatten(1))


@register_model(input_size=(3, 32, 32), feature_channels={"layer1": 116, "layer2": 232, "layer3": 464})
def ShuffleV2(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV2:
    """ShuffleNet V2 1× (116/232/464, head 1024): a CRD student. Accepts 1×28×28 grey input with ``in_channels=1``."""
    return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes, in_channels)
