"""CIFAR ShuffleNet V1 (groups 3, stage widths 240/480/960) of the CRD/RepDistiller lineage: ``ShuffleV1``.

Written from the architecture description of RepDistiller's ``models/ShuffleNetv1.py`` (after Zhang et al., 2018),
not copied. A 1×1 ``conv1``/``bn1`` stem to 24 channels (no stride, no max pool, for 32×32 inputs), three stages
``layer1..layer3`` of bottleneck units and a ``linear`` classifier after global average pooling. Every stage begins
with a stride-2 unit whose residual branch is a 3×3 average pool concatenated to the unit's output (so the unit
itself produces ``width − in_channels`` channels); the other units add an identity residual. Inside a unit: grouped
1×1 ``conv1`` (1 group when reading the 24-channel stem) → BN → ReLU → channel shuffle → depthwise 3×3 ``conv2`` → BN
→ ReLU → grouped 1×1 ``conv3`` → BN, then residual and ReLU. Module names and parameter shapes match RepDistiller's
state dicts key for key.

Stage outputs (hook paths ``layer1..layer3``) are post-ReLU; a 32×32 input gives 16×16, 8×8 and 4×4 maps, a 28×28
input 14×14, 7×7 and 4×4. The reference's ``avg_pool2d(·, 4)`` is written as global average pooling (equal on 4×4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wkd_lightning.models.registry import register_model


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` equal groups: channel ``g·(C/groups) + i`` moves to ``i·groups + g``."""
    batch, channels, height, width = x.shape
    return x.view(batch, groups, channels // groups, height, width).transpose(1, 2).reshape(batch, -1, height, width)


class ShuffleBlock(nn.Module):
    """Parameter-free module form of :func:`channel_shuffle` (so it has a module path like in the reference)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(x, self.groups)


class Bottleneck(nn.Module):
    """ShuffleNet unit; with ``stride == 2`` the average-pooled input is concatenated instead of added.

    Args:
        in_planes: input channels.
        out_planes: channels produced by the unit's own branch (the stage width minus ``in_planes`` for stride 2).
        stride: 1 or 2.
        groups: groups of the 1×1 convolutions.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        first_groups = 1 if in_planes == 24 else groups  # the stem output is too narrow to split
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(first_groups)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, 3, stride, 1, groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle1(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = self.shortcut(x)
        out = torch.cat([out, residual], 1) if self.stride == 2 else out + residual
        return F.relu(out)


class ShuffleNetV1(nn.Module):
    """ShuffleNet V1 for 32×32 images.

    Args:
        out_planes: widths of ``layer1..layer3``.
        num_blocks: units per stage.
        groups: groups of the 1×1 convolutions.
        num_classes: outputs of ``linear``.
        in_channels: input channels of the stem (3 for CIFAR, 1 for grey images).
    """

    def __init__(
        self,
        out_planes: Sequence[int] = (240, 480, 960),
        num_blocks: Sequence[int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1, self.layer2, self.layer3 = (
            self._make_layer(width, blocks, groups) for width, blocks in zip(out_planes, num_blocks)
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, width: int, blocks: int, groups: int) -> nn.Sequential:
        units = [Bottleneck(self.in_planes, width - self.in_planes, 2, groups)]
        units += [Bottleneck(width, width, 1, groups) for _ in range(1, blocks)]
        self.in_planes = width
        return nn.Sequential(*units)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.avgpool(out).flatten(1))


@register_model(input_size=(3, 32, 32), feature_channels={"layer1": 240, "layer2": 480, "layer3": 960})
def ShuffleV1(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV1:
    """ShuffleNet V1, groups 3, widths 240/480/960, 4/8/4 units: the WKD paper's CIFAR student of wrn_40_2.

    Accepts 1×28×28 grey input with ``in_channels=1``.
    """
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, num_classes, in_channels)
