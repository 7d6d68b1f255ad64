"""Write ``repdistiller_manifest.json``: the state-dict keys and shapes of RepDistiller's CIFAR models.

The manifest is derived here from the architecture *description* (module names, layer order, channel rules), with no
import of ``wkd_lightning``, so that the key test compares two independent derivations. Keys are listed in the order
``state_dict()`` yields them (module registration order of the reference). Every BatchNorm contributes ``weight``,
``bias``, ``running_mean``, ``running_var`` and a scalar ``num_batches_tracked``. ``num_classes`` is 100, as in
``cifar_teachers.tar``.

Run ``python tests/models/make_manifest.py`` to regenerate the JSON (only needed when a model is added to it).
"""

from __future__ import annotations

import json
from pathlib import Path

NUM_CLASSES = 100
MANIFEST = Path(__file__).with_name("repdistiller_manifest.json")


class Keys:
    """Accumulates ``key → shape`` in order."""

    def __init__(self) -> None:
        self.shapes: dict[str, list[int]] = {}

    def conv(self, name: str, out: int, in_per_group: int, kernel: int, bias: bool = False) -> None:
        self.shapes[f"{name}.weight"] = [out, in_per_group, kernel, kernel]
        if bias:
            self.shapes[f"{name}.bias"] = [out]

    def bn(self, name: str, channels: int) -> None:
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            self.shapes[f"{name}.{suffix}"] = [channels]
        self.shapes[f"{name}.num_batches_tracked"] = []

    def linear(self, name: str, out: int, inp: int) -> None:
        self.shapes[f"{name}.weight"] = [out, inp]
        self.shapes[f"{name}.bias"] = [out]


def basic_block_stages(k: Keys, stages: list[tuple[int, int]], blocks: int, channels: int, projection: str) -> None:
    """Keys of ``layer1..`` made of post-activation basic blocks (two 3×3 conv + BN); the first block of a stage that
    changes the shape has a 1×1 conv + BN projection named ``projection`` (``downsample`` or ``shortcut``)."""
    for stage, (planes, stride) in enumerate(stages, start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            k.conv(f"{p}.conv1", planes, channels, 3)
            k.bn(f"{p}.bn1", planes)
            k.conv(f"{p}.conv2", planes, planes, 3)
            k.bn(f"{p}.bn2", planes)
            if b == 0 and (stride != 1 or channels != planes):
                k.conv(f"{p}.{projection}.0", planes, channels, 1)
                k.bn(f"{p}.{projection}.1", planes)
            channels = planes


def cifar_resnet(depth: int, filters: tuple[int, int, int, int]) -> dict[str, list[int]]:
    """resnet8 … resnet110, resnet8x4, resnet32x4: post-activation BasicBlocks, ``downsample`` = 1×1 conv + BN."""
    k, n = Keys(), (depth - 2) // 6
    k.conv("conv1", filters[0], 3, 3)
    k.bn("bn1", filters[0])
    channels = filters[0]
    stages = [(filters[stage], 1 if stage == 1 else 2) for stage in (1, 2, 3)]
    basic_block_stages(k, stages, n, channels, projection="downsample")
    k.linear("fc", NUM_CLASSES, filters[3])
    return k.shapes


def wide_resnet(depth: int, widen: int) -> dict[str, list[int]]:
    """wrn_d_k: pre-activation blocks (bn1, conv1, bn2, conv2, optional convShortcut) inside ``blockS.layer``."""
    k, n = Keys(), (depth - 4) // 6
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    k.conv("conv1", 16, 3, 3)
    for stage in (1, 2, 3):
        for b in range(n):
            p = f"block{stage}.layer.{b}"
            inp, out = (widths[stage - 1] if b == 0 else widths[stage]), widths[stage]
            k.bn(f"{p}.bn1", inp)
            k.conv(f"{p}.conv1", out, inp, 3)
            k.bn(f"{p}.bn2", out)
            k.conv(f"{p}.conv2", out, out, 3)
            if inp != out:
                k.conv(f"{p}.convShortcut", out, inp, 1)
    k.bn("bn1", widths[3])
    k.linear("fc", NUM_CLASSES, widths[3])
    return k.shapes


def vgg_bn(stages: list[list[int]]) -> dict[str, list[int]]:
    """vgg*_bn: ``blockS`` = [conv(bias), BN, ReLU]* without the last ReLU, so convs sit at indices 0, 3, 6, ..."""
    k, channels = Keys(), 3
    for s, widths in enumerate(stages):
        for i, width in enumerate(widths):
            k.conv(f"block{s}.{3 * i}", width, channels, 3, bias=True)
            k.bn(f"block{s}.{3 * i + 1}", width)
            channels = width
    k.linear("classifier", NUM_CLASSES, 512)
    return k.shapes


def mobile_half() -> dict[str, list[int]]:
    """MobileNetV2 T=6 width 0.5: conv1 (Seq conv/BN/ReLU), blocks[s][b].conv (8 layers), conv2, classifier.0."""
    k = Keys()
    k.conv("conv1.0", 16, 3, 3)
    k.bn("conv1.1", 16)
    setting = [(1, 8, 1), (6, 12, 2), (6, 16, 3), (6, 32, 4), (6, 48, 3), (6, 80, 3), (6, 160, 1)]  # t, c/2, n
    channels = 16
    for s, (t, out, n) in enumerate(setting):
        for b in range(n):
            p, hidden = f"blocks.{s}.{b}.conv", channels * t
            k.conv(f"{p}.0", hidden, channels, 1)
            k.bn(f"{p}.1", hidden)
            k.conv(f"{p}.3", hidden, 1, 3)
            k.bn(f"{p}.4", hidden)
            k.conv(f"{p}.6", out, hidden, 1)
            k.bn(f"{p}.7", out)
            channels = out
    k.conv("conv2.0", 1280, 160, 1)
    k.bn("conv2.1", 1280)
    k.linear("classifier.0", NUM_CLASSES, 1280)
    return k.shapes


def shuffle_v1() -> dict[str, list[int]]:
    """ShuffleV1, groups 3: 1×1 stem to 24; units conv1 (grouped; 1 group after the stem), dw conv2, grouped conv3."""
    k = Keys()
    k.conv("conv1", 24, 3, 1)
    k.bn("bn1", 24)
    channels = 24
    for stage, (width, n) in enumerate([(240, 4), (480, 8), (960, 4)], start=1):
        for b in range(n):
            p = f"layer{stage}.{b}"
            out = width - channels if b == 0 else width
            mid, g1 = out // 4, (1 if channels == 24 else 3)
            k.conv(f"{p}.conv1", mid, channels // g1, 1)
            k.bn(f"{p}.bn1", mid)
            k.conv(f"{p}.conv2", mid, 1, 3)
            k.bn(f"{p}.bn2", mid)
            k.conv(f"{p}.conv3", out, mid // 3, 1)
            k.bn(f"{p}.bn3", out)
            channels = width
    k.linear("linear", NUM_CLASSES, 960)
    return k.shapes


def shuffle_v2() -> dict[str, list[int]]:
    """ShuffleV2 1×: stem to 24; each stage = DownBlock (conv1..conv5) + basic units (conv1..conv3 on half)."""
    k = Keys()
    k.conv("conv1", 24, 3, 1)
    k.bn("bn1", 24)
    channels = 24
    for stage, (width, n) in enumerate([(116, 3), (232, 7), (464, 3)], start=1):
        p, mid = f"layer{stage}.0", width // 2
        k.conv(f"{p}.conv1", channels, 1, 3)
        k.bn(f"{p}.bn1", channels)
        k.conv(f"{p}.conv2", mid, channels, 1)
        k.bn(f"{p}.bn2", mid)
        k.conv(f"{p}.conv3", mid, channels, 1)
        k.bn(f"{p}.bn3", mid)
        k.conv(f"{p}.conv4", mid, 1, 3)
        k.bn(f"{p}.bn4", mid)
        k.conv(f"{p}.conv5", mid, mid, 1)
        k.bn(f"{p}.bn5", mid)
        for b in range(1, n + 1):
            p = f"layer{stage}.{b}"
            k.conv(f"{p}.conv1", mid, mid, 1)
            k.bn(f"{p}.bn1", mid)
            k.conv(f"{p}.conv2", mid, 1, 3)
            k.bn(f"{p}.bn2", mid)
            k.conv(f"{p}.conv3", mid, mid, 1)
            k.bn(f"{p}.bn3", mid)
        channels = width
    k.conv("conv2", 1024, 464, 1)
    k.bn("bn2", 1024)
    k.linear("linear", NUM_CLASSES, 1024)
    return k.shapes


def resnet50_cifar() -> dict[str, list[int]]:
    """resnetv2.ResNet50: 3×3 stem to 64, bottlenecks with ``shortcut`` (1×1 conv + BN), ``linear`` on 2048."""
    k = Keys()
    k.conv("conv1", 64, 3, 3)
    k.bn("bn1", 64)
    channels = 64
    for stage, (planes, n, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1):
        for b in range(n):
            p = f"layer{stage}.{b}"
            k.conv(f"{p}.conv1", planes, channels, 1)
            k.bn(f"{p}.bn1", planes)
            k.conv(f"{p}.conv2", planes, planes, 3)
            k.bn(f"{p}.bn2", planes)
            k.conv(f"{p}.conv3", 4 * planes, planes, 1)
            k.bn(f"{p}.bn3", 4 * planes)
            if b == 0 and (stride != 1 or channels != 4 * planes):
                k.conv(f"{p}.shortcut.0", 4 * planes, channels, 1)
                k.bn(f"{p}.shortcut.1", 4 * planes)
            channels = 4 * planes
    k.linear("linear", NUM_CLASSES, 2048)
    return k.shapes


def resnet18_cifar() -> dict[str, list[int]]:
    """resnetv2.ResNet18 (CRD, mdistiller): 3×3 stem to 64, basic blocks (two 3×3 convs) with ``shortcut``, ``linear``
    on 512."""
    k = Keys()
    k.conv("conv1", 64, 3, 3)
    k.bn("bn1", 64)
    basic_block_stages(k, [(64, 1), (128, 2), (256, 2), (512, 2)], 2, 64, projection="shortcut")
    k.linear("linear", NUM_CLASSES, 512)
    return k.shapes


def build() -> dict[str, dict[str, list[int]]]:
    narrow, wide = (16, 16, 32, 64), (32, 64, 128, 256)
    return {
        "resnet8x4": cifar_resnet(8, wide),
        "resnet32x4": cifar_resnet(32, wide),
        "resnet56": cifar_resnet(56, narrow),
        "wrn_16_2": wide_resnet(16, 2),
        "wrn_40_2": wide_resnet(40, 2),
        "vgg13": vgg_bn([[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]),
        "MobileNetV2": mobile_half(),
        "ShuffleV1": shuffle_v1(),
        "ShuffleV2": shuffle_v2(),
        "ResNet50": resnet50_cifar(),
        "ResNet18": resnet18_cifar(),
    }


def dump(models: dict[str, dict[str, list[int]]]) -> str:
    """JSON with one ``"key": [shape]`` per line, so a diff against a real checkpoint's key list stays readable."""
    blocks = []
    for name, shapes in models.items():
        lines = ",\n".join(f"    {json.dumps(key)}: {json.dumps(shape)}" for key, shape in shapes.items())
        blocks.append(f"  {json.dumps(name)}: {{\n{lines}\n  }}")
    return "{\n" + ",\n".join(blocks) + "\n}\n"


if __name__ == "__main__":
    MANIFEST.write_text(dump(build()))
    print(f"wrote {MANIFEST}")
