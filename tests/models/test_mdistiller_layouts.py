"""Checkpoints in mdistiller's layouts load into our zoo: its ImageNet ``MobileNetV1`` (other key names, same layers)
and its CIFAR ``ResNet18`` (the same key names).

The mdistiller-layout reference network is written here from the architecture (Howard et al., 2017: a 3×3 stride-2
stem to 32 channels, then 13 depthwise-separable blocks), with the layer order and key names of mdistiller's model (one
``model`` Sequential; a stem ``conv, BN, ReLU``; blocks ``dw conv, BN, ReLU, pw conv, BN, ReLU``; then ``fc``), and
shares no code with :meth:`MobileNetV1.convert_state_dict`.
"""

from __future__ import annotations

import torch
from torch import nn

from wkd_lightning.models import ResNet18, mobilenet_v1
from wkd_lightning.teacher import load_weights

#: (in, out, stride) of MobileNetV1's 13 depthwise-separable blocks.
BLOCKS = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)]
BLOCKS += [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]


class MdistillerLayoutMobileNetV1(nn.Module):
    """MobileNetV1 with mdistiller's module names: ``model.0`` stem, ``model.1..13`` blocks, ``fc``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())]
        for c_in, c_out, stride in BLOCKS:
            layers.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
                    nn.BatchNorm2d(c_in),
                    nn.ReLU(),
                    nn.Conv2d(c_in, c_out, 1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(),
                )
            )
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.model(x).mean(dim=(2, 3)))


def _randomise(model: nn.Module) -> nn.Module:
    """Random weights and BN statistics, so that any mis-mapped tensor changes the logits."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.rand(tensor.shape, generator=g) if name.endswith("running_var") else None
                tensor.copy_(noise + 0.5 if noise is not None else torch.randn(tensor.shape, generator=g) * 0.1)
    return model.eval()


def test_mdistiller_mobilenet_v1_checkpoint_loads_with_identical_logits(tmp_path):
    reference = _randomise(MdistillerLayoutMobileNetV1(num_classes=10))
    path = tmp_path / "mobilenetv1_student.pth"
    torch.save({"model": reference.state_dict()}, path)
    assert "model.13.4.running_var" in reference.state_dict()  # mdistiller's key names
    ours = load_weights(mobilenet_v1(num_classes=10), path).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
    ours_state = ours.state_dict()
    assert len(ours_state) == len(reference.state_dict())
    assert torch.equal(
        ours_state["features.stage5.1.pw_bn.running_var"], reference.state_dict()["model.13.4.running_var"]
    )


def test_our_own_mobilenet_v1_files_still_load_unchanged(tmp_path):
    source = _randomise(mobilenet_v1(num_classes=10))
    torch.save(source.state_dict(), tmp_path / "ours.pth")
    loaded = load_weights(mobilenet_v1(num_classes=10), tmp_path / "ours.pth")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())


def test_mdistiller_cifar_resnet18_state_dict_loads(tmp_path):
    """mdistiller's CIFAR ResNet18 (CRD's resnetv2) uses our key names: a {'model': state_dict} file loads strictly."""
    source = _randomise(ResNet18(num_classes=100))
    torch.save({"model": source.state_dict()}, tmp_path / "ResNet18_best.pth")
    loaded = load_weights(ResNet18(num_classes=100), tmp_path / "ResNet18_best.pth").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)
