"""DKD against a per-sample hand-written formula, its warm-up and decomposition; FitNet equals an MSE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wkd_lightning.losses.base import DistillationContext, plugin_terms
from wkd_lightning.losses.dkd import DKD, dkd_loss
from wkd_lightning.losses.fitnet import FitNet, fitnet_loss
from wkd_lightning.losses.kd import kd_loss
from wkd_lightning.losses.schedule import Constant


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def _dkd_reference(zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, temperature: float) -> tuple[float, float]:
    """Zhao et al.'s TCKD and NCKD, one sample at a time in Python floats (no α/β)."""
    tckd = nckd = 0.0
    for s_row, t_row, label in zip(zs.double().tolist(), zt.double().tolist(), y.tolist(), strict=True):
        p_s = _softmax([v / temperature for v in s_row])
        p_t = _softmax([v / temperature for v in t_row])
        tckd += _kl([p_t[label], 1 - p_t[label]], [p_s[label], 1 - p_s[label]])
        keep = [k for k in range(len(s_row)) if k != label]
        nckd += _kl(_softmax([t_row[k] / temperature for k in keep]), _softmax([s_row[k] / temperature for k in keep]))
    return tckd * temperature**2 / len(y), nckd * temperature**2 / len(y)


@pytest.mark.parametrize(("temperature", "classes"), [(4.0, 10), (1.0, 3), (2.0, 100), (4.0, 2)])
def test_dkd_matches_per_sample_formula(temperature: float, classes: int) -> None:
    torch.manual_seed(classes)
    zs, zt = torch.randn(6, classes) * 3, torch.randn(6, classes) * 3
    y = torch.randint(0, classes, (6,))
    tckd, nckd = dkd_loss(zs, zt, y, alpha=1.5, beta=8.0, temperature=temperature)
    ref_tckd, ref_nckd = _dkd_reference(zs, zt, y, temperature)
    assert tckd.item() == pytest.approx(1.5 * ref_tckd, rel=1e-5, abs=1e-7)
    assert nckd.item() == pytest.approx(8.0 * ref_nckd, rel=1e-5, abs=1e-7)


def test_dkd_decomposes_kd() -> None:
    # With α = β = 1, per sample: KL(p_t ‖ p_s) = TCKD + (1 − p_t,y) · NCKD (DKD paper, Eq. 3-4).
    torch.manual_seed(0)
    zs, zt, y = torch.randn(5, 7), torch.randn(5, 7), torch.randint(0, 7, (5,))
    for i in range(5):
        tckd, nckd = dkd_loss(zs[i : i + 1], zt[i : i + 1], y[i : i + 1], alpha=1.0, beta=1.0, temperature=2.0)
        p_target = torch.softmax(zt[i] / 2.0, 0)[y[i]]
        torch.testing.assert_close(tckd + (1 - p_target) * nckd, kd_loss(zs[i : i + 1], zt[i : i + 1], 2.0))


def test_dkd_identical_logits_give_zero_and_equal_weights_scale() -> None:
    z, y = torch.randn(4, 10, requires_grad=True), torch.randint(0, 10, (4,))
    tckd, nckd = dkd_loss(z, z.detach(), y, alpha=1.0, beta=1.0)
    (tckd + nckd).backward()
    assert tckd.item() == pytest.approx(0.0, abs=1e-6) and nckd.item() == pytest.approx(0.0, abs=1e-6)
    assert z.grad.abs().max() < 1e-5
    zt = torch.randn(4, 10)
    raw = dkd_loss(z, zt, y, alpha=1.0, beta=1.0)
    scaled = dkd_loss(z, zt, y, alpha=3.0, beta=3.0)
    torch.testing.assert_close(scaled[0], 3 * raw[0])
    torch.testing.assert_close(scaled[1], 3 * raw[1])


def test_dkd_extreme_logits_are_finite() -> None:
    zs = torch.tensor([[80.0, -80.0, 0.0], [-50.0, 60.0, 1.0]], requires_grad=True)
    zt = torch.tensor([[90.0, -70.0, 3.0], [0.0, 200.0, -200.0]])
    y = torch.tensor([0, 1])
    tckd, nckd = dkd_loss(zs, zt, y, temperature=1.0)
    (tckd + nckd).backward()
    assert tckd.isfinite() and nckd.isfinite() and zs.grad.isfinite().all()
    _, ref_nckd = _dkd_reference(zs.detach(), zt, y, 1.0)  # the reference's 1 − p_y loses TCKD's precision here
    assert nckd.item() == pytest.approx(8.0 * ref_nckd, rel=1e-4)


def test_dkd_teacher_detached_and_fp32_under_autocast() -> None:
    zs = torch.randn(3, 5, requires_grad=True)
    zt = torch.randn(3, 5, requires_grad=True)
    y = torch.tensor([0, 2, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tckd, nckd = dkd_loss(zs.bfloat16(), zt.bfloat16(), y)
    assert tckd.dtype == nckd.dtype == torch.float32
    (tckd + nckd).backward()
    assert zt.grad is None and zs.grad is not None


def _logit_ctx(zs: torch.Tensor, zt: torch.Tensor | None, target: torch.Tensor, epoch: int) -> DistillationContext:
    return DistillationContext(student_logits=zs, teacher_logits=zt, target=target, epoch=epoch, max_epochs=240)


def test_dkd_plugin_warmup() -> None:
    torch.manual_seed(1)
    zs, zt, y = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    loss = DKD(alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20)
    assert loss.name == "dkd"
    tckd, nckd = dkd_loss(zs, zt, y, 1.0, 8.0, 4.0)
    for epoch, factor in ((1, 1 / 20), (5, 0.25), (20, 1.0), (200, 1.0)):
        raw = loss(_logit_ctx(zs, zt, y, epoch))  # the plug-in's terms, before its weight
        assert set(raw) == {"tckd", "nckd"}
        torch.testing.assert_close(raw["tckd"], tckd)
        terms = plugin_terms([loss], _logit_ctx(zs, zt, y, epoch)).weighted  # as they enter the loss
        torch.testing.assert_close(terms["dkd/tckd"], factor * tckd)
        torch.testing.assert_close(terms["dkd/nckd"], factor * nckd)
    # An explicit schedule replaces the warm-up; soft labels use their argmax.
    constant = DKD(weight=2.0, schedule=Constant())
    soft = F.one_hot(y, 10).float() * 0.9 + 0.01
    torch.testing.assert_close(plugin_terms([constant], _logit_ctx(zs, zt, soft, 1)).weighted["dkd/nckd"], 2.0 * nckd)


def test_dkd_plugin_needs_teacher() -> None:
    with pytest.raises(ValueError, match="needs teacher logits"):
        DKD()(_logit_ctx(torch.randn(2, 3), None, torch.tensor([0, 1]), 1))


# ------------------------------------------------------------------------------------------------------- FitNet


def test_fitnet_loss_is_mse() -> None:
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(fitnet_loss(a, b), ((a - b) ** 2).mean())
    with pytest.raises(ValueError, match="must match"):
        fitnet_loss(a, b[:, :2])


def _feature_ctx(student: torch.Tensor, teacher: torch.Tensor) -> DistillationContext:
    logits = torch.zeros(student.shape[0], 5)
    return DistillationContext(
        student_logits=logits,
        teacher_logits=logits,
        target=torch.zeros(student.shape[0], dtype=torch.long),
        student_features={"block2": student},
        teacher_features={"layer3": teacher},
    )


def test_fitnet_plugin() -> None:
    loss = FitNet("block2", "layer3")
    assert loss.name == "fitnet" and loss.weight == 100.0 and loss.projector_kind == "conv1x1"
    with pytest.raises(RuntimeError, match=r"FitNet.forward was called before build\(\)"):
        loss(_feature_ctx(torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)))
    loss.build({"block2": torch.randn(1, 4, 8, 8)}, {"layer3": torch.randn(1, 6, 4, 4)})
    student = torch.randn(2, 4, 8, 8, requires_grad=True)
    teacher = torch.randn(2, 6, 4, 4, requires_grad=True)
    assert set(loss(_feature_ctx(student, teacher))) == {"hint"}
    terms = plugin_terms([loss], _feature_ctx(student, teacher)).weighted
    torch.testing.assert_close(terms["fitnet/hint"], 100.0 * F.mse_loss(loss.projector(student), teacher))
    terms["fitnet/hint"].backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    assert all(p.grad is not None for p in loss.parameters())
