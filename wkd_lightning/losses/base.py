"""The contract between :class:`~wkd_lightning.module.DistillationModule` and its distillation losses.

Data flows one way: the module runs the student and the frozen teacher on a batch, captures the features that some
loss asked for, packs everything into one :class:`DistillationContext` and hands it to each loss plug-in. A plug-in
returns its *weighted* terms by name; the module adds them to the cross-entropy and logs each one under
``train/loss/<plug-in name>/<term>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from wkd_lightning.losses.schedule import Constant, WeightSchedule


@dataclass(frozen=True)
class DistillationContext:
    """Everything one training (or validation) step knows, as seen by a loss.

    Attributes:
        student_logits: ``z_s``, B×C student logits (autograd attached).
        teacher_logits: ``z_t``, B×C teacher logits (no grad), or ``None`` in a teacher-free run.
        target: labels, B class indices (or B×C soft labels from mixing augmentations).
        student_features: outputs of the student modules named by the losses' ``student_paths``.
        teacher_features: outputs of the teacher modules named by the losses' ``teacher_paths``.
        epoch: the 1-based epoch ``e`` of SPEC §2.
        max_epochs: ``E``, the length of the run (used by the weight schedules).
    """

    student_logits: Tensor
    teacher_logits: Tensor | None
    target: Tensor
    student_features: Mapping[str, Tensor] = field(default_factory=dict)
    teacher_features: Mapping[str, Tensor] = field(default_factory=dict)
    epoch: int = 1
    max_epochs: int = 1

    @property
    def hard_target(self) -> Tensor:
        """Class indices: the labels themselves, or the argmax of soft (2-D) labels."""
        return self.target.argmax(dim=1) if self.target.ndim == 2 else self.target


class DistillationLoss(nn.Module):
    """Base class of the loss plug-ins.

    A plug-in names the features it needs (dotted module paths of the student and the teacher), may own trainable
    parts (projectors, regressors; optimised together with the student) and buffers (cost kernels), and maps a
    :class:`DistillationContext` to a dict of weighted scalar terms.

    Args:
        weight: the base weight of the plug-in's main term (γ for WKD-L, the WKD-F weight, α for KD, ...).
        schedule: how that weight changes with the epoch; constant by default.
    """

    #: Short name used in logs (``train/loss/<name>/...``) and error messages.
    name: str = "loss"
    #: Whether the plug-in needs a teacher; the module refuses to start without one when this is set.
    requires_teacher: bool = True

    def __init__(self, weight: float = 1.0, schedule: WeightSchedule | None = None) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"{type(self).__name__}: weight must be >= 0, got {weight}.")
        self.weight = float(weight)
        self.schedule = schedule if schedule is not None else Constant()

    @property
    def student_paths(self) -> tuple[str, ...]:
        """Dotted paths of the student modules whose outputs this loss reads."""
        return ()

    @property
    def teacher_paths(self) -> tuple[str, ...]:
        """Dotted paths of the teacher modules whose outputs this loss reads."""
        return ()

    def build(self, student_features: Mapping[str, Tensor], teacher_features: Mapping[str, Tensor]) -> None:
        """Create shape-dependent parts (projectors) from example features.

        Called once by the module before the optimizer is made, with features from one real sample run through the
        student and the teacher in eval mode (so no BatchNorm statistics move). Plug-ins without such parts do
        nothing.
        """

    def scheduled_weight(self, ctx: DistillationContext) -> float:
        """The weight at the context's epoch: ``weight · c(e)``."""
        return self.weight * self.schedule(ctx.epoch, ctx.max_epochs)

    def forward(self, ctx: DistillationContext) -> dict[str, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    @staticmethod
    def check_same_classes(student_logits: Tensor, teacher_logits: Tensor | None, name: str) -> Tensor:
        """Return the teacher logits after checking they exist and match the student's B×C shape."""
        if teacher_logits is None:
            raise ValueError(f"{name} needs teacher logits, but this run has no teacher.")
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(
                f"{name}: teacher logits have shape {tuple(teacher_logits.shape)} but student logits have "
                f"{tuple(student_logits.shape)}; teacher and student must predict the same classes."
            )
        return teacher_logits


def check_labels(target: Tensor, num_classes: int) -> None:
    """Raise if class indices fall outside ``[0, C)`` (a frequent symptom of a data/model class-count mismatch)."""
    if target.numel() == 0:
        return
    low, high = int(target.min()), int(target.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for {num_classes}-class logits, got values in [{low}, {high}]. "
            "Check that the data module and the model have the same number of classes."
        )


def float32(x: Tensor) -> Tensor:
    """``x`` in fp32 (WKD losses always compute in full precision, even under autocast)."""
    return x.float() if x.dtype != torch.float32 else x
