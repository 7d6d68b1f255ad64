"""WKD-F (SPEC §4): the Gaussian Wasserstein terms against loops/POT, and the plug-in."""

from __future__ import annotations

import math

import numpy as np
import ot.gaussian
import pytest
import torch
import torch.nn.functional as F

from wkd_lightning.losses.base import DistillationContext, plugin_terms
from wkd_lightning.losses.schedule import CosineDecay
from wkd_lightning.losses.wkd_feature import (
    WKDFeature,
    bures_squared,
    cell_bounds,
    cell_mean_var,
    gaussian_wd_full_cov,
    gaussian_wd_loss,
)

EPS = 1e-5


def _bounds(size: int, grid: int) -> list[tuple[int, int]]:
    """Adaptive-pool cell boundaries, written independently: [floor(i·H/g), ceil((i+1)·H/g))."""
    return [(math.floor(i * size / grid), math.ceil((i + 1) * size / grid)) for i in range(grid)]


def _loop_reference(student: torch.Tensor, teacher: torch.Tensor, grid: int) -> tuple[float, float]:
    """Plain loop over samples, channels and cells, in fp64."""
    b, c, h, w = student.shape
    loss_mean = loss_std = 0.0
    for i in range(b):
        for j in range(c):
            for r0, r1 in _bounds(h, grid):
                for c0, c1 in _bounds(w, grid):
                    cs = student[i, j, r0:r1, c0:c1].double().flatten()
                    ct = teacher[i, j, r0:r1, c0:c1].double().flatten()
                    loss_mean += float(cs.mean() - ct.mean()) ** 2
                    sigma_s = math.sqrt(float(cs.var(unbiased=True)) + EPS)
                    sigma_t = math.sqrt(float(ct.var(unbiased=True)) + EPS)
                    loss_std += (sigma_s - sigma_t) ** 2
    return loss_mean / (grid * grid * b), loss_std / (grid * grid * b)


@pytest.mark.parametrize(("h", "w", "grid"), [(7, 7, 4), (8, 8, 4), (8, 8, 1), (7, 7, 1), (7, 5, 2), (4, 4, 3)])
def test_diagonal_matches_cell_loop(h: int, w: int, grid: int) -> None:
    torch.manual_seed(h * 10 + grid)
    student = torch.randn(3, 4, h, w) * 2 + 1
    teacher = torch.relu(torch.randn(3, 4, h, w))
    loss_mean, loss_std = gaussian_wd_loss(student, teacher, grid)
    ref_mean, ref_std = _loop_reference(student, teacher, grid)
    assert loss_mean.item() == pytest.approx(ref_mean, rel=1e-5, abs=1e-5)
    assert loss_std.item() == pytest.approx(ref_std, rel=1e-5, abs=1e-5)


def test_cell_bounds_are_adaptive_pooling() -> None:
    assert cell_bounds(7, 4) == [(0, 2), (1, 4), (3, 6), (5, 7)]
    x = torch.randn(2, 3, 7, 9)
    for grid in (1, 2, 3, 4, 5):
        mean, _ = cell_mean_var(x, grid)
        torch.testing.assert_close(mean, F.adaptive_avg_pool2d(x, grid))


def test_hand_computed_case() -> None:
    # One sample, two channels, 1×2 maps. Channel 0: student [0, 2] (μ 1, unbiased var 2), teacher [1, 1] (μ 1, var 0).
    # Channel 1: student [1, 1] (μ 1, var 0), teacher [3, 5] (μ 4, var 2).
    student = torch.tensor([[[[0.0, 2.0]], [[1.0, 1.0]]]])
    teacher = torch.tensor([[[[1.0, 1.0]], [[3.0, 5.0]]]])
    loss_mean, loss_std = gaussian_wd_loss(student, teacher)
    assert loss_mean.item() == pytest.approx(9.0)
    expected_std = 2 * (math.sqrt(2 + EPS) - math.sqrt(EPS)) ** 2
    assert loss_std.item() == pytest.approx(expected_std, rel=1e-6)
    # The same pair as two samples of one channel: sums over samples are divided by B = 2.
    loss_mean_b, loss_std_b = gaussian_wd_loss(student.transpose(0, 1), teacher.transpose(0, 1))
    assert loss_mean_b.item() == pytest.approx(4.5) and loss_std_b.item() == pytest.approx(expected_std / 2, rel=1e-6)


@pytest.mark.parametrize("grid", [1, 2])
def test_constant_maps_give_finite_loss_and_gradient(grid: int) -> None:
    student = torch.full((2, 3, 4, 4), 0.7, requires_grad=True)
    for teacher in (torch.full((2, 3, 4, 4), 0.2), torch.randn(2, 3, 4, 4)):
        student.grad = None
        loss_mean, loss_std = gaussian_wd_loss(student, teacher, grid)
        (loss_mean + loss_std).backward()
        assert loss_mean.isfinite() and loss_std.isfinite()
        assert student.grad is not None and student.grad.isfinite().all()
    both_constant = gaussian_wd_loss(student, torch.full((2, 3, 4, 4), 0.2), grid)[1]
    assert both_constant.item() == pytest.approx(0.0, abs=1e-9)


def test_one_element_cells_have_zero_variance() -> None:
    student = torch.randn(2, 3, 2, 2, requires_grad=True)
    loss_mean, loss_std = gaussian_wd_loss(student, torch.randn(2, 3, 2, 2), grid=2)
    assert loss_std.item() == 0.0
    (loss_mean + loss_std).backward()
    assert student.grad.isfinite().all()


def test_large_mean_is_accurate() -> None:
    # A two-pass variance keeps the σ terms accurate when the mean dwarfs the spread.
    torch.manual_seed(1)
    student = 1000 + 0.01 * torch.randn(2, 3, 7, 7)
    teacher = 1000 + 0.02 * torch.randn(2, 3, 7, 7)
    _, ref_std = _loop_reference(student, teacher, 4)
    assert gaussian_wd_loss(student, teacher, 4)[1].item() == pytest.approx(ref_std, rel=1e-3)


def test_teacher_is_detached() -> None:
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 4, 4, requires_grad=True)
    for fn in (gaussian_wd_loss, gaussian_wd_full_cov):
        sum(fn(student, teacher, 2)).backward()
        assert teacher.grad is None and student.grad.abs().sum() > 0


def test_fp32_under_bf16_autocast() -> None:
    torch.manual_seed(2)
    student = torch.randn(2, 4, 7, 7).bfloat16()
    teacher = torch.randn(2, 4, 7, 7).bfloat16()
    expected = gaussian_wd_loss(student.float(), teacher.float(), 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for got, want in zip(gaussian_wd_loss(student, teacher, 4), expected, strict=True):
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, want)
        for got in gaussian_wd_full_cov(student, teacher, 2):
            assert got.dtype == torch.float32 and got.isfinite()


# ----------------------------------------------------------------------------------------------- full covariance


def _pot_reference(student: torch.Tensor, teacher: torch.Tensor, grid: int) -> tuple[float, float]:
    """Mean over samples and cells of POT's ‖Δμ‖² and squared Bures-Wasserstein, ridge 1e-5·I on both sides."""
    b, c, h, w = student.shape
    means, totals = [], []
    for i in range(b):
        for r0, r1 in _bounds(h, grid):
            for c0, c1 in _bounds(w, grid):
                xs = student[i, :, r0:r1, c0:c1].double().reshape(c, -1).numpy()
                xt = teacher[i, :, r0:r1, c0:c1].double().reshape(c, -1).numpy()
                cov_s = np.cov(xs).reshape(c, c) + EPS * np.eye(c)
                cov_t = np.cov(xt).reshape(c, c) + EPS * np.eye(c)
                mu_s, mu_t = xs.mean(1), xt.mean(1)
                totals.append(float(ot.gaussian.bures_wasserstein_distance(mu_s, mu_t, cov_s, cov_t)) ** 2)
                means.append(float(((mu_s - mu_t) ** 2).sum()))
    return float(np.mean(means)), float(np.mean(totals)) - float(np.mean(means))


@pytest.mark.parametrize(("c", "h", "grid"), [(5, 4, 1), (6, 7, 2), (12, 3, 1)])
def test_full_cov_matches_pot(c: int, h: int, grid: int) -> None:
    torch.manual_seed(c)
    student = torch.randn(3, c, h, h) + torch.randn(3, c, 1, 1)
    teacher = torch.relu(torch.randn(3, c, h, h))
    loss_mean, loss_cov = gaussian_wd_full_cov(student, teacher, grid)
    ref_mean, ref_cov = _pot_reference(student, teacher, grid)
    assert loss_mean.item() == pytest.approx(ref_mean, rel=1e-5)
    assert loss_cov.item() == pytest.approx(ref_cov, rel=1e-5, abs=1e-6)
    # The mean term is the diagonal variant's.
    assert loss_mean.item() == pytest.approx(gaussian_wd_loss(student, teacher, grid)[0].item(), rel=1e-5)


def _orthogonal_channels(scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """B×4×2×2 maps whose channels are scaled zero-mean Hadamard rows: their sample covariance is exactly diagonal."""
    hadamard = torch.tensor([[1.0, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]])[1:]  # 3 zero-mean rows
    pattern = torch.cat([hadamard, hadamard[:1]])  # 4 channels; channels 0 and 3 correlated unless a scale is 0
    return (scales[..., None] * pattern + means[..., None]).reshape(-1, 4, 2, 2)


def test_full_cov_equals_diagonal_when_covariances_are_diagonal() -> None:
    # Relation tested: if both sample covariances are diagonal, Σ + 1e-5·I is diagonal with entries var + 1e-5, so the
    # Bures term is Σ_c (sqrt(var_s,c + 1e-5) − sqrt(var_t,c + 1e-5))², exactly the diagonal L_std.
    torch.manual_seed(3)
    scales_s = torch.rand(2, 4) * 2
    scales_t = torch.rand(2, 4) * 2
    scales_s[:, 3] = 0  # channel 3 constant: keeps the covariance diagonal
    scales_t[:, 3] = 0
    student = _orthogonal_channels(scales_s, torch.randn(2, 4))
    teacher = _orthogonal_channels(scales_t, torch.randn(2, 4))
    full = gaussian_wd_full_cov(student, teacher)
    diag = gaussian_wd_loss(student, teacher)
    torch.testing.assert_close(full[0], diag[0])
    torch.testing.assert_close(full[1], diag[1], rtol=1e-5, atol=1e-7)
    # With a correlated pair (channels 0 and 3 share a pattern) the two differ: the full form sees the correlation.
    scales_s[:, 3] = 1.0
    student = _orthogonal_channels(scales_s, torch.randn(2, 4))
    assert not torch.allclose(gaussian_wd_full_cov(student, teacher)[1], gaussian_wd_loss(student, teacher)[1])


def test_full_cov_equals_diagonal_for_one_channel() -> None:
    student, teacher = torch.randn(3, 1, 7, 7), torch.randn(3, 1, 7, 7) * 3
    for grid in (1, 4):
        full = gaussian_wd_full_cov(student, teacher, grid)
        diag = gaussian_wd_loss(student, teacher, grid)
        torch.testing.assert_close(full[0], diag[0])
        torch.testing.assert_close(full[1], diag[1])


@pytest.mark.parametrize(
    "student",
    [
        torch.full((2, 16, 3, 3), 0.5),  # constant
        torch.randn(2, 16, 2, 2),  # rank 3 covariance in 16 dimensions: repeated eigenvalues
        torch.randn(2, 1, 3, 3).expand(2, 16, 3, 3),  # identical channels: a rank-1 covariance
    ],
)
def test_full_cov_gradient_is_finite(student: torch.Tensor) -> None:
    student = student.clone().requires_grad_(True)
    teacher = torch.randn(student.shape)
    teacher[:, 8:] = 0.3  # a degenerate teacher too
    for grid in (1, 2):
        student.grad = None
        loss_mean, loss_cov = gaussian_wd_full_cov(student, teacher, grid)
        (loss_mean + loss_cov).backward()
        assert loss_cov.isfinite() and loss_cov >= 0
        assert student.grad.isfinite().all()


def test_full_cov_identical_maps_give_zero() -> None:
    x = torch.randn(2, 6, 4, 4)
    loss_mean, loss_cov = gaussian_wd_full_cov(x, x.clone())
    assert loss_mean.item() == 0.0 and loss_cov.item() == pytest.approx(0.0, abs=1e-6)


def test_bures_gradient_matches_finite_differences() -> None:
    torch.manual_seed(4)
    a = torch.randn(2, 5, 3, dtype=torch.float64)
    cov_t = a @ a.mT + 1e-3 * torch.eye(5, dtype=torch.float64)
    root = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)

    def fn(r: torch.Tensor) -> torch.Tensor:
        return bures_squared(r @ r.mT + 1e-3 * torch.eye(5, dtype=torch.float64), cov_t)

    assert torch.autograd.gradcheck(fn, (root,))


# ------------------------------------------------------------------------------------------------------ plug-in


def _ctx(student: torch.Tensor, teacher: torch.Tensor, epoch: int = 1, max_epochs: int = 1) -> DistillationContext:
    logits = torch.zeros(student.shape[0], 5)
    return DistillationContext(
        student_logits=logits,
        teacher_logits=logits,
        target=torch.zeros(student.shape[0], dtype=torch.long),
        student_features={"layer3": student},
        teacher_features={"layer4.1": teacher},
        epoch=epoch,
        max_epochs=max_epochs,
    )


def _built(**kwargs: object) -> WKDFeature:
    torch.manual_seed(0)
    loss = WKDFeature("layer3", "layer4.1", **kwargs)
    loss.build({"layer3": torch.randn(1, 6, 8, 8)}, {"layer4.1": torch.randn(1, 10, 4, 4)})
    return loss


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_plugin_forward_and_gradients(covariance: str) -> None:
    loss = _built(grid=2, mean_weight=3.0, weight=0.5, covariance=covariance)
    assert loss.name == "wkd_f" and loss.student_paths == ("layer3",) and loss.teacher_paths == ("layer4.1",)
    student = torch.randn(4, 6, 8, 8, requires_grad=True)
    teacher = torch.relu(torch.randn(4, 10, 4, 4)).requires_grad_(True)
    assert set(loss(_ctx(student, teacher))) == {"feat"}
    terms = plugin_terms([loss], _ctx(student, teacher)).weighted
    fn = gaussian_wd_loss if covariance == "diagonal" else gaussian_wd_full_cov
    loss_mean, loss_cov = fn(loss.projector(student), teacher, 2)
    torch.testing.assert_close(terms["wkd_f/feat"], 0.5 * (3.0 * loss_mean + loss_cov))
    terms["wkd_f/feat"].backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    for name, param in loss.named_parameters():
        assert name.startswith("projector.")
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_plugin_schedule() -> None:
    loss = _built(weight=1.0, schedule=CosineDecay(start_epoch=150))
    student, teacher = torch.randn(2, 6, 8, 8), torch.randn(2, 10, 4, 4)
    full, half, last = (
        plugin_terms([loss], _ctx(student, teacher, epoch=e, max_epochs=240)).weighted["wkd_f/feat"]
        for e in (150, 195, 240)
    )
    torch.testing.assert_close(half, 0.5 * full)
    assert last.item() == pytest.approx(0.0, abs=1e-7)


def test_plugin_bottleneck_projector() -> None:
    loss = _built(projector="bottleneck", grid=2)
    assert loss(_ctx(torch.randn(2, 6, 8, 8), torch.randn(2, 10, 4, 4)))["feat"].isfinite()


def test_plugin_fp32_under_bf16_autocast() -> None:
    loss = _built(grid=2)
    student = torch.randn(2, 6, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feat = loss(_ctx(student, torch.randn(2, 10, 4, 4).bfloat16()))["feat"]
    assert feat.dtype == torch.float32 and feat.isfinite()
    feat.backward()
    assert student.grad.isfinite().all()


def test_plugin_forward_before_build_errors() -> None:
    loss = WKDFeature("layer3", "layer4.1")
    with pytest.raises(RuntimeError, match=r"WKDFeature.forward was called before build\(\)"):
        loss(_ctx(torch.randn(2, 6, 8, 8), torch.randn(2, 10, 4, 4)))


def test_plugin_missing_feature_errors() -> None:
    loss = _built()
    ctx = _ctx(torch.randn(2, 6, 8, 8), torch.randn(2, 10, 4, 4))
    ctx = DistillationContext(ctx.student_logits, ctx.teacher_logits, ctx.target, ctx.student_features, {})
    with pytest.raises(ValueError, match=r"no teacher feature captured at 'layer4\.1'"):
        loss(ctx)
