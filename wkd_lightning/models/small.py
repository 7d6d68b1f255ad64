"""Small ResNets for 28×28 grey images (Fashion-MNIST): a teacher and a clearly smaller student.

Both follow the CIFAR ResNet layout of the KD literature (``conv1``/``bn1`` stem, stages ``layer1..layer3``, global
pooling, ``fc``), so the same hook paths (``layer3`` = last stage) work across datasets. On 28×28 inputs the stages
produce 28×28, 14×14 and 7×7 maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from wkd_lightning.models.cifar.resnetv2 import BasicBlock  # two 3×3 conv-BN layers and a `shortcut`
from wkd_lightning.models.registry import register_model


class SmallResNet(nn.Module):
    """A three-stage ResNet for small images.

    Args:
        widths: channels of ``layer1``, ``layer2``, ``layer3`` (strides 1, 2, 2).
        blocks_per_stage: BasicBlocks in each stage (depth = 6·n + 2).
        num_classes: outputs of ``fc``.
        in_channels: 1 for grey images, 3 for colour.
    """

    def __init__(
        self, widths: Sequence[int], blocks_per_stage: int, num_classes: int = 10, in_channels: int = 1
    ) -> None:
        super().__init__()
        if len(widths) != 3 or blocks_per_stage < 1:
            raise ValueError(
                f"SmallResNet needs 3 stage widths and >= 1 block per stage, got {widths}, {blocks_per_stage}"
            )
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_planes = [], widths[0]
        for width, stride in zip(widths, (1, 2, 2)):
            blocks = [
                BasicBlock(in_planes if i == 0 else width, width, stride if i == 0 else 1)
                for i in range(blocks_per_stage)
            ]
            stages.append(nn.Sequential(*blocks))
            in_planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


@register_model(input_size=(1, 28, 28), feature_channels={"layer1": 16, "layer2": 32, "layer3": 64})
def mini_resnet14(num_classes: int = 10, in_channels: int = 1) -> SmallResNet:
    """Fashion-MNIST teacher: widths 16/32/64, 2 blocks per stage (≈0.17 M parameters)."""
    return SmallResNet((16, 32, 64), 2, num_classes, in_channels)


@register_model(input_size=(1, 28, 28), feature_channels={"layer1": 8, "layer2": 16, "layer3": 32})
def mini_resnet8(num_classes: int = 10, in_channels: int = 1) -> SmallResNet:
    """Fashion-MNIST student: widths 8/16/32, 1 block per stage (≈0.02 M parameters)."""
    return SmallResNet((8, 16, 32), 1, num_classes, in_channels)
