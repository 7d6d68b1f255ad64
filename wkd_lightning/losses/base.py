"""The contract between :class:`~wkd_lightning.module.DistillationModule` and its distillation losses.

Data flows one way: the module runs the student and the frozen teacher on a batch, captures the features that some
loss asked for, packs everything into one :class:`DistillationContext` and hands it to each loss plug-in. A plug-in
returns its *weighted* terms by name; the module adds them to the cross-entropy and logs each one under
``train/loss/<plug-in name>/<term>``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
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


def plugin_terms(losses: Iterable[DistillationLoss], ctx: DistillationContext) -> dict[str, Tensor]:
    """Every plug-in's weighted terms on ``ctx``, keyed ``<plug-in name>/<term>`` (the names logged under
    ``train/loss/``)."""
    return {f"{loss.name}/{key}": value for loss in losses for key, value in loss(ctx).items()}


def total_loss(
    terms: Mapping[str, Tensor], epoch: int, step: int, advice: str = "Lower the learning rate or the loss weights."
) -> Tensor:
    """``Σ terms``, the loss a training step minimises; a non-finite sum is an error naming the terms that caused it.

    Args:
        terms: the step's named scalar terms (the task loss and every plug-in's).
        epoch: the 1-based epoch, for the message.
        step: the batch index, for the message.
        advice: what to try, appended to the message.

    Raises:
        FloatingPointError: the sum is NaN or infinite.
    """
    total = torch.stack(list(terms.values())).sum()
    if not torch.isfinite(total):
        bad = [name for name, value in terms.items() if not torch.isfinite(value)]
        raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {step}: terms {bad}. {advice}")
    return total


# ---------------------------------------------------------------------------------------------------------------
# Shared validation. Every loss function and plug-in checks its arguments and inputs through these helpers, so the
# same mistake gets the same message everywhere: "<owner>: <argument> must be <valid range>, got <value>. <advice>".


def check_number(value: float, arg: str, owner: str, *, positive: bool = False, hint: str = "") -> float:
    """Return ``float(value)`` after checking that it is a finite real number, ``> 0`` or (default) ``>= 0``.

    Args:
        value: the argument's value.
        arg: its name, as the user spells it (``"temperature"``, ``"mean_weight (ρ)"``...).
        owner: the function or class that received it (prefixes the message).
        positive: require ``> 0`` instead of ``>= 0``.
        hint: an optional sentence appended to the message (what to do instead).

    Raises:
        ValueError: naming ``owner``, ``arg``, the valid range and the value.
    """
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (is_real and math.isfinite(value) and (value > 0 if positive else value >= 0)):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{owner}: {arg} must be a finite number {bound}, got {value!r}.{' ' + hint if hint else ''}")
    return float(value)


def check_integer(value: int, arg: str, owner: str, *, minimum: int = 1) -> int:
    """Return ``int(value)`` after checking that it is an integer (not a bool, not a fractional float) ``>= minimum``.

    Raises:
        ValueError: naming ``owner``, ``arg``, the valid range and the value.
    """
    is_integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not is_integral or value < minimum:
        raise ValueError(f"{owner}: {arg} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_finite(student: Tensor, teacher: Tensor, what: str, owner: str) -> None:
    """Raise if the student's or the teacher's tensor holds NaN or ±inf, naming the side and the counts.

    Both are tested with one device synchronisation; the counts are only computed on failure. Non-finite inputs would
    otherwise surface as a NaN loss (or, in ``eigh``, as a convergence error) with no hint of their origin.

    Args:
        student: the student's tensor (logits or feature map).
        teacher: the teacher's tensor, same kind.
        what: what the tensors are, for the message (``"logits"``, ``"feature maps"``).
        owner: the function or class that received them.

    Raises:
        ValueError: naming the side, the number of NaN and inf entries, and what to do.
    """
    if bool(torch.isfinite(student).all() & torch.isfinite(teacher).all()):
        return
    advice = {
        "student": "the student has diverged (lower the learning rate or the loss weights) or overflowed in float16 "
        "(train in bf16-mixed or fp32)",
        "teacher": "check the teacher weights (teacher_weights), and run the teacher in bf16 or fp32 if it "
        "overflows in float16",
    }
    for side, x in (("student", student), ("teacher", teacher)):
        nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        if nan or inf:
            raise ValueError(
                f"{owner}: the {side} {what} contain {nan} NaN and {inf} inf values (of {x.numel()}, shape "
                f"{tuple(x.shape)}); {advice[side]}."
            )


def check_logits(student_logits: Tensor, teacher_logits: Tensor, owner: str, *, min_classes: int = 1) -> None:
    """Check a student/teacher logit pair: both B×C with the same shape, ``C >= min_classes``, all values finite.

    Raises:
        ValueError: naming the offending side and shape (or the counts of NaN/inf values, see :func:`check_finite`).
    """
    if student_logits.ndim != 2 or teacher_logits.ndim != 2:
        raise ValueError(
            f"{owner}: expected B×C (2-D) logits, got student logits of shape {tuple(student_logits.shape)} and "
            f"teacher logits of shape {tuple(teacher_logits.shape)}. Pass the classifier outputs, not features."
        )
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"{owner}: teacher logits have shape {tuple(teacher_logits.shape)} but student logits have "
            f"{tuple(student_logits.shape)}; teacher and student must predict the same classes."
        )
    if student_logits.shape[1] < min_classes:
        raise ValueError(
            f"{owner}: needs at least {min_classes} classes, got logits of shape {tuple(student_logits.shape)} "
            f"(C = {student_logits.shape[1]})."
        )
    check_finite(student_logits, teacher_logits, "logits", owner)


def check_labels(target: Tensor, num_classes: int, owner: str = "") -> None:
    """Raise if class indices fall outside ``[0, C)`` (a frequent symptom of a data/model class-count mismatch).

    Args:
        target: class indices.
        num_classes: ``C``.
        owner: the caller, prefixed to the message when given.
    """
    if target.numel() == 0:
        return
    low, high = int(target.min()), int(target.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{owner + ': ' if owner else ''}labels must lie in [0, {num_classes}) for {num_classes}-class logits, got "
            f"values in [{low}, {high}]. Check that the data module and the model have the same number of classes."
        )


def class_indices(target: Tensor, logits: Tensor, owner: str) -> Tensor:
    """Class indices from B integer labels, or the argmax of B×C soft/mixed labels, checked against B×C ``logits``.

    Raises:
        ValueError: for labels of the wrong shape or dtype, or outside ``[0, C)``.
    """
    batch, num_classes = logits.shape
    if target.ndim == 2:
        if target.shape != logits.shape:
            raise ValueError(
                f"{owner}: soft targets have shape {tuple(target.shape)} but the logits have {tuple(logits.shape)}; "
                "expected B class indices or B×C soft labels."
            )
        return target.argmax(dim=1)
    if target.ndim != 1 or target.shape[0] != batch:
        raise ValueError(
            f"{owner}: targets have shape {tuple(target.shape)}; expected {batch} class indices or "
            f"{batch}×{num_classes} soft labels."
        )
    if target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(f"{owner}: 1-D targets must be integer class indices, got dtype {target.dtype}.")
    check_labels(target, num_classes, owner)
    return target


def float32(x: Tensor) -> Tensor:
    """``x`` in fp32 (WKD losses always compute in full precision, even under autocast)."""
    return x.float() if x.dtype != torch.float32 else x
