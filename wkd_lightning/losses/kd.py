"""Hinton et al.'s knowledge distillation: KL between temperature-softened teacher and student distributions."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from wkd_lightning.losses.base import DistillationContext, DistillationLoss, float32
from wkd_lightning.losses.checks import check_logits, check_number
from wkd_lightning.losses.schedule import WeightSchedule


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """``T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))``, averaged over the batch.

    The ``T²`` factor keeps the gradient scale independent of ``T`` (Hinton et al., 2015).

    Raises:
        ValueError: for a ``temperature`` that is not a finite number > 0, logits that are not two B×C tensors of the
            same shape, or NaN/inf logits (the message names the side).
    """
    check_number(temperature, "temperature", "kd_loss", positive=True)
    check_logits(student_logits, teacher_logits, "kd_loss")
    log_p_s = F.log_softmax(float32(student_logits) / temperature, dim=1)
    log_p_t = F.log_softmax(float32(teacher_logits).detach() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


class KD(DistillationLoss):
    """KD plug-in: ``{"kl": kd_loss(z_s, z_t, T)}``, entering the loss as ``w(e) · kl``.

    Args:
        temperature: the softening temperature ``T``.
        weight: the KD weight (the student's CE keeps weight 1).
        schedule: optional epoch schedule of the weight.
    """

    name = "kd"

    def __init__(self, temperature: float = 4.0, weight: float = 1.0, schedule: WeightSchedule | None = None) -> None:
        super().__init__(weight, schedule)
        self.temperature = check_number(temperature, "temperature", "KD", positive=True)

    def forward(self, ctx: DistillationContext) -> dict[str, Tensor]:
        teacher_logits = self.require_teacher_logits(ctx)
        return {"kl": kd_loss(ctx.student_logits, teacher_logits, self.temperature)}
