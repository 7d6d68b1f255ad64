"""The CIFAR zoo is state-dict compatible with RepDistiller's models (and so with ``cifar_teachers.tar``).

Three independent checks, since the real checkpoints are not available here:
1. key → shape manifests written from the architecture description (``make_manifest.py``) equal ``state_dict()``
   exactly, in order;
2. parameter counts equal the sizes commonly reported for these CIFAR-100 models in the KD literature (millions,
   2 decimals);
3. hand-written functional forwards (plain ``F.conv2d``/``F.batch_norm`` on the state dict) reproduce the outputs of
   the modules for the architectures with unusual orderings (pre-activation WRN, ShuffleNet units).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wkd_lightning.models import create_model
from wkd_lightning.teacher import FrozenTeacher, load_weights

from .make_manifest import build, dump

MANIFEST_FILE = Path(__file__).with_name("repdistiller_manifest.json")
MANIFEST = json.loads(MANIFEST_FILE.read_text())


def test_manifest_file_is_what_its_generator_writes():
    assert MANIFEST_FILE.read_text() == dump(build())


@pytest.mark.parametrize("name", list(MANIFEST))
def test_state_dict_matches_reference_manifest(name):
    expected = [(key, tuple(shape)) for key, shape in MANIFEST[name].items()]
    actual = [(key, tuple(value.shape)) for key, value in create_model(name, num_classes=100).state_dict().items()]
    assert dict(actual) == dict(expected), f"{name}: keys or shapes differ from the reference"
    assert actual == expected, f"{name}: same keys, but not in the reference's registration order"


# Sizes (millions of parameters, 100-class heads) as reported in KD papers' CIFAR-100 tables (CRD follow-ups).
PUBLISHED_PARAMS_M = {
    "resnet20": 0.28,
    "resnet32": 0.47,
    "resnet44": 0.67,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "wrn_40_2": 2.26,
    "vgg8": 3.96,
    "vgg13": 9.46,
    "MobileNetV2": 0.81,
    "ShuffleV1": 0.95,
    "ShuffleV2": 1.36,
    "ResNet50": 23.71,
    "ResNet18": 11.22,
}


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS_M))
def test_parameter_count_matches_published(name):
    count = sum(p.numel() for p in create_model(name, num_classes=100).parameters())
    assert abs(count / 1e6 - PUBLISHED_PARAMS_M[name]) < 0.006  # tables round or truncate to 2 decimals


def _randomise_bn_statistics(model: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial running statistics, so a load that skipped buffers would show in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
            module.num_batches_tracked.fill_(7)


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2", "MobileNetV2", "ShuffleV1"])
def test_repdistiller_style_checkpoint_round_trip(name, tmp_path):
    torch.manual_seed(0)
    source = create_model(name, num_classes=100)
    with torch.no_grad():
        _randomise_bn_statistics(source)
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"model": source.state_dict(), "epoch": 240, "accuracy": 79.4}, path)
    torch.manual_seed(1)
    target = load_weights(create_model(name, num_classes=100), path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source.eval()(x), target.eval()(x))
        assert torch.equal(FrozenTeacher(create_model(name, num_classes=100), path)(x), source(x))
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "wrn.pth"
    torch.save({"model": create_model("wrn_40_2").state_dict()}, path)
    with pytest.raises(ValueError, match="do not fit"):
        load_weights(create_model("wrn_16_2"), path)


# ----------------------------------------------------------------------------- functional re-derivations (eval mode)
def _bn(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    return F.batch_norm(
        x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5
    )


def _conv(x: Tensor, sd: dict[str, Tensor], name: str, stride: int = 1, groups: int = 1) -> Tensor:
    weight = sd[f"{name}.weight"]
    return F.conv2d(x, weight, sd.get(f"{name}.bias"), stride, weight.shape[-1] // 2, groups=groups)


def _wrn_reference(x: Tensor, sd: dict[str, Tensor], depth: int) -> Tensor:
    """WRN as described: pre-activation units; the projection shortcut reads the *activated* input."""
    n = (depth - 4) // 6
    out = _conv(x, sd, "conv1")
    for stage in (1, 2, 3):
        for b in range(n):
            p = f"block{stage}.layer.{b}"
            stride = 2 if (stage > 1 and b == 0) else 1
            act = F.relu(_bn(out, sd, f"{p}.bn1"))
            y = F.relu(_bn(_conv(act, sd, f"{p}.conv1", stride), sd, f"{p}.bn2"))
            y = _conv(y, sd, f"{p}.conv2")
            shortcut = _conv(act, sd, f"{p}.convShortcut", stride) if f"{p}.convShortcut.weight" in sd else out
            out = shortcut + y
    out = F.relu(_bn(out, sd, "bn1"))
    return F.linear(F.avg_pool2d(out, 8).flatten(1), sd["fc.weight"], sd["fc.bias"])


def _shuffle(x: Tensor, groups: int) -> Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)


def _shufflev1_reference(x: Tensor, sd: dict[str, Tensor]) -> Tensor:
    out = F.relu(_bn(_conv(x, sd, "conv1"), sd, "bn1"))
    for stage, n in ((1, 4), (2, 8), (3, 4)):
        for b in range(n):
            p, stride = f"layer{stage}.{b}", (2 if b == 0 else 1)
            g1 = 1 if out.shape[1] == 24 else 3
            mid = sd[f"{p}.bn1.weight"].numel()
            y = _shuffle(F.relu(_bn(_conv(out, sd, f"{p}.conv1", groups=g1), sd, f"{p}.bn1")), g1)
            y = F.relu(_bn(_conv(y, sd, f"{p}.conv2", stride, groups=mid), sd, f"{p}.bn2"))
            y = _bn(_conv(y, sd, f"{p}.conv3", groups=3), sd, f"{p}.bn3")
            residual = F.avg_pool2d(out, 3, 2, 1) if stride == 2 else out
            out = F.relu(torch.cat([y, residual], 1) if stride == 2 else y + residual)
    return F.linear(F.avg_pool2d(out, 4).flatten(1), sd["linear.weight"], sd["linear.bias"])


def _shufflev2_reference(x: Tensor, sd: dict[str, Tensor]) -> Tensor:
    out = F.relu(_bn(_conv(x, sd, "conv1"), sd, "bn1"))
    for stage, n in ((1, 3), (2, 7), (3, 3)):
        p, c = f"layer{stage}.0", out.shape[1]
        left = _bn(_conv(out, sd, f"{p}.conv1", 2, groups=c), sd, f"{p}.bn1")
        left = F.relu(_bn(_conv(left, sd, f"{p}.conv2"), sd, f"{p}.bn2"))
        right = F.relu(_bn(_conv(out, sd, f"{p}.conv3"), sd, f"{p}.bn3"))
        mid = right.shape[1]
        right = _bn(_conv(right, sd, f"{p}.conv4", 2, groups=mid), sd, f"{p}.bn4")
        right = F.relu(_bn(_conv(right, sd, f"{p}.conv5"), sd, f"{p}.bn5"))
        out = _shuffle(torch.cat([left, right], 1), 2)
        for b in range(1, n + 1):
            p, half = f"layer{stage}.{b}", out.shape[1] // 2
            kept, y = out[:, :half], out[:, half:]
            y = F.relu(_bn(_conv(y, sd, f"{p}.conv1"), sd, f"{p}.bn1"))
            y = _bn(_conv(y, sd, f"{p}.conv2", groups=half), sd, f"{p}.bn2")
            y = F.relu(_bn(_conv(y, sd, f"{p}.conv3"), sd, f"{p}.bn3"))
            out = _shuffle(torch.cat([kept, y], 1), 2)
    out = F.relu(_bn(_conv(out, sd, "conv2"), sd, "bn2"))
    return F.linear(F.avg_pool2d(out, 4).flatten(1), sd["linear.weight"], sd["linear.bias"])


def _resnet_reference(x: Tensor, sd: dict[str, Tensor], depth: int) -> Tensor:
    """CIFAR ResNet as described: post-activation BasicBlocks, ReLU after the residual sum."""
    n = (depth - 2) // 6
    out = F.relu(_bn(_conv(x, sd, "conv1"), sd, "bn1"))
    for stage in (1, 2, 3):
        for b in range(n):
            p = f"layer{stage}.{b}"
            stride = 2 if (stage > 1 and b == 0) else 1
            y = F.relu(_bn(_conv(out, sd, f"{p}.conv1", stride), sd, f"{p}.bn1"))
            y = _bn(_conv(y, sd, f"{p}.conv2"), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                out = _bn(_conv(out, sd, f"{p}.downsample.0", stride), sd, f"{p}.downsample.1")
            out = F.relu(y + out)
    return F.linear(F.avg_pool2d(out, 8).flatten(1), sd["fc.weight"], sd["fc.bias"])


FUNCTIONAL = {
    "wrn_16_2": lambda x, sd: _wrn_reference(x, sd, 16),
    "wrn_16_1": lambda x, sd: _wrn_reference(x, sd, 16),
    "resnet8x4": lambda x, sd: _resnet_reference(x, sd, 8),
    "resnet20": lambda x, sd: _resnet_reference(x, sd, 20),
    "ShuffleV1": _shufflev1_reference,
    "ShuffleV2": _shufflev2_reference,
}


@pytest.mark.parametrize("name", list(FUNCTIONAL))
def test_forward_equals_functional_description(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    with torch.no_grad():
        _randomise_bn_statistics(model)
        for module in model.modules():  # non-trivial affine BN parameters as well
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
        x = torch.randn(2, 3, 32, 32)
        expected = FUNCTIONAL[name](x, model.state_dict())
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
