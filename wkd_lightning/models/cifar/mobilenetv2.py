"""CIFAR MobileNetV2 at half width (RepDistiller's ``mobile_half``, registered as ``MobileNetV2``).

Written from the architecture description of RepDistiller's ``models/mobilenetv2.py`` (the version of "Knowledge
Distillation via Route Constrained Optimization"), not copied. Layout: ``conv1`` (3×3 stride-2 conv-BN-ReLU), seven
stages in the ``blocks`` ``ModuleList`` of inverted residuals, ``conv2`` (1×1 conv-BN-ReLU to 1280 channels), global
average pooling and ``classifier`` (a one-layer ``nn.Sequential``). Every inverted residual holds its layers in
``conv`` (expand 1×1 → depthwise 3×3 → linear 1×1, each followed by BN, the first two by ReLU) and always has the
expansion convolution, even where the expansion ratio is 1. Module names and parameter shapes match RepDistiller's
state dicts key for key.

With width 0.5 the stage widths are 8, 12, 16, 32, 48, 80, 160 (strides 1, 1, 2, 2, 1, 2, 1 after the stride-2 stem),
so a 32×32 input ends in a 2×2 map; the reference's ``AvgPool2d(2, ceil_mode=True)`` is written as global average
pooling (equal there), which also accepts 28×28 inputs.
"""

from __future__ import annotations

from torch import Tensor, nn

from wkd_lightning.models.init import init_weights
from wkd_lightning.models.registry import register_model

# (expansion t, output channels c at width 1, blocks n, stride of the first block s) per stage.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2))
INVERTED_RESIDUAL_SETTING += ((6, 320, 1, 1),)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise (3×3, carries the stride) → project (1×1, linear), plus identity when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = inp * expand_ratio
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 for 32×32 images (stride-2 stem, 2×2 last map).

    Args:
        expansion: ``T``, the expansion ratio of all stages but the first.
        width_mult: channel multiplier (0.5 for ``mobile_half``); the head stays at 1280 channels unless > 1.
        num_classes: outputs of ``classifier``.
        in_channels: input channels of the stem (3 for CIFAR, 1 for grey images).
    """

    def __init__(self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            t = t if t == 1 else expansion
            out_channels = int(c * width_mult)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t))
                channels = out_channels
            self.blocks.append(nn.Sequential(*stage))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, self.last_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        for stage in self.blocks:
            out = stage(out)
        out = self.conv2(out)
        return self.classifier(self.avgpool(out).flatten(1))


@register_model(
    input_size=(3, 32, 32),
    feature_channels={"blocks.1": 12, "blocks.2": 16, "blocks.4": 48, "blocks.6": 160, "conv2": 1280},
    last_stage="blocks.6",
)
def MobileNetV2(num_classes: int = 100, in_channels: int = 3) -> MobileNetV2Cifar:
    """Half-width CIFAR MobileNetV2 (RepDistiller's ``mobile_half``, T=6). Accepts 1×28×28 grey input.

    Feature paths ``blocks.1/2/4/6`` are the reference's stage features; ``blocks.6`` (160 channels, the last entry of
    the reference's feature list and so the WKD release's default WKD-F layer) is the last stage. ``conv2`` (1280
    channels, after BN-ReLU) is also advertised: the head map right before global pooling.
    """
    return MobileNetV2Cifar(6, 0.5, num_classes, in_channels)
