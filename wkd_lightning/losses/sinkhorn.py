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

One path, in the input dtype (fp32 in WKD-L), differentiated by autograd through the unrolled iterations, as in the
released code. Two alternatives were measured (``benchmarks/results/sinkhorn_paths.md``: B = 256, forward+backward
of ``W``, CPU only) and removed:

* a hand-written backward that saved only the iterations' denominators. Autograd's step needs 1.85× its peak
  memory at C = 1,000 (68 vs 36 MiB) and 2.3× at C = 21,841 (1.45 vs 0.62 GiB): 0.83 GiB more, next to 3.6 GiB
  for ``K`` and ``K∘M`` and 1.8 GiB for the cost buffer that WKD-L keeps anyway. Time was not told apart on the
  shared two-core machine (1.22× slower at C = 1,000 in one interleaved run, 0.61× at C = 21,841 under other load;
  0.97× in ``wkd_logit.md``). It cost a custom autograd function, a recompute option and no double backward.
* an fp64 log-scaled path for kernels that underflow in fp32 (``max M/ε`` ≳ 87), chosen by reading the cost on the
  host (0.2 s per call at C = 21,841): 2.2× slower, 8× the step's peak memory at C = 1,000, and not needed. With
  the released ``+1e-8`` terms every denominator is at least ``s = 1e-8`` and every scaling at most ``1/s``, so
  the kernel entries that fp32 loses to underflow (all below ≈ 1.2e-38) change a denominator by less than
  ``C · 1.2e-38 / s`` (≈ 3e-26 at C = 21,841), far below the round-off of a value ≥ ``s``, and ``W`` by less than
  ``C² · 1.2e-38 · max M / s²`` (≈ 6e-14 · max M): the plain fp32 iteration gives the released values for any
  finite cost (tested against the fp64 per-sample oracle up to ``max M/ε`` = 600).

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

    Never forms a plan or any per-sample matrix: memory is O(B·C + C²), and O(iters·B·C) more while a gradient is
    pending (autograd keeps the two denominators of each iteration).

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
    u, v = sinkhorn_scalings(a, b, u0, kernel, iters, stabilizer=stabilizer)
    return (u * (v @ kernel_cost.t())).sum(dim=1)


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
