"""CIFAR VGGs with batch norm and a single linear classifier (CRD/RepDistiller lineage): vgg8, vgg11 … vgg19.

Written from the architecture description of RepDistiller's ``models/vgg.py``, not copied. As in RepDistiller's model
table, the names ``vgg8/11/13/16/19`` denote the batch-norm variants (its ``vgg*_bn``), which is what
``cifar_teachers.tar`` holds. Five conv stages ``block0..block4`` (each an ``nn.Sequential`` of 3×3 conv (with
bias) → BN → ReLU), max pools ``pool0..pool3`` between them, global average pooling ``pool4`` and a linear
``classifier`` on 512 channels; ``pool3`` is only used for 64×64 inputs, as in the reference. Module names and
parameter shapes match RepDistiller's state dicts key for key.

One deliberate layout choice: the reference drops the last ReLU from each stage's ``Sequential`` and applies it in
``forward``; here it stays inside the stage as its last (parameter-free, not in-place) module. State-dict keys and
outputs are unchanged, and a forward hook on ``blockK`` then sees the post-ReLU stage output, which is the feature the
reference (and the WKD release built on it) returns; the pre-activation map is the output of the stage's last BN
(e.g. ``block4.4`` for vgg13).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from wkd_lightning.models.init import init_weights
from wkd_lightning.models.registry import register_model

# Output channels of the 3×3 convolutions of each of the five stages.
VGG_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _stage(widths: Sequence[int], in_channels: int, batch_norm: bool) -> nn.Sequential:
    """Conv(→BN)→ReLU per width; the trailing ReLU is not in-place, so a hook on the last BN keeps its output."""
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        layers.append(nn.Conv2d(in_channels, width, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=i < len(widths) - 1))
        in_channels = width
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """Five-stage VGG for 32×32 images with one linear layer on the pooled 512-channel map.

    Args:
        config: output channels of the convolutions of each stage (see :data:`VGG_CONFIGS`).
        batch_norm: BN after every convolution (True for all registered models).
        num_classes: outputs of ``classifier``.
        in_channels: input channels of the first convolution (3 for CIFAR, 1 for grey images).
    """

    def __init__(
        self,
        config: Sequence[Sequence[int]],
        batch_norm: bool = True,
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(config) != 5:
            raise ValueError(f"a VGG config has 5 stages, got {len(config)}")
        previous = [in_channels] + [stage[-1] for stage in config[:-1]]
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _stage(widths, c, batch_norm) for widths, c in zip(config, previous)
        )
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(config[-1][-1], num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        height = x.shape[2]
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.block3(x)
        if height == 64:
            x = self.pool3(x)
        x = self.block4(x)
        return self.classifier(self.pool4(x).flatten(1))


def _channels(name: str) -> dict[str, int]:
    return {f"block{i}": widths[-1] for i, widths in enumerate(VGG_CONFIGS[name])}


@register_model(input_size=(3, 32, 32), feature_channels=_channels("vgg8"))
def vgg8(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """VGG-8 with BN (one conv per stage; a CRD student). Accepts 1×28×28 grey input with ``in_channels=1``."""
    return VGG(VGG_CONFIGS["vgg8"], True, num_classes, in_channels)


@register_model(input_size=(3, 32, 32), feature_channels=_channels("vgg11"))
def vgg11(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """VGG-11 with BN (configuration A). Accepts 1×28×28 grey input."""
    return VGG(VGG_CONFIGS["vgg11"], True, num_classes, in_channels)


@register_model(input_size=(3, 32, 32), feature_channels=_channels("vgg13"))
def vgg13(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """VGG-13 with BN (configuration B; a CRD teacher). Accepts 1×28×28 grey input."""
    return VGG(VGG_CONFIGS["vgg13"], True, num_classes, in_channels)


@register_model(input_size=(3, 32, 32), feature_channels=_channels("vgg16"))
def vgg16(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """VGG-16 with BN (configuration D). Accepts 1×28×28 grey input."""
    return VGG(VGG_CONFIGS["vgg16"], True, num_classes, in_channels)


@register_model(input_size=(3, 32, 32), feature_channels=_channels("vgg19"))
def vgg19(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """VGG-19 with BN (configuration E). Accepts 1×28×28 grey input."""
    return VGG(VGG_CONFIGS["vgg19"], True, num_classes, in_channels)
