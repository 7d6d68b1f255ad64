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

One path, in the input dtype (fp32 in WKD-L), as in the released code: :func:`sinkhorn_scalings` runs the
iterations and :func:`sinkhorn_cost` reads ``W`` off them. Its gradient flows into ``a`` only (the student; ``b``,
``K``, ``K∘M`` and ``u⁰`` are constants in WKD-L), and for that case the unrolled iterations are differentiated by a
hand-written backward (:class:`_SinkhornCostGradient`): autograd's own formulas, in the same order, keeping only the
two denominators of each iteration and reusing work buffers. It earns its lines by memory, measured in
``benchmarks/results/sinkhorn_paths.md`` (B = 256, forward+backward, CPU): autograd through the loop needs 1.85× the
step's peak memory at C = 1,000 and 2.3× at C = 21,841 (1.45 vs 0.62 GiB), at a time the shared two-core machine
could not tell apart; it also keeps the gradients, and so the training runs, bit for bit those of earlier versions.
Any other case (gradients for ``b`` or the kernel, autocast, double backward) runs under plain autograd or says
clearly that it cannot.

An fp64 log-scaled path for kernels that underflow in fp32 (``max M/ε`` ≳ 87), chosen by reading the cost on the host,
was measured too (2.2× slower, 8× the step's peak memory at C = 1,000) and removed, since it is not needed: with the
released ``+1e-8`` terms every denominator is at least ``s = 1e-8`` and every scaling at most ``1/s``, so the kernel
entries that fp32 loses to underflow (all below ≈ 1.2e-38) change a denominator by less than ``C · 1.2e-38 / s``
(≈ 3e-26 at C = 21,841), far below the round-off of a value ≥ ``s``, and ``W`` by less than
``C² · 1.2e-38 · max M / s²`` (≈ 6e-14 · max M): the plain fp32 iteration gives the released values for any finite
cost (tested against the fp64 per-sample oracle up to ``max M/ε`` = 600).

:func:`sinkhorn_plan` returns the plans themselves (``B×C×C``), for visualisation and tests only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wkd_lightning.losses.checks import check_integer, check_number

__all__ = [
    "RELEASED_STABILIZER",
    "gibbs_kernel",
    "initial_scaling",
    "sinkhorn_cost",
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
) -> Tensor:
    """Per-sample transport cost ``W_b = Σ_ij P_ij M_ij = Σ_i u_i [(K∘M) v]_i`` of the batched iteration.

    Never forms a plan or any per-sample matrix: memory is O(B·C + C²), and ``2·iters`` B×C denominators more while
    a gradient is pending. When the gradient is needed for ``a`` only (WKD-L), it comes from the hand-written backward
    of :class:`_SinkhornCostGradient` (see the module docstring), which does not support double backward; otherwise
    the loop runs under plain autograd.

    Args:
        a: B×C row marginals with an exact 0 at each target entry.
        b: B×C column marginals with an exact 0 at each target entry.
        u0: B×C initial scaling (:func:`initial_scaling`).
        kernel: ``K = exp(−M/ε)``, C×C.
        kernel_cost: ``K∘M``, C×C.
        iters: number of Sinkhorn iterations (≥ 1).
        stabilizer: the ``+1e-8`` of the release; ``0.0`` for textbook Sinkhorn (testing and analysis only: a
            kernel row that underflows then gives a zero denominator, hence inf/NaN).

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
        return _SinkhornCostGradient.apply(a, b, u0, kernel, kernel_cost, int(iters), float(stabilizer))
    u, v = sinkhorn_scalings(a, b, u0, kernel, iters, stabilizer=stabilizer)
    return (u * (v @ kernel_cost.t())).sum(dim=1)


class _SinkhornCostGradient(torch.autograd.Function):
    """:func:`sinkhorn_cost` with an exact hand-written gradient for ``a``.

    Forward (``k = 1..T``, ``s`` the stabilizer): ``E_k = u_{k−1} K + s``, ``v_k = b ⊘ E_k``, ``D_k = v_k Kᵀ + s``,
    ``u_k = a ⊘ D_k``: the operations of :func:`sinkhorn_scalings` in the same order, so ``W`` is bitwise the same.
    Backward, with ``g = ∂L/∂W`` per row:

    * ``ḡu_T = g · (v_T (K∘M)ᵀ)``, ``ḡv_T = (g · u_T)(K∘M)``;
    * for ``k = T..1``: ``ā += ḡu_k ⊘ D_k``; ``ḡD_k = −ḡu_k ∘ (u_k ⊘ D_k)``; ``ḡv_k (+)= ḡD_k K``;
      ``ḡE_k = −ḡv_k ∘ (v_k ⊘ E_k)``; ``ḡu_{k−1} = ḡE_k Kᵀ`` (not needed for ``k = 1``: ``u⁰`` is constant).

    These are autograd's own formulas for ``x ⊘ y`` and ``x K``. ``u_k`` and ``v_k`` are recomputed as ``a ⊘ D_k``
    and ``b ⊘ E_k`` from the saved denominators (bitwise the forward values); nothing is reconstructed by dividing
    by ``u`` or ``v``, so exact zeros of ``a``/``b`` (target entries, underflowed softmax) only ever meet ``0 ⊘ D``
    with ``D ≥ s > 0``, never ``0/0`` or ``0·inf``. With ``s = 0`` (analysis only) the backward divides only by the
    forward's own denominators: a zero among them already makes the forward ``inf`` or ``NaN`` for that sample.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, u0: Tensor, kernel: Tensor, kernel_cost: Tensor, iters: int, s: float):
        kernel_t = kernel.t()
        e_saved, d_saved = a.new_empty((iters, *a.shape)), a.new_empty((iters, *a.shape))
        u_work, v_work = torch.empty_like(a), torch.empty_like(a)
        u = u0
        for k in range(iters):
            v = torch.div(b, torch.mm(u, kernel, out=e_saved[k]).add_(s), out=v_work)
            u = torch.div(a, torch.mm(v, kernel_t, out=d_saved[k]).add_(s), out=u_work)
        w = (u * (v @ kernel_cost.t())).sum(dim=1)
        ctx.save_for_backward(a, b, kernel, kernel_cost, e_saved, d_saved)
        return w

    @staticmethod
    def backward(ctx, grad_w: Tensor) -> tuple[Tensor | None, ...]:
        nones = (None,) * 6
        if not ctx.needs_input_grad[0]:
            return (None, *nones)
        # In the dtype of the forward pass, even if backward() is called under autocast.
        with torch.no_grad(), torch.autocast(device_type=grad_w.device.type, enabled=False):
            grad_a = _SinkhornCostGradient.grad_a(*ctx.saved_tensors, grad_w)
        if torch.is_grad_enabled():  # create_graph=True: any use of the graph of this gradient must fail loudly
            grad_a = _NoDoubleBackward.apply(grad_a.requires_grad_())
        return (grad_a, *nones)

    @staticmethod
    def grad_a(a: Tensor, b: Tensor, kernel: Tensor, kernel_cost: Tensor, e_saved: Tensor, d_saved: Tensor, grad_w):
        """``∂L/∂a`` by the recursion of the class docstring."""
        last = d_saved.shape[0] - 1
        g = grad_w.unsqueeze(1)
        work = torch.empty_like(a)
        # The final term W = Σ_i u_T,i [v_T (K∘M)ᵀ]_i.
        torch.div(b, e_saved[last], out=work)  # v_T
        grad_u = torch.mm(work, kernel_cost.t()).mul_(g)
        torch.div(a, d_saved[last], out=work).mul_(g)  # g · u_T
        grad_v = torch.mm(work, kernel_cost)
        grad_a = torch.zeros_like(a)
        for k in range(last, -1, -1):
            d = d_saved[k]
            grad_a.addcdiv_(grad_u, d)  # u_k = a ⊘ D_k
            torch.div(a, d, out=work).div_(d).mul_(grad_u).neg_()  # ḡD_k
            if k == last:
                grad_v.addmm_(work, kernel)
            else:
                torch.mm(work, kernel, out=grad_v)
            if k == 0:
                break
            e = e_saved[k]  # v_k = b ⊘ E_k, E_k = u_{k−1} K + s
            torch.div(b, e, out=work).div_(e).mul_(grad_v).neg_()  # ḡE_k
            torch.mm(work, kernel.t(), out=grad_u)
        return grad_a


class _NoDoubleBackward(torch.autograd.Function):
    """Identity whose backward raises: marks the gradient of :class:`_SinkhornCostGradient` as not differentiable."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        raise RuntimeError(
            "sinkhorn_cost: double backward is not supported (its backward is hand-written and computes first-order "
            "gradients only); differentiate the loss once, or give b or the kernel requires_grad to run the "
            "iterations under plain autograd."
        )


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
