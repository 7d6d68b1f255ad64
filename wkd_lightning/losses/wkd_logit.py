"""WKD-L: logit distillation with a discrete Wasserstein distance and target separation (SPEC §1).

The WKD-L term added to the student's cross-entropy is ``L_t + γ(e) · W``:

* ``L_t = −(1/B) Σ_b p_t(y_b) · log p_s(y_b)`` (temperature 1, teacher factor detached, never scaled by ``γ``);
* ``W``, the batch mean of the entropic OT cost between the student's and the teacher's temperature-``τ``
  distributions over the ``C − 1`` non-target classes, under the category cost ``M = relu(D) + 1e-8`` with the
  target row and column removed, after exactly ``sinkhorn_iters`` released Sinkhorn iterations (with their two
  ``+1e-8`` terms).

``W`` is computed with one shared ``C×C`` kernel (see :mod:`wkd_lightning.losses.sinkhorn`); per-sample
``(C−1)×(C−1)`` problems are never built.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from wkd_lightning.losses.base import DistillationContext, DistillationLoss
from wkd_lightning.losses.checks import check_logits, check_number, check_wkd_logit_hparams, class_indices
from wkd_lightning.losses.cost import (  # noqa: F401 -- re-exported: the cost helpers used to live here
    COST_FLOOR,
    compute_dtype,
    load_cost,
    load_cost_file,
    positive_cost,
    sharpen_cost,
    uniform_cost,
)
from wkd_lightning.losses.cost_checks import check_cost, check_cost_meaning, check_cost_size
from wkd_lightning.losses.schedule import WeightSchedule
from wkd_lightning.losses.sinkhorn import gibbs_kernel, initial_scaling, sinkhorn_cost


def wkd_logit_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    cost: Tensor,
    temperature: float,
    *,
    sinkhorn_eps: float = 0.05,
    sinkhorn_iters: int = 10,
) -> tuple[Tensor, Tensor]:
    """The two WKD-L terms ``(L_t, W)`` (SPEC §1), both batch means, computed in fp32 even under autocast.

    Gradients flow into the student logits only. One Sinkhorn path for every finite cost: where ``exp(−M/ε)``
    underflows in fp32 (``max M/ε ≳ 87``, e.g. unsharpened costs above ≈ 4.4 at ``ε = 0.05``) the released ``+1e-8``
    terms keep the lost entries below round-off (see :mod:`wkd_lightning.losses.sinkhorn`).

    Args:
        student_logits: ``z_s``, B×C.
        teacher_logits: ``z_t``, B×C (detached here).
        target: B class indices, or B×C soft/mixed labels (their argmax is the target).
        cost: ``D``, the C×C category cost *after* sharpening; ``relu(D) + 1e-8`` is applied here.
        temperature: ``τ`` of the non-target distributions (> 0).
        sinkhorn_eps: entropic regularisation ``ε`` (> 0).
        sinkhorn_iters: number of Sinkhorn iterations (≥ 1; the release uses 10).

    Returns:
        ``(L_t, W)``: the target term at temperature 1 and the mean non-target transport cost, fp32 scalars.

    Raises:
        ValueError: on non-2-D or mismatched logits, fewer than 2 classes, NaN/inf logits (naming the side), labels
            of the wrong shape or outside ``[0, C)``, a cost that is not a finite C×C matrix, a non-positive
            ``temperature``/``sinkhorn_eps``, or ``sinkhorn_iters < 1``.
    """
    name = "wkd_logit_loss"
    check_wkd_logit_hparams(temperature, sinkhorn_eps, sinkhorn_iters, name)
    check_logits(student_logits, teacher_logits, name, min_classes=2)
    hard_target = class_indices(target, student_logits, name)
    cost = check_cost(cost, student_logits.shape[1], name)
    device = student_logits.device
    with torch.autocast(device_type=device.type, enabled=False):
        cost_m = positive_cost(cost.to(device=device, dtype=compute_dtype(student_logits)))
        kernel, kernel_cost = gibbs_kernel(cost_m, sinkhorn_eps)
        return _wkd_logit_terms(
            student_logits, teacher_logits, hard_target, kernel, kernel_cost, temperature, sinkhorn_iters
        )


class WKDLogit(DistillationLoss):
    """WKD-L plug-in: returns ``{"target": L_t, "wd": W}``, entering the loss as ``L_t + γ·c(e)·W`` (SPEC §1).

    The category cost is sharpened once when it is set, and one shared kernel ``K = exp(−M/ε)`` and ``K∘M`` are kept
    as non-persistent buffers (derived from the configuration, so they are not saved in checkpoints and follow the
    module across devices). ``L_t`` is neither scaled by ``γ`` nor decayed by the schedule.

    Args:
        cost: ``"uniform"`` (1 between different classes, built for the logits' C on first use and sharpened with
            ``κ`` like any other cost), a path to a file read by :func:`load_cost`, or a C×C tensor of unsharpened
            category distances.
        weight: ``γ``, the weight of the Wasserstein term.
        temperature: ``τ`` of the non-target distributions.
        kappa: ``κ`` of the cost sharpening ``D ← 1 − exp(−κ·D)`` (0 disables it; skipped for cost files whose
            metadata say ``kappa_applied``).
        sinkhorn_eps: entropic regularisation ``ε``.
        sinkhorn_iters: number of Sinkhorn iterations (10 in the release, which does not converge; kept for
            faithfulness).
        schedule: the epoch schedule ``c(e)`` of ``γ`` (e.g. ``CosineDecay(150)`` on CIFAR-100).
    """

    name = "wkd_l"
    unweighted_terms = ("target",)  # L_t: neither scaled by γ nor decayed

    cost_matrix: Tensor | None
    kernel: Tensor | None
    kernel_cost: Tensor | None

    def __init__(
        self,
        cost: str | os.PathLike | Tensor = "uniform",
        weight: float = 30.0,
        temperature: float = 2.0,
        kappa: float = 1.0,
        sinkhorn_eps: float = 0.05,
        sinkhorn_iters: int = 10,
        schedule: WeightSchedule | None = None,
    ) -> None:
        super().__init__(weight, schedule)
        cls = type(self).__name__
        self.temperature, self.sinkhorn_eps, self.sinkhorn_iters = check_wkd_logit_hparams(
            temperature, sinkhorn_eps, sinkhorn_iters, cls
        )
        self.kappa = check_number(kappa, "kappa", cls)
        self.cost_source = "tensor" if isinstance(cost, Tensor) else str(cost)
        self.register_buffer("cost_matrix", None, persistent=False)
        self.register_buffer("kernel", None, persistent=False)
        self.register_buffer("kernel_cost", None, persistent=False)
        #: The class names stored with a cost file (``wkd-ir`` writes them); checked against the data's at set-up.
        self.cost_class_names: list[str] | None = None
        if isinstance(cost, Tensor):
            self.set_cost(cost)
        elif isinstance(cost, (str, os.PathLike)):
            if cost != "uniform":
                matrix, metadata = load_cost_file(cost, self.kappa)
                self.cost_class_names = metadata.get("class_names")
                self.set_cost(matrix, sharpened=True)
        else:
            raise ValueError(
                f"{cls}: cost must be 'uniform', a file path or a C×C tensor, got {type(cost).__name__} ({cost!r})."
            )

    @property
    def num_classes(self) -> int | None:
        """C of the current cost, or ``None`` while a uniform cost waits for the first batch."""
        return None if self.cost_matrix is None else self.cost_matrix.shape[0]

    def set_cost(self, cost: Tensor, *, sharpened: bool = False) -> None:
        """Replace the category cost (e.g. self-KD refreshing it) and rebuild the shared kernel.

        Args:
            cost: the C×C category cost ``D``; stored as ``M = relu(D) + 1e-8`` on the device of the current cost
                (the CPU before the first one).
            sharpened: whether ``cost`` is already sharpened (as returned by :func:`load_cost`); if not, it is
                sharpened here with ``κ`` (like a tensor passed to ``__init__``).

        Raises:
            ValueError: if ``cost`` is not a finite square matrix of size >= 2 or is no distance (negative entries, a
                similarity matrix); checked here, so a bad configuration fails when the loss is made, not mid-run.
        """
        name = f"{type(self).__name__}.set_cost"
        cost = check_cost(cost.detach().float(), None, name)
        check_cost_meaning(cost, name)
        if not sharpened:
            cost = sharpen_cost(cost, self.kappa)
        device = self.cost_matrix.device if self.cost_matrix is not None else cost.device
        with torch.no_grad():
            cost_m = positive_cost(cost.to(device))
            kernel, kernel_cost = gibbs_kernel(cost_m, self.sinkhorn_eps)
        self.cost_matrix, self.kernel, self.kernel_cost = cost_m, kernel, kernel_cost

    def forward(self, ctx: DistillationContext) -> dict[str, Tensor]:
        student_logits = ctx.student_logits
        teacher_logits = self.require_teacher_logits(ctx)
        check_logits(student_logits, teacher_logits, self.name, min_classes=2)
        hard_target = class_indices(ctx.target, student_logits, self.name)
        num_classes = student_logits.shape[1]
        if self.cost_matrix is None:
            self.set_cost(uniform_cost(num_classes).to(student_logits.device))
        else:
            check_cost_size(self.cost_matrix.shape[0], num_classes, f"{self.name} (cost {self.cost_source!r})")
        assert self.cost_matrix is not None and self.kernel is not None and self.kernel_cost is not None
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            l_t, w = _wkd_logit_terms(
                student_logits,
                teacher_logits,
                hard_target,
                self.kernel,
                self.kernel_cost,
                self.temperature,
                self.sinkhorn_iters,
            )
        return {"target": l_t, "wd": w}

    def extra_repr(self) -> str:
        return (
            f"cost={self.cost_source!r}, weight={self.weight}, temperature={self.temperature}, kappa={self.kappa}, "
            f"sinkhorn_eps={self.sinkhorn_eps}, sinkhorn_iters={self.sinkhorn_iters}, schedule={self.schedule}"
        )


def _wkd_logit_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    hard_target: Tensor,
    kernel: Tensor,
    kernel_cost: Tensor,
    temperature: float,
    iters: int,
) -> tuple[Tensor, Tensor]:
    """``(L_t, W)`` from validated inputs and the shared ``K``, ``K∘M``; must run with autocast disabled."""
    dtype = compute_dtype(student_logits)
    z_s = student_logits.to(dtype)
    z_t = teacher_logits.detach().to(dtype)
    device = z_s.device
    if kernel.device != device or kernel.dtype != dtype:
        kernel, kernel_cost = (x.to(device=device, dtype=dtype) for x in (kernel, kernel_cost))
    y = hard_target.to(device=device, dtype=torch.long).unsqueeze(1)

    # Target term at temperature 1: −mean_b p_t(y_b) · log p_s(y_b).
    p_t_target = F.softmax(z_t, dim=1).gather(1, y).squeeze(1)
    log_p_s_target = F.log_softmax(z_s, dim=1).gather(1, y).squeeze(1)
    l_t = -(p_t_target * log_p_s_target).mean()

    # Non-target distributions: the target logit masked to −inf gives an exact 0 (−inf in the log domain).
    mask = torch.zeros_like(z_s, dtype=torch.bool).scatter_(1, y, True)
    u0 = initial_scaling(mask, z_s.dtype)
    masked_s = (z_s / temperature).masked_fill(mask, -math.inf)
    masked_t = (z_t / temperature).masked_fill(mask, -math.inf)
    a = F.softmax(masked_s, dim=1)
    b = F.softmax(masked_t, dim=1)
    w = sinkhorn_cost(a, b, u0, kernel, kernel_cost, iters)
    return l_t, w.mean()
