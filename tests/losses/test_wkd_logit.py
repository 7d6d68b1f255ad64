"""WKD-L (SPEC §1): the fast shared-kernel form against a per-sample oracle and POT, numerics, errors, plug-in."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from wkd_lightning.losses import WKDLogit, load_cost, sharpen_cost, uniform_cost, wkd_logit_loss
from wkd_lightning.losses.base import DistillationContext, plugin_terms
from wkd_lightning.losses.schedule import CosineDecay
from wkd_lightning.losses.sinkhorn import gibbs_kernel, initial_scaling, sinkhorn_cost, sinkhorn_plan

from .reference_wkd_logit import reference_sinkhorn_plan, reference_wkd_logit_loss, reference_wkd_logit_loss_batched


def _random_cost(num_classes: int, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Symmetric non-negative cost with a zero diagonal."""
    d = torch.rand(num_classes, num_classes, generator=generator) * scale
    d = (d + d.t()) / 2
    return d.fill_diagonal_(0.0)


def _cost(kind: str, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "uniform":
        return uniform_cost(num_classes)
    if kind == "random":
        return _random_cost(num_classes, generator)
    return sharpen_cost(_random_cost(num_classes, generator, scale=3.0), kappa=2.0)


def _inputs(batch: int, num_classes: int, seed: int = 0, scale: float = 3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z_s = (torch.randn(batch, num_classes, generator=g, dtype=dtype) * scale).requires_grad_()
    z_t = torch.randn(batch, num_classes, generator=g, dtype=dtype) * scale
    y = torch.randint(0, num_classes, (batch,), generator=g)
    return z_s, z_t, y, g


def _assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Elementwise ``|actual − expected| ≤ rel · max|expected|`` (relative to the tensor's scale)."""
    scale = float(expected.abs().max())
    err = float((actual - expected).abs().max())
    assert err <= rel * scale + 1e-30, f"max abs error {err:.3g} vs scale {scale:.3g} (allowed {rel:g} relative)"


# ----------------------------------------------------------------------------------------------------------------
# The fast form equals the per-sample released algorithm.


@pytest.mark.parametrize("num_classes", [2, 3, 10, 100, 1000])
@pytest.mark.parametrize("cost_kind", ["uniform", "random", "sharpened"])
def test_fast_form_matches_per_sample_reference(num_classes: int, cost_kind: str) -> None:
    batch = 2 if num_classes == 1000 else 6
    temperatures = [2.0] if num_classes == 1000 else [1.0, 2.0, 4.0, 8.0]
    z_s, z_t, y, g = _inputs(batch, num_classes, seed=num_classes)
    cost = _cost(cost_kind, num_classes, g)
    for temperature in temperatures:
        l_t, w = wkd_logit_loss(z_s, z_t, y, cost, temperature)
        (grad,) = torch.autograd.grad(l_t + 7.0 * w, z_s)
        l_t_ref, w_ref = reference_wkd_logit_loss(z_s, z_t, y, cost, temperature)
        (grad_ref,) = torch.autograd.grad(l_t_ref + 7.0 * w_ref, z_s)
        assert l_t.dtype == w.dtype == torch.float32
        _assert_rel_close(l_t.detach(), l_t_ref.detach(), 1e-5)
        _assert_rel_close(w.detach(), w_ref.detach(), 1e-5)
        _assert_rel_close(grad, grad_ref, 1e-5)
        # The WD term on its own (its gradient is small next to L_t's).
        (grad_w,) = torch.autograd.grad(wkd_logit_loss(z_s, z_t, y, cost, temperature)[1], z_s)
        (grad_w_ref,) = torch.autograd.grad(reference_wkd_logit_loss(z_s, z_t, y, cost, temperature)[1], z_s)
        _assert_rel_close(grad_w, grad_w_ref, 1e-5)


def test_batched_reference_matches_loop_reference() -> None:
    z_s, z_t, y, g = _inputs(5, 9, seed=2, dtype=torch.float64)
    cost = _cost("sharpened", 9, g).double()
    loop = reference_wkd_logit_loss(z_s, z_t, y, cost, 2.0)
    batched = reference_wkd_logit_loss_batched(z_s, z_t, y, cost, 2.0)
    for x, x_ref in zip(batched, loop, strict=True):
        torch.testing.assert_close(x, x_ref, rtol=1e-12, atol=0)
    grads = [torch.autograd.grad(sum(terms), z_s)[0] for terms in (batched, loop)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-15)


def test_fast_form_matches_reference_with_other_eps_and_iters() -> None:
    z_s, z_t, y, g = _inputs(5, 20, seed=3)
    cost = _cost("sharpened", 20, g)
    for eps, iters in [(0.02, 1), (0.1, 3), (0.5, 25)]:
        w = wkd_logit_loss(z_s, z_t, y, cost, 4.0, sinkhorn_eps=eps, sinkhorn_iters=iters)[1]
        w_ref = reference_wkd_logit_loss(z_s, z_t, y, cost, 4.0, eps=eps, iters=iters)[1]
        _assert_rel_close(w.detach(), w_ref.detach(), 1e-5)


def test_released_stabilizer_terms_are_kept() -> None:
    """On a problem where the two +1e-8 terms matter, the fast form follows the released (not textbook) iteration."""
    z_s, z_t, y, g = _inputs(4, 10, seed=10, scale=10.0)
    cost = sharpen_cost(_random_cost(10, g, scale=3.0), 1.0)
    w = wkd_logit_loss(z_s, z_t, y, cost, 1.0)[1]
    (grad,) = torch.autograd.grad(w, z_s)
    w_ref = reference_wkd_logit_loss(z_s, z_t, y, cost, 1.0)[1]
    (grad_ref,) = torch.autograd.grad(w_ref, z_s)
    w_textbook = reference_wkd_logit_loss(z_s, z_t, y, cost, 1.0, stabilizer=0.0)[1]
    (grad_textbook,) = torch.autograd.grad(w_textbook, z_s)
    _assert_rel_close(grad, grad_ref, 1e-5)
    assert float((grad_textbook - grad_ref).abs().max()) > 1e-3 * float(grad_ref.abs().max())
    assert abs(float(w_textbook.detach() - w_ref.detach())) > 1e-4 * abs(float(w_ref.detach()))


def test_plan_matches_reference_and_has_zero_target_row_and_column() -> None:
    num_classes, batch = 7, 3
    z_s, z_t, y, g = _inputs(batch, num_classes, seed=5)
    cost_m = torch.relu(_cost("random", num_classes, g)) + 1e-8
    mask = F.one_hot(y, num_classes).bool()
    a = F.softmax((z_s.detach() / 2).masked_fill(mask, -math.inf), dim=1)
    b = F.softmax((z_t / 2).masked_fill(mask, -math.inf), dim=1)
    kernel, kernel_cost = gibbs_kernel(cost_m, 0.05)
    plan = sinkhorn_plan(a, b, initial_scaling(mask), kernel, 10)
    w = sinkhorn_cost(a, b, initial_scaling(mask), kernel, kernel_cost, 10)
    for k in range(batch):
        keep = torch.tensor([c for c in range(num_classes) if c != int(y[k])])
        assert torch.all(plan[k, int(y[k])] == 0) and torch.all(plan[k, :, int(y[k])] == 0)
        ref = reference_sinkhorn_plan(a[k, keep], b[k, keep], cost_m[keep][:, keep], 0.05, 10)
        torch.testing.assert_close(plan[k][keep][:, keep], ref, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(w, (plan * cost_m).sum(dim=(1, 2)), rtol=1e-5, atol=0.0)


# ----------------------------------------------------------------------------------------------------------------
# Gradients in float64.


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_gradcheck_float64(num_classes: int) -> None:
    z_s, z_t, y, g = _inputs(3, num_classes, seed=11, scale=1.5, dtype=torch.float64)
    cost = _cost("random", num_classes, g).double()

    def fn(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return wkd_logit_loss(logits, z_t, y, cost, 2.0, sinkhorn_eps=0.1)

    assert fn(z_s)[0].dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (z_s,))


def test_gradcheck_float64_large_cost() -> None:
    num_classes = 4
    z_s, z_t, y, g = _inputs(3, num_classes, seed=12, scale=1.5, dtype=torch.float64)
    cost = _random_cost(num_classes, g, scale=12.0).double()  # max M/ε up to 240: a nearly empty kernel
    assert torch.autograd.gradcheck(lambda logits: wkd_logit_loss(logits, z_t, y, cost, 2.0)[1], (z_s,))


def test_double_backward_is_refused_clearly_and_first_order_with_a_graph_still_works() -> None:
    """The hand-written backward computes first-order gradients only: a second one says so instead of being wrong."""
    z_s, z_t, y, g = _inputs(3, 5, seed=7, dtype=torch.float64)
    cost = _random_cost(5, g).double()
    (grad,) = torch.autograd.grad(wkd_logit_loss(z_s, z_t, y, cost, 2.0)[1], z_s)
    (grad_graph,) = torch.autograd.grad(wkd_logit_loss(z_s, z_t, y, cost, 2.0)[1], z_s, create_graph=True)
    torch.testing.assert_close(grad_graph.detach(), grad, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        grad_graph.square().sum().backward()


# ----------------------------------------------------------------------------------------------------------------
# sinkhorn_cost on marginals with exact zeros, against the per-sample oracle.


def _plain_problem(batch: int, num_classes: int, seed: int, dtype: torch.dtype, extreme: bool):
    """Marginals with exact zeros (target entries; with ``extreme``, underflowed softmax from logits of ±1e4)."""
    g = torch.Generator().manual_seed(seed)
    z_s = torch.randn(batch, num_classes, generator=g, dtype=dtype) * 3
    z_t = torch.randn(batch, num_classes, generator=g, dtype=dtype) * 3
    y = torch.randint(0, num_classes, (batch,), generator=g)
    if extreme:
        rows = torch.arange(batch)
        z_s[rows[::2], (y[::2] + 1) % num_classes] = 1e4  # one-hot student rows
        z_t[rows[1::2], (y[1::2] + 2) % num_classes] = 1e4  # one-hot teacher rows
        z_s[1::3, ::3] = -1e4
        z_t[::4, 1::3] = -1e4
    mask = F.one_hot(y, num_classes).bool()
    a = F.softmax((z_s / 2).masked_fill(mask, -math.inf), dim=1)
    b = F.softmax((z_t / 2).masked_fill(mask, -math.inf), dim=1)
    cost_m = torch.relu(_random_cost(num_classes, g)).to(dtype) + 1e-8
    grad_w = torch.rand(batch, generator=g, dtype=dtype) + 0.5
    return a, b, y, cost_m, grad_w


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("iters", [1, 2, 3, 10])
@pytest.mark.parametrize("stabilizer", [1e-8, 0.0])
@pytest.mark.parametrize("extreme", [False, True])
def test_sinkhorn_cost_and_gradient_match_per_sample_oracle(dtype, iters, stabilizer, extreme) -> None:
    batch, num_classes, eps = 12, 40, 0.05
    a, b, y, cost_m, grad_w = _plain_problem(batch, num_classes, seed=iters, dtype=dtype, extreme=extreme)
    assert int((a == 0).sum()) >= batch and (not extreme or int((a == 0).sum()) > 100)
    a = a.requires_grad_()
    mask = F.one_hot(y, num_classes).bool()
    kernel, kernel_cost = gibbs_kernel(cost_m, eps)
    w = sinkhorn_cost(a, b, initial_scaling(mask, dtype), kernel, kernel_cost, iters, stabilizer=stabilizer)
    (grad,) = torch.autograd.grad(w, a, grad_w)
    w_ref, grad_ref = _per_sample_cost(a, b, y, cost_m, eps, iters, stabilizer, grad_w)
    assert torch.isfinite(w).all() and torch.isfinite(grad).all() and torch.isfinite(grad_ref).all()
    # fp64: without the stabilizer, extreme marginals make the gradient ill-conditioned (a different summation order
    # moves it by ~5e-11 relative); everywhere else the two agree to ~1e-15. fp32: the file's 1e-5, except the
    # gradient without the stabilizer on extreme marginals (textbook Sinkhorn, analysis only), where fp32 round-off
    # is amplified in any summation order (measured: the fp32 oracle 3 %, the batched form 20 % from the fp64 oracle
    # at 10 iterations), so only its finiteness is checked.
    rel = 1e-9 if dtype == torch.float64 else 1e-5
    _assert_rel_close(w.detach(), w_ref.detach(), rel)
    if dtype == torch.float64 or stabilizer > 0 or not extreme:
        # The reduced problems have no target entry; the batched form's gradient there never reaches the logits (the
        # masked softmax gives a_y = 0 whatever the logits).
        _assert_rel_close(grad[~mask], grad_ref[~mask], rel)


def _per_sample_cost(a, b, y, cost_m, eps: float, iters: int, stabilizer: float, grad_w):
    """``W`` of each reduced problem by the oracle, and its gradient for ``a`` weighted by ``grad_w``."""
    w = []
    for k in range(a.shape[0]):
        keep = torch.tensor([c for c in range(a.shape[1]) if c != int(y[k])])
        m = cost_m[keep][:, keep]
        w.append((reference_sinkhorn_plan(a[k, keep], b[k, keep], m, eps, iters, stabilizer) * m).sum())
    w = torch.stack(w)
    return w, torch.autograd.grad(w, a, grad_w)[0]


# ----------------------------------------------------------------------------------------------------------------
# The hand-written backward of sinkhorn_cost against autograd through the unrolled loop.


def _autograd_cost(a, b, u0, kernel, kernel_cost, iters: int, stabilizer: float) -> torch.Tensor:
    """The unrolled loop under plain autograd (written here, independent of sinkhorn_cost)."""
    u, v = u0, b
    for _ in range(iters):
        v = b / (u @ kernel + stabilizer)
        u = a / (v @ kernel.t() + stabilizer)
    return (u * (v @ kernel_cost.t())).sum(dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("iters", [1, 2, 10])
@pytest.mark.parametrize("stabilizer", [1e-8, 0.0])
@pytest.mark.parametrize("extreme", [False, True])
def test_hand_written_backward_equals_autograd_through_the_loop(dtype, iters, stabilizer, extreme) -> None:
    a, b, y, cost_m, grad_w = _plain_problem(12, 40, seed=iters, dtype=dtype, extreme=extreme)
    u0 = initial_scaling(F.one_hot(y, 40).bool(), dtype)
    kernel, kernel_cost = gibbs_kernel(cost_m, 0.05)
    a = a.requires_grad_()
    w = sinkhorn_cost(a, b, u0, kernel, kernel_cost, iters, stabilizer=stabilizer)
    assert type(w.grad_fn).__name__ == "_SinkhornCostGradientBackward"
    (grad,) = torch.autograd.grad(w, a, grad_w)
    w_ref = _autograd_cost(a, b, u0, kernel, kernel_cost, iters, stabilizer)
    (grad_ref,) = torch.autograd.grad(w_ref, a, grad_w)
    assert torch.equal(w.detach(), w_ref.detach())  # the same operations in the same order
    assert torch.isfinite(grad_ref).all() and torch.isfinite(grad).all()
    assert torch.equal(grad == 0, grad_ref == 0)
    # fp64: without the stabilizer, extreme marginals make the gradient ill-conditioned (autograd itself moves by
    # ~5e-11 relative when its matmuls are laid out differently); everywhere else the two agree to ~1e-15.
    _assert_rel_close(grad, grad_ref, 1e-9 if dtype == torch.float64 else 1e-5)


def test_hand_written_backward_gradcheck_float64() -> None:
    a, b, y, _, _ = _plain_problem(3, 6, seed=5, dtype=torch.float64, extreme=False)
    u0 = initial_scaling(F.one_hot(y, 6).bool(), torch.float64)
    kernel, kernel_cost = gibbs_kernel(torch.relu(_random_cost(6, torch.Generator().manual_seed(6))).double(), 0.2)
    fn = lambda x: sinkhorn_cost(x, b, u0, kernel, kernel_cost, 4)  # noqa: E731
    a = a.requires_grad_()
    assert type(fn(a).grad_fn).__name__ == "_SinkhornCostGradientBackward"
    assert torch.autograd.gradcheck(fn, (a,))


def test_other_gradients_run_under_plain_autograd_which_also_differentiates_twice() -> None:
    a, b, y, cost_m, grad_w = _plain_problem(4, 7, seed=8, dtype=torch.float64, extreme=False)
    u0 = initial_scaling(F.one_hot(y, 7).bool(), torch.float64)
    kernel, kernel_cost = gibbs_kernel(cost_m, 0.2)
    a, b = a.requires_grad_(), b.requires_grad_()
    w = sinkhorn_cost(a, b, u0, kernel, kernel_cost, 5)
    assert type(w.grad_fn).__name__ != "_SinkhornCostGradientBackward"
    grads = torch.autograd.grad(w, (a, b), grad_w)
    grads_ref = torch.autograd.grad(_autograd_cost(a, b, u0, kernel, kernel_cost, 5, 1e-8), (a, b), grad_w)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        _assert_rel_close(grad, grad_ref, 1e-12)
    assert torch.autograd.gradgradcheck(lambda x, y: sinkhorn_cost(x, y, u0, kernel, kernel_cost, 3), (a, b))


# ----------------------------------------------------------------------------------------------------------------
# Against POT when run to convergence without the +1e-8 terms.


def test_converged_sinkhorn_matches_pot() -> None:
    num_classes, batch, eps, temperature = 8, 4, 0.1, 2.0
    z_s, z_t, y, g = _inputs(batch, num_classes, seed=21, dtype=torch.float64)
    cost_m = torch.relu(_cost("sharpened", num_classes, g).double()) + 1e-8
    mask = F.one_hot(y, num_classes).bool()
    log_a = F.log_softmax((z_s.detach() / temperature).masked_fill(mask, -math.inf), dim=1)
    log_b = F.log_softmax((z_t / temperature).masked_fill(mask, -math.inf), dim=1)
    u0 = initial_scaling(mask, torch.float64)
    iters = 3000
    kernel, kernel_cost = gibbs_kernel(cost_m, eps)
    w = sinkhorn_cost(log_a.exp(), log_b.exp(), u0, kernel, kernel_cost, iters, stabilizer=0.0)
    for k in range(batch):
        keep = [c for c in range(num_classes) if c != int(y[k])]
        a = log_a[k, keep].exp().numpy()
        b = log_b[k, keep].exp().numpy()
        m = cost_m[keep][:, keep].numpy()
        plan = ot.sinkhorn(a, b, m, reg=eps, numItermax=100_000, stopThr=1e-13)
        np.testing.assert_allclose(plan.sum(axis=1), a, rtol=1e-9)  # POT converged
        assert float(w[k]) == pytest.approx(float(np.sum(plan * m)), rel=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# The target term, labels, precision.


def test_target_term_by_hand_and_teacher_gets_no_gradient() -> None:
    z_s = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], requires_grad=True)
    z_t = torch.tensor([[1.0, 2.0, 0.0], [0.5, -0.5, 2.5]], requires_grad=True)
    y = torch.tensor([0, 2])
    l_t, w = wkd_logit_loss(z_s, z_t, y, uniform_cost(3), 2.0)
    p_t = [
        math.exp(1.0) / (math.exp(1.0) + math.exp(2.0) + 1.0),
        math.exp(2.5) / (math.exp(0.5) + math.exp(-0.5) + math.exp(2.5)),
    ]
    log_p_s = [
        2.0 - math.log(math.exp(2.0) + math.exp(0.5) + math.exp(-1.0)),
        3.0 - math.log(1.0 + math.e + math.exp(3.0)),
    ]
    expected = -(p_t[0] * log_p_s[0] + p_t[1] * log_p_s[1]) / 2
    assert float(l_t.detach()) == pytest.approx(expected, rel=1e-6)
    (l_t + w).backward()
    assert z_t.grad is None
    assert z_s.grad is not None and torch.isfinite(z_s.grad).all()


def test_soft_targets_use_argmax() -> None:
    z_s, z_t, y, _ = _inputs(5, 6, seed=31)
    soft = 0.7 * F.one_hot(y, 6).float() + 0.3 * F.one_hot((y + 1) % 6, 6).float()
    cost = uniform_cost(6)
    hard_terms = wkd_logit_loss(z_s, z_t, y, cost, 2.0)
    soft_terms = wkd_logit_loss(z_s, z_t, soft, cost, 2.0)
    for hard, soft_term in zip(hard_terms, soft_terms, strict=True):
        assert torch.equal(hard, soft_term)


def test_bf16_autocast_computes_in_fp32() -> None:
    z_s, z_t, y, g = _inputs(4, 10, seed=41)
    cost = _cost("sharpened", 10, g)
    z_s16, z_t16 = z_s.detach().bfloat16().requires_grad_(), z_t.bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        l_t, w = wkd_logit_loss(z_s16, z_t16, y, cost, 2.0)
    assert l_t.dtype == w.dtype == torch.float32
    z_up = z_s16.detach().float().requires_grad_()
    l_t32, w32 = wkd_logit_loss(z_up, z_t16.float(), y, cost, 2.0)
    torch.testing.assert_close(l_t, l_t32, rtol=0, atol=0)
    torch.testing.assert_close(w, w32, rtol=0, atol=0)
    (l_t + w).backward()
    (l_t32 + w32).backward()
    assert z_s16.grad is not None and z_s16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(z_s16.grad, z_up.grad.bfloat16())


# ----------------------------------------------------------------------------------------------------------------
# Costs whose kernel underflows in fp32: the one plain path keeps the released values.


def _two_band_cost(num_classes: int, generator: torch.Generator, high: float) -> torch.Tensor:
    """Symmetric cost in [0, high] with no entry in [4, 6) (M/ε in [80, 120) at ε = 0.05), zero diagonal: its fp32
    kernel holds normal numbers and exact zeros (``exp(−120)``), no subnormal entry."""
    d = torch.rand(num_classes, num_classes, generator=generator) * high
    d = (d + d.t()) / 2
    return torch.where((d >= 4) & (d < 6), d + 2, d).fill_diagonal_(0.0)


def _fp32_kernel_off_diagonal(scale: float) -> float:
    return float(torch.exp(torch.tensor(-(scale + 1e-8) / 0.05, dtype=torch.float32)))


@pytest.mark.parametrize("cost_kind", ["two-band", "uniform"])
@pytest.mark.parametrize("cost_scale", [5.0, 10.0, 30.0])
@pytest.mark.parametrize("logit_scale", [1.0, 1e2, 1e4])
def test_underflowing_kernel_matches_fp64_reference(cost_kind: str, cost_scale: float, logit_scale: float) -> None:
    """max M/ε up to 600: fp32 loses kernel entries (``exp(−M/ε)`` < 1.2e-38) that fp64 keeps; the released ``+1e-8``
    terms make them negligible (:mod:`wkd_lightning.losses.sinkhorn`), so W and its gradient match the fp64 oracle.

    Tolerances: W to 1e-5 relative (this file's fp32 bound). The gradient: to 1e-5 of its largest entry against the
    per-sample oracle in fp32 (the released algorithm at the release's precision), and against the fp64 oracle to
    1e-4, or, for a uniform cost whose one off-diagonal kernel value is subnormal in fp32 (cost 5: ``exp(−100)`` ≈
    3.7e-44), to that value's relative rounding ``2⁻¹⁴⁹ / K`` (fp32 stores it with 5 significant bits), which the
    gradient inherits. Where the gradient is below 1e-15 (logits ±100 on a uniform cost: the fp32 softmax entries are
    subnormal there, and the per-sample and batched forms differ by 0.5 %), it only has to stay that small.
    """
    num_classes = 50
    z_s, z_t, y, g = _inputs(8, num_classes, seed=71, scale=logit_scale)
    with torch.no_grad():
        z_s[:, 0] = logit_scale  # confident students and teachers on different classes: extreme marginals
        z_t[:, 1] = logit_scale
        z_s.clamp_(-1e4, 1e4)
        z_t.clamp_(-1e4, 1e4)
    if cost_kind == "uniform":
        cost = uniform_cost(num_classes) * cost_scale
        off = _fp32_kernel_off_diagonal(cost_scale)
        grad_rel = max(1e-4, 2.0**-149 / off) if off > 0 else 1e-4
    else:
        cost = _two_band_cost(num_classes, g, cost_scale)
        grad_rel = 1e-4
    kernel, _ = gibbs_kernel(torch.relu(cost) + 1e-8, 0.05)
    assert bool((kernel < torch.finfo(torch.float32).tiny).any())  # fp32 loses entries that fp64 keeps
    l_t, w = wkd_logit_loss(z_s, z_t, y, cost, 2.0)
    (grad,) = torch.autograd.grad(w, z_s)
    z64 = z_s.detach().double().requires_grad_()
    w_ref = reference_wkd_logit_loss(z64, z_t.double(), y, cost.double(), 2.0)[1]
    (grad_ref,) = torch.autograd.grad(w_ref, z64)
    (grad_ref32,) = torch.autograd.grad(reference_wkd_logit_loss(z_s, z_t, y, cost, 2.0)[1], z_s)
    assert torch.isfinite(l_t) and torch.isfinite(w) and torch.isfinite(grad).all()
    _assert_rel_close(w.detach().double(), w_ref.detach(), 1e-5)
    if float(grad_ref.abs().max()) > 1e-15:
        _assert_rel_close(grad, grad_ref32, 1e-5)
        _assert_rel_close(grad.double(), grad_ref, grad_rel)
    else:  # a negligible gradient stays negligible
        assert float(grad.abs().max()) <= 2 * float(grad_ref.abs().max())


# ----------------------------------------------------------------------------------------------------------------
# The plug-in.


def _ctx(z_s, z_t, y, epoch: int = 1, max_epochs: int = 1) -> DistillationContext:
    return DistillationContext(student_logits=z_s, teacher_logits=z_t, target=y, epoch=epoch, max_epochs=max_epochs)


def test_plugin_terms_weight_and_schedule() -> None:
    z_s, z_t, y, g = _inputs(6, 10, seed=91)
    raw = _random_cost(10, g, scale=2.0)
    loss = WKDLogit(cost=raw, weight=30.0, temperature=4.0, kappa=2.0, schedule=CosineDecay(start_epoch=2))
    out = plugin_terms([loss], _ctx(z_s, z_t, y, epoch=3, max_epochs=4)).weighted  # c(3) = ½(1 + cos(π/2)) = ½
    assert set(out) == {"wkd_l/target", "wkd_l/wd"}
    l_t, w = wkd_logit_loss(z_s, z_t, y, sharpen_cost(raw, 2.0), 4.0)
    torch.testing.assert_close(out["wkd_l/target"], l_t, rtol=1e-6, atol=0)
    torch.testing.assert_close(out["wkd_l/wd"], 15.0 * w, rtol=1e-6, atol=0)
    early = plugin_terms([loss], _ctx(z_s, z_t, y, epoch=2, max_epochs=4)).weighted
    torch.testing.assert_close(early["wkd_l/target"], l_t, rtol=1e-6, atol=0)
    torch.testing.assert_close(early["wkd_l/wd"], 30.0 * w, rtol=1e-6, atol=0)
    (out["wkd_l/target"] + out["wkd_l/wd"]).backward()
    assert z_s.grad is not None and torch.isfinite(z_s.grad).all()


def test_plugin_uniform_cost_built_on_first_use_and_checked() -> None:
    loss = WKDLogit()
    assert loss.num_classes is None and loss.kernel is None
    z_s, z_t, y, _ = _inputs(4, 7, seed=92)
    out = loss(_ctx(z_s, z_t, y))
    assert loss.num_classes == 7
    torch.testing.assert_close(out["wd"], wkd_logit_loss(z_s, z_t, y, sharpen_cost(uniform_cost(7), 1.0), 2.0)[1])
    z_s8, z_t8, y8, _ = _inputs(4, 8, seed=93)
    with pytest.raises(ValueError, match=r"the cost matrix is 7×7 but the logits have C = 8 classes"):
        loss(_ctx(z_s8, z_t8, y8))
    with pytest.raises(ValueError, match="needs teacher logits"):
        loss(_ctx(z_s, None, y))


def test_plugin_kernel_buffers_are_derived_not_saved_and_follow_the_module() -> None:
    g = torch.Generator().manual_seed(94)
    loss = WKDLogit(cost=_random_cost(5, g), sinkhorn_eps=0.1)
    assert loss.state_dict() == {}
    names = {name for name, _ in loss.named_buffers()}
    assert {"kernel", "kernel_cost", "cost_matrix"} <= names
    kernel, kernel_cost = gibbs_kernel(loss.cost_matrix, 0.1)
    torch.testing.assert_close(loss.kernel, kernel)
    torch.testing.assert_close(loss.kernel_cost, kernel_cost)
    moved = loss.to("meta")
    assert moved.kernel.device.type == "meta" and moved.kernel_cost.device.type == "meta"
    if torch.cuda.is_available():  # pragma: no cover - GPU machines only
        loss = WKDLogit(cost=_random_cost(5, g)).cuda()
        assert loss.kernel.is_cuda
        z_s, z_t, y, _ = _inputs(3, 5, seed=95)
        out = loss(_ctx(z_s.cuda(), z_t.cuda(), y.cuda()))
        assert out["wd"].is_cuda


def test_plugin_set_cost_replaces_the_kernel() -> None:
    z_s, z_t, y, g = _inputs(4, 6, seed=96)
    loss = WKDLogit(weight=1.0, kappa=1.5)
    first = loss(_ctx(z_s, z_t, y))["wd"]
    new = _random_cost(6, g, scale=2.0)
    loss.set_cost(new)
    second = loss(_ctx(z_s, z_t, y))["wd"]
    torch.testing.assert_close(second, wkd_logit_loss(z_s, z_t, y, sharpen_cost(new, 1.5), 2.0)[1])
    assert not torch.allclose(first, second)
    loss.set_cost(sharpen_cost(new, 1.5), sharpened=True)
    torch.testing.assert_close(loss(_ctx(z_s, z_t, y))["wd"], second)
    with pytest.raises(ValueError, match="non-finite"):
        loss.set_cost(torch.full((6, 6), math.inf))


def test_plugin_large_unsharpened_cost_is_finite() -> None:
    z_s, z_t, y, g = _inputs(4, 20, seed=97, scale=1e3)
    loss = WKDLogit(cost=_random_cost(20, g, scale=10.0), kappa=0.0)
    out = loss(_ctx(z_s, z_t, y))
    (out["target"] + out["wd"]).backward()
    assert torch.isfinite(out["wd"]) and torch.isfinite(z_s.grad).all()


def test_cost_files(tmp_path) -> None:
    g = torch.Generator().manual_seed(98)
    raw = _random_cost(6, g, scale=2.0)
    plain = tmp_path / "plain.pt"
    torch.save(raw, plain)
    torch.testing.assert_close(load_cost(plain, kappa=2.0), sharpen_cost(raw, 2.0))
    torch.testing.assert_close(load_cost(str(plain), kappa=0.0), raw)

    meta = {"method": "cov_align", "teacher": "resnet32x4", "dataset": "cifar100", "layer": "layer3"}
    raw_dict = tmp_path / "raw_dict.pt"
    torch.save({"cost": raw, **meta, "class_names": [str(i) for i in range(6)], "kappa_applied": False}, raw_dict)
    torch.testing.assert_close(load_cost(raw_dict, kappa=2.0), sharpen_cost(raw, 2.0))
    done = tmp_path / "sharpened_dict.pt"
    torch.save({"cost": sharpen_cost(raw, 2.0), **meta, "kappa_applied": True}, done)
    torch.testing.assert_close(load_cost(done, kappa=2.0), sharpen_cost(raw, 2.0))  # not sharpened twice

    z_s, z_t, y, _ = _inputs(3, 6, seed=99)
    expected = wkd_logit_loss(z_s, z_t, y, sharpen_cost(raw, 2.0), 2.0)[1]
    for path in (plain, raw_dict, done, str(done)):
        loss = WKDLogit(cost=path, weight=1.0, kappa=2.0)
        assert loss.cost_source == str(path)
        torch.testing.assert_close(loss(_ctx(z_s, z_t, y))["wd"], expected)
