"""Projectors (SPEC §4.1): output shapes for every supported spatial ratio, clear errors for the rest."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wkd_lightning.losses.base import DistillationContext
from wkd_lightning.losses.projectors import (
    BOTTLENECK_CHANNELS,
    PROJECTOR_KINDS,
    ProjectedFeatureLoss,
    make_projector,
    spatial_relation,
)

SHAPE_PAIRS = {
    "same": ((2, 6, 8, 8), (2, 10, 8, 8)),
    "down": ((2, 6, 8, 8), (2, 10, 4, 4)),
    "up": ((2, 6, 4, 4), (2, 10, 8, 8)),
    "down-non-square": ((2, 3, 8, 6), (2, 5, 4, 3)),
    "up-odd": ((2, 3, 7, 5), (2, 5, 14, 10)),
}


@pytest.mark.parametrize("kind", PROJECTOR_KINDS)
@pytest.mark.parametrize("pair", sorted(SHAPE_PAIRS))
def test_projector_outputs_teacher_shape(kind: str, pair: str) -> None:
    student_shape, teacher_shape = SHAPE_PAIRS[pair]
    torch.manual_seed(0)
    projector = make_projector(kind, student_shape, teacher_shape)
    out = projector(torch.randn(student_shape))
    assert out.shape == teacher_shape
    assert (out >= 0).all()  # ends with BN + ReLU
    out.square().mean().backward()
    for name, param in projector.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_projector_ignores_batch_size() -> None:
    projector = make_projector("conv1x1", (1, 6, 8, 8), (1, 10, 4, 4))
    assert projector(torch.randn(5, 6, 8, 8)).shape == (5, 10, 4, 4)


@pytest.mark.parametrize(
    ("pair", "conv_type", "kernel", "stride", "padding"),
    [
        ("same", nn.Conv2d, 1, 1, 0),
        ("down", nn.Conv2d, 3, 2, 1),
        ("up", nn.ConvTranspose2d, 4, 2, 1),
    ],
)
def test_conv1x1_layers(pair: str, conv_type: type, kernel: int, stride: int, padding: int) -> None:
    projector = make_projector("conv1x1", *SHAPE_PAIRS[pair])
    conv, bn, relu = projector
    assert type(conv) is conv_type
    assert conv.kernel_size == (kernel, kernel) and conv.stride == (stride, stride)
    assert conv.padding == (padding, padding)
    assert conv.bias is None
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 10
    assert isinstance(relu, nn.ReLU)


CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)


@pytest.mark.parametrize(("pair", "middle_type", "kernel"), [("same", nn.Conv2d, 3), ("down", nn.Conv2d, 3)])
def test_bottleneck_is_the_released_layer_stack(pair: str, middle_type: type, kernel: int) -> None:
    """RELEASE_RECIPES row 2: Conv1×1 C→256 (bias) → Conv3×3 256→256 (bias) → Conv1×1 256→C_t (bias) → one BN → ReLU."""
    projector = make_projector("bottleneck", *SHAPE_PAIRS[pair])
    assert [type(m) for m in projector] == [nn.Conv2d, middle_type, nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    convs = list(projector)[:3]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(6, 256), (256, 256), (256, 10)]
    assert [c.kernel_size for c in convs] == [(1, 1), (kernel, kernel), (1, 1)]
    assert all(c.bias is not None and c.bias.shape == (c.out_channels,) for c in convs)
    assert projector[3].num_features == 10


def test_bottleneck_matches_hand_written_layers() -> None:
    """The same weights in a hand-built conv/conv/conv/BN/ReLU give the same output (eval mode: running statistics)."""
    torch.manual_seed(0)
    projector = make_projector("bottleneck", (2, 6, 7, 7), (2, 10, 7, 7)).eval()
    w1, b1, w2, b2, w3, b3 = (p.detach() for p in list(projector.parameters())[:6])
    bn = projector[3]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 7, 7)
    h = torch.nn.functional.conv2d(x, w1, b1)
    h = torch.nn.functional.conv2d(h, w2, b2, padding=1)
    h = torch.nn.functional.conv2d(h, w3, b3)
    h = (h - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    expected = (h * bn.weight.detach()[:, None, None] + bn.bias.detach()[:, None, None]).clamp_min(0)
    torch.testing.assert_close(projector(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("pair", "middle_type", "kernel"), [("same", nn.Conv2d, 3), ("down", nn.Conv2d, 3)])
def test_bottleneck_bn_each_layers(pair: str, middle_type: type, kernel: int) -> None:
    projector = make_projector("bottleneck_bn_each", *SHAPE_PAIRS[pair])
    convs = [m for m in projector if isinstance(m, CONV_TYPES)]
    assert [c.out_channels for c in convs] == [BOTTLENECK_CHANNELS, BOTTLENECK_CHANNELS, 10]
    assert [c.kernel_size for c in convs] == [(1, 1), (kernel, kernel), (1, 1)]
    assert type(convs[1]) is middle_type
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in projector) == 3
    assert sum(isinstance(m, nn.ReLU) for m in projector) == 3


@pytest.mark.parametrize(("kind", "middle"), [("bottleneck", 1), ("bottleneck_bn_each", 3)])
def test_bottleneck_upsamples_in_the_middle(kind: str, middle: int) -> None:
    projector = make_projector(kind, *SHAPE_PAIRS["up"])
    assert isinstance(projector[middle], nn.ConvTranspose2d)
    assert (projector[middle].bias is not None) == (kind == "bottleneck")


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [
        ((2, 6, 12, 12), (2, 10, 4, 4)),  # ratio 3
        ((2, 6, 4, 4), (2, 10, 12, 12)),  # ratio 1/3
        ((2, 6, 8, 4), (2, 10, 4, 4)),  # 2× along H only
        ((2, 6, 7, 7), (2, 10, 4, 4)),  # not an exact ratio
    ],
)
def test_unsupported_ratio_errors(student_shape: tuple, teacher_shape: tuple) -> None:
    with pytest.raises(ValueError, match="Supported") as info:
        make_projector("conv1x1", student_shape, teacher_shape)
    message = str(info.value)
    assert str(student_shape) in message and str(teacher_shape) in message
    assert "twice" in message and "half" in message


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"), [((2, 16), (2, 16)), ((2, 6, 8, 8), (2, 10, 8)), ((6, 8, 8), (10, 8, 8))]
)
def test_non_4d_errors(student_shape: tuple, teacher_shape: tuple) -> None:
    with pytest.raises(ValueError, match="4-D"):
        make_projector("conv1x1", student_shape, teacher_shape)


def test_unknown_kind_errors() -> None:
    with pytest.raises(ValueError, match="unknown projector kind 'mlp'"):
        make_projector("mlp", (2, 6, 8, 8), (2, 10, 8, 8))


def test_spatial_relation() -> None:
    assert [spatial_relation(*SHAPE_PAIRS[p]) for p in ("same", "down", "up")] == ["same", "down", "up"]


class _Probe(ProjectedFeatureLoss):
    name = "probe"

    def forward(self, ctx: DistillationContext) -> dict[str, torch.Tensor]:
        projected, teacher = self.project(ctx)
        return {"probe": (projected - teacher).abs().mean()}


def _ctx(student: torch.Tensor, teacher: torch.Tensor) -> DistillationContext:
    logits = torch.zeros(student.shape[0], 3)
    return DistillationContext(
        student_logits=logits,
        teacher_logits=logits,
        target=torch.zeros(student.shape[0], dtype=torch.long),
        student_features={"s.layer": student},
        teacher_features={"t.layer": teacher},
    )


def test_projected_loss_build_is_idempotent_and_keeps_mode() -> None:
    loss = _Probe("s.layer", "t.layer", projector="bottleneck")
    assert loss.student_paths == ("s.layer",) and loss.teacher_paths == ("t.layer",)
    assert not loss.is_built
    loss.eval()
    loss.build({"s.layer": torch.randn(1, 6, 8, 8)}, {"t.layer": torch.randn(1, 10, 4, 4)})
    projector = loss.projector
    assert loss.is_built and not projector.training
    loss.build({"s.layer": torch.randn(1, 6, 8, 8)}, {"t.layer": torch.randn(1, 10, 4, 4)})
    assert loss.projector is projector
    assert set(dict(loss.named_parameters())) == {f"projector.{n}" for n, _ in projector.named_parameters()}
    loss.train()
    assert loss(_ctx(torch.randn(2, 6, 8, 8), torch.randn(2, 10, 4, 4)))["probe"].isfinite()


def test_projected_loss_errors() -> None:
    with pytest.raises(ValueError, match="unknown projector 'mlp'"):
        _Probe("s.layer", "t.layer", projector="mlp")
    with pytest.raises(ValueError, match="student_path"):
        _Probe("", "t.layer")
    loss = _Probe("s.layer", "t.layer")
    with pytest.raises(RuntimeError, match=r"before build\(\)"):
        loss(_ctx(torch.randn(2, 6, 8, 8), torch.randn(2, 10, 8, 8)))
    with pytest.raises(ValueError, match=r"no student feature captured at 's.layer'.*\['other'\]"):
        loss.build({"other": torch.randn(1, 6, 8, 8)}, {"t.layer": torch.randn(1, 10, 8, 8)})
    with pytest.raises(ValueError, match="Supported"):
        loss.build({"s.layer": torch.randn(1, 6, 9, 9)}, {"t.layer": torch.randn(1, 10, 3, 3)})
    assert not loss.is_built
