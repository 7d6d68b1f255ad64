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

:func:`sinkhorn_plan` returns the plans themselves (``B×C×C``), for visualisation and tests only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: The ``+1e-8`` added to both denominators of the released Sinkhorn updates (SPEC §1.4). Keep it for faithful
#: results; ``0.0`` gives textbook Sinkhorn (for testing and analysis only: a zero denominator then gives inf/NaN).
RELEASED_STABILIZER = 1e-8

#: Largest ``max(M)/ε`` the stabilised path accepts: ``exp(−650)`` ≈ 5e-283 is still a normal fp64 number, and the
#: ``1/x`` factors of the backward pass (``≤ e^650``) leave a wide margin below the fp64 maximum (≈ 1.8e308).
MAX_STABLE_COST_OVER_EPS = 650.0


def gibbs_kernel(cost: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The Gibbs kernel ``K = exp(−M/ε)`` and ``K∘M``, in the dtype of ``cost``.

    Args:
        cost: ``M``, a C×C cost matrix (already made positive: WKD-L uses ``relu(D) + 1e-8``).
        eps: the entropic regularisation ``ε`` (> 0).

    Returns:
        ``(K, K∘M)``, both C×C.
    """
    if eps <= 0:
        raise ValueError(f"gibbs_kernel: eps must be > 0, got {eps}.")
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
    _check_iters(iters, "sinkhorn_scalings")
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
) -> Tensor:
    """Per-sample transport cost ``W_b = Σ_ij P_ij M_ij = Σ_i u_i [(K∘M) v]_i`` of the plain batched iteration.

    Never forms a plan or any per-sample matrix: memory is O(B·C + C²).

    Args:
        a: B×C row marginals with an exact 0 at each target entry.
        b: B×C column marginals with an exact 0 at each target entry.
        u0: B×C initial scaling (:func:`initial_scaling`).
        kernel: ``K = exp(−M/ε)``, C×C.
        kernel_cost: ``K∘M``, C×C.
        iters: number of Sinkhorn iterations (≥ 1).
        stabilizer: the ``+1e-8`` of the release; ``0.0`` for textbook Sinkhorn (testing and analysis only).

    Returns:
        ``W``, a length-B vector.
    """
    u, v = sinkhorn_scalings(a, b, u0, kernel, iters, stabilizer=stabilizer)
    return (u * (v @ kernel_cost.t())).sum(dim=1)


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
    _check_iters(iters, "sinkhorn_cost_stable")
    ratio = float(cost.detach().max()) / eps
    if ratio > MAX_STABLE_COST_OVER_EPS:
        raise ValueError(
            f"sinkhorn_cost_stable: max(cost)/eps = {ratio:.4g} exceeds {MAX_STABLE_COST_OVER_EPS:g}; exp(-cost/eps) "
            "cannot be represented even in float64. Sharpen the cost (kappa > 0 maps it into [0, 1)), rescale it, "
            "or use a larger sinkhorn_eps."
        )
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


def _check_iters(iters: int, name: str) -> None:
    if int(iters) != iters or iters < 1:
        raise ValueError(f"{name}: iters must be an integer >= 1, got {iters!r}.")
