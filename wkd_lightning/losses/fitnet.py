"""FitNet (Romero et al., ICLR 2015): regress the teacher's intermediate "hint" map from the student's.

A trainable regressor (the ``conv1x1`` projector: conv + BN + ReLU, as in the CRD/RepDistiller lineage) maps the
student's "guided" map to the teacher's hint shape; the loss is the mean squared error between the two.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from wkd_lightning.losses.base import DistillationContext, float32
from wkd_lightning.losses.projectors import ProjectedFeatureLoss
from wkd_lightning.losses.schedule import WeightSchedule


def fitnet_loss(regressed_student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error ``mean((r(F_s) − F_t)²)`` over all elements, in fp32; the teacher side is detached.

    Raises:
        ValueError: if the two shapes differ.
    """
    if regressed_student.shape != teacher.shape:
        raise ValueError(
            f"fitnet_loss: the regressed student map has shape {tuple(regressed_student.shape)} but the teacher hint "
            f"has {tuple(teacher.shape)}; they must match."
        )
    return F.mse_loss(float32(regressed_student), float32(teacher).detach())


class FitNet(ProjectedFeatureLoss):
    """FitNet plug-in: ``{"hint": MSE(r(F_s), F_t)}``, entering the loss as ``w(e) · hint``.

    Args:
        student_path: dotted module path of the student's guided layer.
        teacher_path: dotted module path of the teacher's hint layer.
        weight: hint weight (100 in the CRD/RepDistiller benchmark, with the CE at weight 1).
        schedule: optional epoch schedule of the weight.
    """

    name = "fitnet"

    def __init__(
        self,
        student_path: str,
        teacher_path: str,
        weight: float = 100.0,
        schedule: WeightSchedule | None = None,
    ) -> None:
        super().__init__(student_path, teacher_path, "conv1x1", weight, schedule)

    def forward(self, ctx: DistillationContext) -> dict[str, Tensor]:
        regressed, teacher = self.project(ctx)
        return {"hint": fitnet_loss(regressed, teacher)}
