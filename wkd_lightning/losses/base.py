"""The contract between :class:`~wkd_lightning.module.DistillationModule` and its distillation losses.

Data flows one way: the module runs the student and the frozen teacher on a batch, captures the features that some
loss asked for, packs everything into one :class:`DistillationContext` and hands it to each loss plug-in. A plug-in
returns its *weighted* terms by name; the module adds them to the cross-entropy and logs each one under
``train/loss/<plug-in name>/<term>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from wkd_lightning.checks import (  # noqa: F401 -- re-exported: the losses' checks used to live here
    NonFiniteWatch,
    check_finite,
    check_integer,
    check_labels,
    check_logits,
    check_number,
    check_total,
    class_indices,
    deferred_checks,
)
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
        self.weight = check_number(weight, "weight", type(self).__name__)
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

    def require_teacher_logits(self, ctx: DistillationContext) -> Tensor:
        """The context's teacher logits; raises if this run has no teacher (their shape is checked by the loss)."""
        if ctx.teacher_logits is None:
            raise ValueError(
                f"{self.name} needs teacher logits, but this run has no teacher; configure a teacher "
                "(model.teacher and model.teacher_weights) or remove this loss."
            )
        return ctx.teacher_logits


def loss_plugins(losses: Sequence[DistillationLoss] | None) -> nn.ModuleList:
    """A module's loss plug-ins as an ``nn.ModuleList``; their names must differ (they key the logged terms).

    Raises:
        ValueError: two plug-ins share a name.
    """
    plugins = nn.ModuleList(losses or [])
    names = [loss.name for loss in plugins]
    if len(set(names)) != len(names):
        raise ValueError(f"loss plug-ins need distinct names, got {names}; set `name` on the duplicates.")
    return plugins


def plugin_terms(
    losses: Iterable[DistillationLoss], ctx: DistillationContext, *, checked: bool = True
) -> dict[str, Tensor]:
    """Every plug-in's weighted terms on ``ctx``, keyed ``<plug-in name>/<term>`` (the names logged under
    ``train/loss/``).

    Args:
        losses: the plug-ins.
        ctx: the step's context.
        checked: run the plug-ins' value checks, eagerly (a plug-in compiled with ``nn.Module.compile`` runs its
            eager code, hooks included); ``False`` skips them (:func:`~wkd_lightning.checks.deferred_checks`) and runs
            the plug-ins as they are, compiled or not.
    """
    eager = torch.compiler.set_stance("force_eager") if checked else nullcontext()
    with deferred_checks(not checked), eager:
        return {f"{loss.name}/{key}": value for loss in losses for key, value in loss(ctx).items()}


def total_loss(
    terms: Mapping[str, Tensor],
    epoch: int,
    step: int,
    advice: str = "Lower the learning rate or the loss weights.",
    watch: NonFiniteWatch | None = None,
) -> Tensor:
    """``L = Σ terms``, the loss a training step minimises; a non-finite sum is an error naming the terms causing it.

    Args:
        terms: the step's named scalar terms (the task loss and every plug-in's).
        epoch: the 1-based epoch, for the message.
        step: the batch index, for the message.
        advice: what to try, appended to the message.
        watch: check later, on the device (:class:`~wkd_lightning.checks.NonFiniteWatch`: no host synchronisation);
            ``None`` checks now.

    Raises:
        FloatingPointError: the sum is NaN or infinite (now, or from ``watch`` a few steps later).
    """
    stacked = torch.stack(list(terms.values()))
    total = stacked.sum()
    if watch is None:
        check_total(terms, total, epoch, step, advice)
    else:
        watch.observe(terms, stacked, total, epoch, step)
    return total


def float32(x: Tensor) -> Tensor:
    """``x`` in fp32 (WKD losses always compute in full precision, even under autocast)."""
    return x.float() if x.dtype != torch.float32 else x
