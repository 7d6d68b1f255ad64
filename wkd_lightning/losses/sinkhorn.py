"""Batched entropic optimal transport with one shared kernel (SPEC §1.4-1.5).

WKD-L solves, for every sample ``b`` of a batch, an entropic OT problem between two distributions over the ``C − 1``
non-target classes, with the cost matrix ``M`` restricted to those classes. The per-sample problems differ only in
which row and column of ``M`` are removed, so instead of building ``B`` matrices of size ``(C−1)×(C−1)`` we keep the
full ``C×C`` kernel ``K = exp(−M/ε)`` and put an exact zero at each sample's target entry of the marginals ``a``,
``b`` and of the initial scaling ``u⁰``. A zero entry stays zero through the updates ``v = b ⊘ (Kᵀu + 1e-8)``,
``u = a ⊘ (K v + 1e-8)``, and every other entry sees exactly the sums it would see in the reduced problem, so the
batched iteration below (two ``B×C @ C×C`` matmuls per step) is algebraically identical to the per-sample one.
The transport cost ``W = Σ_ij P_ij M_ij`` of the plan ``P = diag(u) K diag(v)`` is ``Σ_i u_i [(K∘M) v]_i``, so the
plan is never formed either.

Two numerical paths compute the same iteration:

* :func:`sinkhorn_cost`, the plain one, in the input dtype (fp32 in WKD-L), as in the released code.
* :func:`sinkhorn_cost_stable`, for costs whose kernel underflows in fp32 (``max M / ε`` above ≈ 87, e.g.
  unsharpened costs above ≈ 4.4 at ``ε = 0.05``). It works in fp64 with log-marginals and keeps each sample's
  scalings as ``u = exp(s_u) · ũ`` with ``max ũ = 1``, so neither the kernel nor the scalings under- or overflow
  and the gradient stays finite; the ``+1e-8`` terms enter as ``log(x + 1e-8) = logaddexp(log x, log 1e-8)``.
  Valid while ``max M / ε`` ≤ :data:`MAX_STABLE_COST_OVER_EPS`; beyond that it raises instead of returning NaN.

Gradients of the plain path flow into ``a`` only (the student; ``b``, ``K``, ``K∘M`` and ``u⁰`` are constants in
WKD-L). For that case :func:`sinkhorn_cost` differentiates the unrolled iterations with a hand-written backward
(:class:`_PlainSinkhornCost`) that keeps only the two denominators of each iteration, computes everything else
in place and gives the same gradient as autograd through the loop (which saves a little more and allocates several
temporaries per step; the hand-written backward needs roughly half the peak memory at the same speed, see
``benchmarks/results/wkd_logit.md``). Any other case (gradients for ``b``, ``K``…, autocast) falls back to plain
autograd.

:func:`sinkhorn_plan` returns the plans themselves (``B×C×C``), for visualisation and tests only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from wkd_lightning.losses.checks import check_integer, check_number
from wkd_lightning.losses.cost_checks import MAX_STABLE_COST_OVER_EPS, check_stable_range

__all__ = [
    "MAX_STABLE_COST_OVER_EPS",
    "RELEASED_STABILIZER",
    "check_stable_range",
    "gibbs_kernel",
    "initial_scaling",
    "kernel_underflows",
    "sinkhorn_cost",
    "sinkhorn_cost_stable",
    "sinkhorn_plan",
    "sinkhorn_scalings",
]

#: The ``+1e-8`` added to both denominators of the released Sinkhorn updates (SPEC §1.4). Keep it for faithful
#: results; ``0.0`` gives textbook Sinkhorn (for testing and analysis only: a zero denominator then gives inf/NaN).
RELEASED_STABILIZER = 1e-8


def gibbs_kernel(cost: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The Gibbs kernel ``K = exp(−M/ε)`` and ``K∘M``, in the dtype of ``cost``.

    Args:
        cost: ``M``, a C×C cost matrix (already made positive: WKD-L uses ``relu(D) + 1e-8``).
        eps: the entropic regularisation ``ε`` (> 0).

    Returns:
        ``(K, K∘M)``, both C×C.
    """
    check_number(eps, "eps", "gibbs_kernel", positive=True)
    kernel = torch.exp(-cost / eps)
    return kernel, kernel * cost


def kernel_underflows(cost: Tensor, eps: float, dtype: torch.dtype = torch.float32) -> bool:
    """Whether some entry of ``exp(−M/ε)`` falls below the smallest normal number of ``dtype`` (or to zero).

    When it does, the plain iteration in ``dtype`` loses the information carried by those entries and its backward
    pass can overflow; :func:`sinkhorn_cost_stable` should be used instead.
    """
    return float(cost.detach().max()) / eps > -math.log(torch.finfo(dtype).tiny)


def initial_scaling(target_mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``u⁰``: ``1/(C−1)`` on the non-target entries and exactly 0 on the target entry of each row.

    Args:
        target_mask: B×C boolean, True at each sample's target class (exactly one per row).
        dtype: dtype of the result.
    """
    num_classes = target_mask.shape[1]
    return (~target_mask).to(dtype) / (num_classes - 1)


def sinkhorn_scalings(
    a: Tensor,
    b: Tensor,
    u0: Tensor,
    kernel: Tensor,
    iters: int,
    *,
    stabilizer: float = RELEASED_STABILIZER,
) -> tuple[Tensor, Tensor]:
    """Run exactly ``iters`` released Sinkhorn iterations for a batch that shares one kernel.

    Each iteration is ``v = b ⊘ (Kᵀu + s)`` then ``u = a ⊘ (K v + s)`` with ``s = stabilizer``, written as
    ``u @ K`` and ``v @ Kᵀ`` on B×C rows.

    Args:
        a: B×C row marginals (the student's non-target distribution; exact 0 at the target entry).
        b: B×C column marginals (the teacher's; exact 0 at the target entry).
        u0: B×C initial scaling (see :func:`initial_scaling`).
        kernel: ``K``, C×C, shared by the batch.
        iters: number of iterations (the release runs 10, far from convergence; keep it for faithful results).
        stabilizer: the ``+1e-8`` of the release; ``0.0`` for textbook Sinkhorn (testing and analysis only).

    Returns:
        ``(u, v)``, both B×C; the plan of sample ``b`` is ``diag(u_b) K diag(v_b)``.
    """
    check_integer(iters, "iters", "sinkhorn_scalings")
    kernel_t = kernel.t()
    u = u0
    v = b
    for _ in range(iters):
        v = b / (u @ kernel + stabilizer)
        u = a / (v @ kernel_t + stabilizer)
    return u, v


def sinkhorn_cost(
    a: Tensor,
    b: Tensor,
    u0: Tensor,
    kernel: Tensor,
    kernel_cost: Tensor,
    iters: int,
    *,
    stabilizer: float = RELEASED_STABILIZER,
    recompute: bool = False,
) -> Tensor:
    """Per-sample transport cost ``W_b = Σ_ij P_ij M_ij = Σ_i u_i [(K∘M) v]_i`` of the plain batched iteration.

    Never forms a plan or any per-sample matrix: memory is O(B·C + C²) (O(iters·B·C) while a gradient is pending).

    When a gradient is needed for ``a`` only (WKD-L: ``b``, ``K``, ``K∘M`` and ``u⁰`` are constants), the unrolled
    iterations are differentiated by a hand-written backward that gives the same gradient as autograd through the
    loop but saves only the two denominators ``E_k = u_{k−1} K + s`` and ``D_k = v_k Kᵀ + s`` of each iteration
    (``2·iters − 1`` B×C tensors; with ``recompute=True`` only the ``D_k`` and the last ``E_k``: ``iters + 1``
    tensors, at the cost of ``iters − 2`` extra matmuls in the backward pass) and reuses a few work buffers instead
    of allocating temporaries. It does not support double backward (differentiating the gradient raises an error).
    Otherwise (no gradient, gradients for the other arguments, or autocast enabled) the loop runs under plain
    autograd.

    Args:
        a: B×C row marginals with an exact 0 at each target entry.
        b: B×C column marginals with an exact 0 at each target entry.
        u0: B×C initial scaling (:func:`initial_scaling`).
        kernel: ``K = exp(−M/ε)``, C×C.
        kernel_cost: ``K∘M``, C×C.
        iters: number of Sinkhorn iterations (≥ 1).
        stabilizer: the ``+1e-8`` of the release; ``0.0`` for textbook Sinkhorn (testing and analysis only).
        recompute: with the hand-written backward, recompute the ``E_k`` instead of saving them (less memory, more
            time: see ``benchmarks/results/wkd_logit.md``).

    Returns:
        ``W``, a length-B vector.
    """
    check_integer(iters, "iters", "sinkhorn_cost")
    if (
        torch.is_grad_enabled()
        and a.requires_grad
        and a.ndim == 2
        and not any(x.requires_grad for x in (b, u0, kernel, kernel_cost))
        and not torch.is_autocast_enabled(a.device.type)
    ):
        return _PlainSinkhornCost.apply(a, b, u0, kernel, kernel_cost, int(iters), float(stabilizer), recompute)
    u, v = sinkhorn_scalings(a, b, u0, kernel, iters, stabilizer=stabilizer)
    return (u * (v @ kernel_cost.t())).sum(dim=1)


class _PlainSinkhornCost(torch.autograd.Function):
    """``W = Σ_i u_i [(K∘M) v]_i`` after ``T`` plain iterations, with an exact hand-written gradient for ``a``.

    Forward (``k = 1..T``, ``s`` the stabilizer): ``E_k = u_{k−1} K + s``, ``v_k = b ⊘ E_k``,
    ``D_k = v_k Kᵀ + s``, ``u_k = a ⊘ D_k``; the same operations in the same order as :func:`sinkhorn_scalings`,
    so ``W`` is bitwise the same. Backward, with ``g = ∂L/∂W`` per row:

    * ``ḡu_T = g · (v_T (K∘M)ᵀ)``, ``ḡv_T = (g · u_T)(K∘M)``;
    * for ``k = T..1``: ``ā += ḡu_k ⊘ D_k``; ``ḡD_k = −ḡu_k ∘ (u_k ⊘ D_k)``; ``ḡv_k (+)= ḡD_k K``;
      ``ḡE_k = −ḡv_k ∘ (v_k ⊘ E_k)``; ``ḡu_{k−1} = ḡE_k Kᵀ`` (not needed for ``k = 1``: ``u⁰`` is constant).

    These are autograd's own formulas for ``x ⊘ y`` and ``x K``. ``u_k`` and ``v_k`` are recomputed as ``a ⊘ D_k``
    and ``b ⊘ E_k`` from the saved denominators (bitwise the forward values); nothing is reconstructed by dividing
    by ``u`` or ``v``, so exact zeros of ``a``/``b`` (target entries, underflowed softmax) only ever meet ``0 ⊘ D``
    with ``D ≥ s > 0``, never ``0/0`` or ``0·inf``. ``E_1`` is not needed (it only leads to ``u⁰``), so ``2T − 1``
    denominators are saved; with ``recompute``, the ``D_k`` and ``E_T`` only, and ``E_k = (a ⊘ D_{k−1}) K + s``
    is recomputed by a matmul for ``1 < k < T`` (exact; reconstructing it by a division would not be safe).
    With ``s = 0`` (analysis only) the backward divides only by the forward's own denominators: a zero among them
    already makes the forward ``inf`` or ``NaN`` for that sample, so the backward adds no new ``0/0`` (and
    reproduces autograd where the forward is finite).
    """

    @staticmethod
    def forward(
        ctx,
        a: Tensor,
        b: Tensor,
        u0: Tensor,
        kernel: Tensor,
        kernel_cost: Tensor,
        iters: int,
        stabilizer: float,
        recompute: bool,
    ) -> Tensor:
        kernel_t = kernel.t()
        # Which E_k (0-based k) the backward reads: all but the first; with recompute, only the last one (for v_T).
        kept_e = [iters - 1] if recompute else list(range(min(1, iters - 1), iters))
        slot = {k: i for i, k in enumerate(kept_e)}
        d_saved = a.new_empty((iters, *a.shape))
        e_saved = a.new_empty((len(kept_e), *a.shape))
        e_work = a.new_empty(a.shape) if len(kept_e) < iters else None
        u_work, v_work = torch.empty_like(a), torch.empty_like(a)
        u = u0
        for k in range(iters):
            e = torch.mm(u, kernel, out=e_saved[slot[k]] if k in slot else e_work).add_(stabilizer)
            v = torch.div(b, e, out=v_work)
            d = torch.mm(v, kernel_t, out=d_saved[k]).add_(stabilizer)
            u = torch.div(a, d, out=u_work)
        w = (u * (v @ kernel_cost.t())).sum(dim=1)
        ctx.save_for_backward(a, b, kernel, kernel_cost, d_saved, e_saved)
        ctx.stabilizer = stabilizer
        ctx.slot = slot
        return w

    @staticmethod
    def backward(ctx, grad_w: Tensor) -> tuple[Tensor | None, ...]:
        nones = (None,) * 7
        if not ctx.needs_input_grad[0]:
            return (None, *nones)
        # In the dtype of the forward pass, even if backward() is called under autocast.
        with torch.no_grad(), torch.autocast(device_type=grad_w.device.type, enabled=False):
            grad_a = _PlainSinkhornCost._grad_a(ctx, grad_w)
        if torch.is_grad_enabled():  # create_graph=True: any use of the graph of this gradient must fail loudly
            grad_a = _NoDoubleBackward.apply(grad_a.requires_grad_())
        return (grad_a, *nones)

    @staticmethod
    def _grad_a(ctx, grad_w: Tensor) -> Tensor:
        a, b, kernel, kernel_cost, d_saved, e_saved = ctx.saved_tensors
        stabilizer, slot = ctx.stabilizer, ctx.slot
        iters = d_saved.shape[0]
        kernel_t = kernel.t()
        g = grad_w.unsqueeze(1)
        work = torch.empty_like(a)
        e_work = torch.empty_like(a) if len(slot) < iters - 1 else None  # E_2..E_T not all saved

        def denominator_e(k: int) -> Tensor:
            if k in slot:
                return e_saved[slot[k]]
            torch.div(a, d_saved[k - 1], out=work)  # u_{k−1}
            return torch.mm(work, kernel, out=e_work).add_(stabilizer)

        last = iters - 1
        # The final term W = Σ_i u_T,i [v_T (K∘M)ᵀ]_i.
        torch.div(b, denominator_e(last), out=work)  # v_T
        grad_u = torch.mm(work, kernel_cost.t()).mul_(g)
        torch.div(a, d_saved[last], out=work).mul_(g)  # g · u_T
        grad_v = torch.mm(work, kernel_cost)
        grad_a = torch.zeros_like(a)
        for k in range(last, -1, -1):
            d = d_saved[k]
            # u_k = a ⊘ D_k
            grad_a.addcdiv_(grad_u, d)
            torch.div(a, d, out=work).div_(d).mul_(grad_u).neg_()  # ḡD_k
            if k == last:
                grad_v.addmm_(work, kernel)
            else:
                torch.mm(work, kernel, out=grad_v)
            if k == 0:
                break
            # v_k = b ⊘ E_k, E_k = u_{k−1} K + s
            e = denominator_e(k)
            torch.div(b, e, out=work).div_(e).mul_(grad_v).neg_()  # ḡE_k
            torch.mm(work, kernel_t, out=grad_u)
        return grad_a


class _NoDoubleBackward(torch.autograd.Function):
    """Identity whose backward raises: marks the gradient of :class:`_PlainSinkhornCost` as not differentiable."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        raise RuntimeError(
            "sinkhorn_cost: double backward through the plain Sinkhorn path is not supported (its backward is "
            "hand-written and computes first-order gradients only); differentiate the loss once, without "
            "differentiating the resulting gradient."
        )


def sinkhorn_cost_stable(
    log_a: Tensor,
    log_b: Tensor,
    u0: Tensor,
    cost: Tensor,
    eps: float,
    iters: int,
    *,
    stabilizer: float = RELEASED_STABILIZER,
) -> Tensor:
    """The same ``W`` as :func:`sinkhorn_cost`, computed so that it stays finite when ``exp(−M/ε)`` underflows.

    Works in fp64 on log-marginals. Each scaling is kept as ``u = exp(s_u) · ũ`` with the per-sample shift
    ``s_u = max_i log u_i``, so ``Kᵀu = exp(s_u) · Kᵀũ`` is one matmul whose result is at least
    ``exp(−max M/ε) > 0``; the ``+s`` terms enter as ``log(x + s) = logaddexp(log x, log s)``. Entries of ``ũ``
    that underflow (relative size below ≈ 1e-308) change the sums by less than ``1e-308 · e^{max M/ε}`` relatively.
    Target entries are ``−inf`` in the log domain and exact zeros after exponentiation; no ``0·inf`` arises, so
    gradients are finite.

    Args:
        log_a: B×C log row marginals (log-softmax of the student's masked logits; ``−inf`` at the target).
        log_b: B×C log column marginals (``−inf`` at the target).
        u0: B×C initial scaling (:func:`initial_scaling`).
        cost: ``M``, C×C, positive.
        eps: entropic regularisation ``ε`` (> 0).
        iters: number of Sinkhorn iterations (≥ 1).
        stabilizer: the ``+1e-8`` of the release; ``0.0`` for textbook Sinkhorn.

    Returns:
        ``W``, a length-B vector in the dtype of ``log_a``.

    Raises:
        ValueError: if ``max(M)/ε`` exceeds :data:`MAX_STABLE_COST_OVER_EPS`.
    """
    check_integer(iters, "iters", "sinkhorn_cost_stable")
    check_stable_range(cost, eps, "sinkhorn_cost_stable")
    out_dtype = log_a.dtype
    cost64 = cost.detach().double()
    kernel = torch.exp(-cost64 / eps)
    kernel_t = kernel.t()
    kernel_cost_t = (kernel * cost64).t()
    log_a, log_b = log_a.double(), log_b.double()
    log_s = math.log(stabilizer) if stabilizer > 0 else -math.inf
    log_u = torch.log(u0.double())
    log_v = log_b
    for _ in range(iters):
        u_scaled, shift_u = _split_scale(log_u)
        log_v = log_b - torch.logaddexp(torch.log(u_scaled @ kernel) + shift_u, torch.full_like(shift_u, log_s))
        v_scaled, shift_v = _split_scale(log_v)
        log_u = log_a - torch.logaddexp(torch.log(v_scaled @ kernel_t) + shift_v, torch.full_like(shift_v, log_s))
    u_scaled, shift_u = _split_scale(log_u)
    v_scaled, shift_v = _split_scale(log_v)
    w = (u_scaled * (v_scaled @ kernel_cost_t)).sum(dim=1) * torch.exp(shift_u + shift_v).squeeze(1)
    return w.to(out_dtype)


def sinkhorn_plan(
    a: Tensor,
    b: Tensor,
    u0: Tensor,
    kernel: Tensor,
    iters: int,
    *,
    stabilizer: float = RELEASED_STABILIZER,
) -> Tensor:
    """The plans ``P_b = diag(u_b) K diag(v_b)`` as a B×C×C tensor (zero target row and column).

    For visualisation and tests only: training uses :func:`sinkhorn_cost`, which never forms them.
    Arguments as in :func:`sinkhorn_cost`.
    """
    u, v = sinkhorn_scalings(a, b, u0, kernel, iters, stabilizer=stabilizer)
    return u.unsqueeze(2) * kernel.unsqueeze(0) * v.unsqueeze(1)


def _split_scale(log_x: Tensor) -> tuple[Tensor, Tensor]:
    """``x = exp(shift) · scaled`` with the per-row ``shift = max log x`` (detached: the result does not depend on
    it), so ``max scaled = 1``."""
    shift = log_x.detach().amax(dim=1, keepdim=True)
    return torch.exp(log_x - shift), shift
