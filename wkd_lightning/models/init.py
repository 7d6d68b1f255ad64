"""The weight initialisation the CIFAR/ImageNet model families of the KD literature share, in one place."""

from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module, linear_std: float | None = None, linear_zero_bias: bool = False) -> None:
    """He-normal convolutions (fan-out, ReLU gain), unit/zero BatchNorm, and optionally the linear layers.

    ``kaiming_normal_(mode="fan_out")`` draws from N(0, 2/fan_out), the "normal(0, sqrt(2/n))" written out by hand in
    the WRN, VGG and MobileNetV2 references. Convolution biases, where present, start at zero.

    Args:
        model: the network, initialised in place.
        linear_std: draw linear weights from N(0, linear_std²) (0.01 in VGG/MobileNet); None keeps PyTorch's default.
        linear_zero_bias: zero the linear biases (implied by ``linear_std``).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(module.weight, 0.0, linear_std)
            if linear_std is not None or linear_zero_bias:
                nn.init.zeros_(module.bias)
