"""ImageNet architectures (224×224): torchvision ResNets, a MobileNetV1, and transformer teachers (ViT-B/16, Swin-T).

The WKD paper's ImageNet pairs are resnet34→resnet18 and resnet50→MobileNetV1 with torchvision's v1 weights as
teachers. The ResNets, ViT and Swin are torchvision's own modules built with ``weights=None`` and returned as they
are (no wrapper, no key prefix), so torchvision's released state dicts load key for key through
:class:`~wkd_lightning.teacher.FrozenTeacher` / :func:`~wkd_lightning.teacher.load_weights` from a local file (nothing
is downloaded here). :class:`MobileNetV1` is written here from the architecture description of Howard et al. (2017)
as used by the KD literature's ImageNet student (stride-2 3×3 stem, 13 depthwise-separable blocks, 1024 channels at
7×7, global pooling, ``fc``); its module names are this project's own, and
:meth:`MobileNetV1.convert_state_dict` reads mdistiller's key names for the same layers.

``in_channels`` other than 3 replaces the first convolution by a freshly initialised one of the same name and shape
apart from its input channels; torchvision's released weights then no longer fit (their stem expects RGB).
"""

from __future__ import annotations

from collections import OrderedDict

import torchvision
from torch import Tensor, nn

from wkd_lightning.models.init import init_weights
from wkd_lightning.models.registry import register_model

IMAGENET_SIZE = (3, 224, 224)


def _replace_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A new convolution like ``conv`` but reading ``in_channels`` channels (``conv`` itself when unchanged)."""
    if in_channels == conv.in_channels:
        return conv
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        bias=conv.bias is not None,
    )


def _torchvision_resnet(builder, num_classes: int, in_channels: int) -> torchvision.models.ResNet:
    model = builder(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = _replace_conv(model.conv1, in_channels)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


_BASIC_STAGES = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
_BOTTLENECK_STAGES = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}


@register_model(input_size=IMAGENET_SIZE, feature_channels=_BASIC_STAGES)
def resnet18(num_classes: int = 1000, in_channels: int = 3) -> torchvision.models.ResNet:
    """torchvision ResNet-18 (the WKD paper's ImageNet student of resnet34); 7×7 ``layer4`` map at 224×224."""
    return _torchvision_resnet(torchvision.models.resnet18, num_classes, in_channels)


@register_model(input_size=IMAGENET_SIZE, feature_channels=_BASIC_STAGES)
def resnet34(num_classes: int = 1000, in_channels: int = 3) -> torchvision.models.ResNet:
    """torchvision ResNet-34 (the WKD paper's ImageNet teacher of resnet18)."""
    return _torchvision_resnet(torchvision.models.resnet34, num_classes, in_channels)


@register_model(input_size=IMAGENET_SIZE, feature_channels=_BOTTLENECK_STAGES)
def resnet50(num_classes: int = 1000, in_channels: int = 3) -> torchvision.models.ResNet:
    """torchvision ResNet-50 (the WKD paper's ImageNet teacher of MobileNetV1)."""
    return _torchvision_resnet(torchvision.models.resnet50, num_classes, in_channels)


class ConvBNReLU(nn.Sequential):
    """3×3 convolution (no bias) → BN → ReLU; indices 0, 1, 2."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DepthwiseSeparable(nn.Module):
    """Depthwise 3×3 conv (carries the stride) → BN → ReLU → pointwise 1×1 conv → BN → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.dw_conv = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.dw_bn = nn.BatchNorm2d(in_channels)
        self.pw_conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.dw_bn(self.dw_conv(x)))
        return self.relu(self.pw_bn(self.pw_conv(x)))


# (output channels, stride) of the depthwise-separable blocks of each stage; the stem gives 32 channels at 112×112.
MOBILENET_V1_STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((64, 1),),  # stage1: 64 × 112×112
    ((128, 2), (128, 1)),  # stage2: 128 × 56×56
    ((256, 2), (256, 1)),  # stage3: 256 × 28×28
    ((512, 2),) + ((512, 1),) * 5,  # stage4: 512 × 14×14
    ((1024, 2), (1024, 1)),  # stage5: 1024 × 7×7
)


class MobileNetV1(nn.Module):
    """MobileNetV1 (width 1.0) for 224×224 images.

    ``features`` is an ``nn.Sequential`` with named children ``stem`` (3×3 stride-2 conv-BN-ReLU to 32 channels) and
    ``stage1..stage5`` (depthwise-separable blocks, see :data:`MOBILENET_V1_STAGES`), ending in 1024 channels at 7×7;
    then global average pooling ``avgpool`` and the linear ``fc``.

    Args:
        num_classes: outputs of ``fc``.
        in_channels: input channels of the stem.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[tuple[str, nn.Module]] = [("stem", ConvBNReLU(in_channels, 32, 2))]
        channels = 32
        for index, stage in enumerate(MOBILENET_V1_STAGES, start=1):
            blocks = []
            for out_channels, stride in stage:
                blocks.append(DepthwiseSeparable(channels, out_channels, stride))
                channels = out_channels
            layers.append((f"stage{index}", nn.Sequential(*blocks)))
        self.features = nn.Sequential(OrderedDict(layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(self.features(x)).flatten(1))

    @staticmethod
    def convert_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rename mdistiller's ``MobileNetV1`` keys to ours (the architecture is the same layer for layer).

        mdistiller keeps every layer in one ``model`` ``nn.Sequential``: ``model.0`` is the stem (``0`` conv, ``1``
        BN) and ``model.1`` … ``model.13`` are the depthwise-separable blocks in order (``0`` depthwise conv, ``1`` its
        BN, ``3`` pointwise conv, ``4`` its BN); ``fc`` is named as here. A state dict without ``model.0.0.weight``
        is returned unchanged. Called by :func:`~wkd_lightning.teacher.load_weights` before its strict key check.
        """
        if "model.0.0.weight" not in state:
            return state
        names = {"model.0.0": "features.stem.0", "model.0.1": "features.stem.1"}
        index = 1
        for stage_number, stage in enumerate(MOBILENET_V1_STAGES, start=1):
            for block in range(len(stage)):
                ours = f"features.stage{stage_number}.{block}"
                for theirs, layer in (("0", "dw_conv"), ("1", "dw_bn"), ("3", "pw_conv"), ("4", "pw_bn")):
                    names[f"model.{index}.{theirs}"] = f"{ours}.{layer}"
                index += 1
        converted = {}
        for key, value in state.items():
            module, _, param = key.rpartition(".")
            converted[f"{names[module]}.{param}" if module in names else key] = value
        return converted


@register_model(
    input_size=IMAGENET_SIZE,
    feature_channels={f"features.stage{i}": stage[-1][0] for i, stage in enumerate(MOBILENET_V1_STAGES, start=1)},
)
def mobilenet_v1(num_classes: int = 1000, in_channels: int = 3) -> MobileNetV1:
    """MobileNetV1 (the WKD paper's ImageNet student of resnet50); ``features.stage5`` is the 1024×7×7 last stage."""
    return MobileNetV1(num_classes, in_channels)


@register_model(input_size=IMAGENET_SIZE)
def vit_b_16(num_classes: int = 1000, in_channels: int = 3) -> torchvision.models.VisionTransformer:
    """torchvision ViT-B/16, a heterogeneous (transformer) teacher for CNN students.

    Its hidden states are token sequences, not feature maps, so no feature path is advertised: use it for logit
    distillation (WKD-L, KD, DKD). The input must be exactly 224×224.
    """
    model = torchvision.models.vit_b_16(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv_proj = _replace_conv(model.conv_proj, in_channels)
    return model


@register_model(input_size=IMAGENET_SIZE, feature_channels={"permute": 768})
def swin_t(num_classes: int = 1000, in_channels: int = 3) -> torchvision.models.SwinTransformer:
    """torchvision Swin-T, a heterogeneous (transformer) teacher for CNN students.

    Its stages are channels-last, so the one advertised feature path is ``permute``: the final normalised stage
    output turned channels-first, 768×7×7 at 224×224, right before global pooling.
    """
    model = torchvision.models.swin_t(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.features[0][0] = _replace_conv(model.features[0][0], in_channels)
    return model
