"""Straightforward per-pair implementations of the IR costs: the oracles of the tests and the benchmark baseline.

Deliberately naive: a Python double loop over class pairs, each pair centred and compared from scratch, exactly as
the formulas of SPEC §3 read.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA of two n×d matrices with paired rows: ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) after centring columns.

    Frobenius norms are taken as ``sqrt(square().sum())``: in fp32 on the CPU, ``Tensor.norm()`` of a 1000×1000
    matrix was measured ~4e-5 off in relative terms, which alone would break a 1e-5 comparison.
    """
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    return (y.T @ x).square().sum() / ((x.T @ x).square().sum().sqrt() * (y.T @ y).square().sum().sqrt())


def cka_paired_pair(x: Tensor, y: Tensor, n: int) -> Tensor:
    """``1 − CKA`` of one pair, both truncated to their first ``n`` rows (the released form)."""
    return 1.0 - linear_cka(x[:n], y[:n])


def reference_cka_paired(features: Sequence[Tensor], pairs: Sequence[tuple[int, int]] | None = None) -> Tensor:
    """The released cost by a per-pair loop; only ``pairs`` (i < j) are filled when given (the rest stay NaN)."""
    c = len(features)
    n = min(x.shape[0] for x in features)
    out = torch.full((c, c), float("nan"), dtype=torch.float64)
    out.fill_diagonal_(0.0)
    todo = pairs if pairs is not None else [(a, b) for a in range(c) for b in range(a + 1, c)]
    for i, j in todo:
        out[i, j] = out[j, i] = cka_paired_pair(features[i], features[j], n).double()
    return out


def reference_cov_align(features: Sequence[Tensor]) -> Tensor:
    """``1 − tr(Σ_iΣ_j)/(‖Σ_i‖‖Σ_j‖)`` by a per-pair loop over explicit covariance matrices (fp64)."""
    covs = [torch.cov(x.double().T) for x in features]
    c = len(features)
    out = torch.zeros(c, c, dtype=torch.float64)
    for i in range(c):
        for j in range(c):
            if i != j:
                out[i, j] = 1.0 - torch.trace(covs[i] @ covs[j]) / (covs[i].norm() * covs[j].norm())
    return out


def reference_class_mean_cosine(features: Sequence[Tensor]) -> Tensor:
    """``1 − cos`` of class means by a per-pair loop (fp64)."""
    means = [x.double().mean(dim=0) for x in features]
    c = len(features)
    out = torch.zeros(c, c, dtype=torch.float64)
    for i in range(c):
        for j in range(c):
            if i != j:
                out[i, j] = 1.0 - torch.dot(means[i], means[j]) / (means[i].norm() * means[j].norm())
    return out
