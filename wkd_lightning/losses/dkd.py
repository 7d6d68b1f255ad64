"""Decoupled knowledge distillation (Zhao et al., CVPR 2022): KD split into target and non-target parts.

With ``p = softmax(z/T)`` and target class ``y``, KD's ``KL(p_t ‖ p_s)`` equals ``TCKD + (1 − p_t,y) · NCKD``, where

- TCKD is the KL between the binary distributions ``b = [p_y, 1 − p_y]`` (target vs. all non-target mass), and
- NCKD is the KL between the distributions ``p̂`` over the C − 1 non-target classes, renormalised.

DKD drops the coupling factor ``(1 − p_t,y)`` and weights the parts freely: ``α · TCKD + β · NCKD``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wkd_lightning.losses.base import DistillationContext, DistillationLoss, float32
from wkd_lightning.losses.checks import check_logits, check_number, class_indices
from wkd_lightning.losses.schedule import LinearWarmup, WeightSchedule


def _binary_and_non_target_log_probs(logits: Tensor, target_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``log b`` (B×2: target, rest) and ``log p̂`` (B×C, 0 at the target) for already temperature-scaled logits.

    Computed with log-sum-exps, so ``log(1 − p_y)`` stays accurate when ``p_y`` is close to 1.
    """
    log_z = torch.logsumexp(logits, dim=1, keepdim=True)
    non_target = logits.masked_fill(target_mask, float("-inf"))
    log_z_non_target = torch.logsumexp(non_target, dim=1, keepdim=True)
    target_logit = logits.masked_fill(~target_mask, 0.0).sum(dim=1, keepdim=True)  # z_y (exact: adds zeros)
    log_binary = torch.cat([target_logit - log_z, log_z_non_target - log_z], 1)
    log_non_target = (non_target - log_z_non_target).masked_fill(target_mask, 0.0)
    return log_binary, log_non_target


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> tuple[Tensor, Tensor]:
    """DKD's two terms, already weighted: ``(α · TCKD, β · NCKD)``.

    ``TCKD = T² · mean_b KL(b_t ‖ b_s)`` with ``b = [p_y, 1 − p_y]`` and ``NCKD = T² · mean_b KL(p̂_t ‖ p̂_s)`` with
    ``p̂`` the softmax of ``z/T`` over the non-target classes (the target logit masked out exactly). Pass
    ``alpha = beta = 1`` for the raw terms. Computed in fp32; the teacher side is detached.

    Args:
        student_logits: ``z_s``, B×C.
        teacher_logits: ``z_t``, B×C.
        target: B class indices, or B×C soft/mixed labels (their argmax is the target).
        alpha: ``α``, weight of TCKD.
        beta: ``β``, weight of NCKD.
        temperature: ``T``.

    Returns:
        ``(α · TCKD, β · NCKD)``, two scalars.

    Raises:
        ValueError: for mismatched or non-2-D logits, fewer than 2 classes, NaN/inf logits, labels of the wrong
            shape or outside ``[0, C)``, a ``temperature`` that is not > 0, or negative weights.
    """
    name = "dkd_loss"
    check_number(temperature, "temperature", name, positive=True)
    check_number(alpha, "alpha", name)
    check_number(beta, "beta", name)
    check_logits(student_logits, teacher_logits, name, min_classes=2)
    target = class_indices(target, student_logits, name)
    target_mask = torch.zeros_like(student_logits, dtype=torch.bool).scatter_(1, target.long().unsqueeze(1), True)
    log_b_s, log_p_s = _binary_and_non_target_log_probs(float32(student_logits) / temperature, target_mask)
    with torch.no_grad():
        log_b_t, log_p_t = _binary_and_non_target_log_probs(float32(teacher_logits) / temperature, target_mask)
    scale = temperature**2 / student_logits.shape[0]
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum() * scale
    # exp(0) = 1 at the masked target entry, but there log_p_t − log_p_s = 0, so it adds nothing.
    nckd = (log_p_t.exp() * (log_p_t - log_p_s)).sum() * scale
    return alpha * tckd, beta * nckd


class DKD(DistillationLoss):
    """DKD plug-in: ``{"tckd": α·TCKD, "nckd": β·NCKD}``, each entering the loss times ``w·c(e)``, a linear warm-up.

    Soft (B×C) labels are reduced to their argmax.

    Args:
        alpha: ``α``, weight of TCKD (1.0 in the DKD paper).
        beta: ``β``, weight of NCKD (8.0 for resnet32x4→resnet8x4 on CIFAR-100; 0.5 on ImageNet).
        temperature: ``T``.
        warmup_epochs: epochs of the linear warm-up ``c(e) = min(e / warmup_epochs, 1)`` (20 in the paper); used only
            when no ``schedule`` is given.
        weight: overall weight ``w`` of both terms.
        schedule: replaces the default :class:`~wkd_lightning.losses.schedule.LinearWarmup` schedule.
    """

    name = "dkd"

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 20,
        weight: float = 1.0,
        schedule: WeightSchedule | None = None,
    ) -> None:
        super().__init__(weight, schedule if schedule is not None else LinearWarmup(warmup_epochs))
        self.alpha = check_number(alpha, "alpha", "DKD")
        self.beta = check_number(beta, "beta", "DKD")
        self.temperature = check_number(temperature, "temperature", "DKD", positive=True)

    def forward(self, ctx: DistillationContext) -> dict[str, Tensor]:
        teacher_logits = self.require_teacher_logits(ctx)
        tckd, nckd = dkd_loss(ctx.student_logits, teacher_logits, ctx.target, self.alpha, self.beta, self.temperature)
        return {"tckd": tckd, "nckd": nckd}

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, weight={self.weight}, "
            f"schedule={self.schedule!r}"
        )
