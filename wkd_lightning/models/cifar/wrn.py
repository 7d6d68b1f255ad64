"""Wide ResNets WRN-d-k (depth 6n+4, widen factor k) of the CRD/RepDistiller lineage: wrn_16_1 … wrn_40_2.

Written from the architecture description of RepDistiller's ``models/wrn.py`` (after Zagoruyko & Komodakis), not
copied. Pre-activation blocks: each block starts with ``bn1``→ReLU, then ``conv1`` (3×3, carries the stride),
``bn2``→ReLU, ``conv2``; the residual is the raw input when the width is unchanged, else a 1×1 ``convShortcut`` applied
to the *activated* input. Stages ``block1..block3`` (each a ``NetworkBlock`` holding its blocks in ``.layer``) follow a
3×3 ``conv1`` stem; the head is ``bn1``→ReLU, global average pooling and ``fc``. Module names and parameter shapes
match RepDistiller's state dicts key for key (``cifar_teachers.tar`` loads with strict checking).

The stage outputs (hook paths ``block1..block3``) are pre-activation sums, as in the reference's feature list; the
head's ``bn1`` and ``relu`` come after ``block3``. The reference's ``avg_pool2d(·, 8)`` is written as global average
pooling: the same on the 8×8 map of a 32×32 input, and 28×28 inputs (7×7 last map) work too.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from wkd_lightning.models.init import init_weights
from wkd_lightning.models.registry import register_model


class BasicBlock(nn.Module):
    """Pre-activation wide block: ``shortcut + conv2(relu(bn2(conv1(relu(bn1(x))))))``.

    Args:
        in_planes: input channels.
        out_planes: output channels; when they differ from ``in_planes`` a 1×1 ``convShortcut`` is created.
        stride: stride of ``conv1`` (and of the shortcut).
        drop_rate: dropout between the two convolutions (0 in the KD literature).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.droprate = drop_rate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One stage: ``nb_layers`` wide blocks in ``self.layer``; only the first changes width and stride."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(nb_layers)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen_factor for 32×32 images: stage widths ``16k, 32k, 64k`` after a 16-channel stem.

    Args:
        depth: ``6n + 4`` (16, 22, 28, 40, ...); ``n`` blocks per stage.
        widen_factor: ``k``.
        num_classes: outputs of ``fc``.
        in_channels: input channels of ``conv1`` (3 for CIFAR, 1 for grey images).
        drop_rate: dropout inside the blocks.
    """

    def __init__(
        self, depth: int, widen_factor: int = 1, num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"a Wide ResNet needs depth 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)
        self.nChannels = channels[3]
        init_weights(self, linear_zero_bias=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(self.avgpool(out).flatten(1))


def _stages(k: int) -> dict[str, int]:
    return {"block1": 16 * k, "block2": 32 * k, "block3": 64 * k}


@register_model(input_size=(3, 32, 32), feature_channels=_stages(1))
def wrn_16_1(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-16-1 (2 blocks per stage, widths 16/32/64). Accepts 1×28×28 grey input with ``in_channels=1``."""
    return WideResNet(16, 1, num_classes, in_channels)


@register_model(input_size=(3, 32, 32), feature_channels=_stages(2))
def wrn_16_2(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-16-2 (2 blocks per stage, widths 32/64/128; a CRD student). Accepts 1×28×28 grey input."""
    return WideResNet(16, 2, num_classes, in_channels)


@register_model(input_size=(3, 32, 32), feature_channels=_stages(1))
def wrn_40_1(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-40-1 (6 blocks per stage, widths 16/32/64; a CRD student). Accepts 1×28×28 grey input."""
    return WideResNet(40, 1, num_classes, in_channels)


@register_model(input_size=(3, 32, 32), feature_channels=_stages(2))
def wrn_40_2(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """WRN-40-2 (6 blocks per stage, widths 32/64/128): the WKD paper's teacher of ShuffleV1. Accepts 1×28×28 grey."""
    return WideResNet(40, 2, num_classes, in_channels)
