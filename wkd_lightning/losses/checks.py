"""Argument and input checks of the loss functions and plug-ins, kept off the GPU hot path.

Every loss function and plug-in checks its arguments and inputs through these helpers, so the same mistake gets the
same message everywhere: ``"<owner>: <argument> must be <valid range>, got <value>. <advice>"``. The checks come in
three kinds, by what they cost:

* **arguments** (:func:`check_number`, :func:`check_integer`): Python numbers, free;
* **shapes and dtypes** (:func:`check_logits`, :func:`class_indices`, :func:`check_feature_maps`,
  :func:`check_grid_cells`): tensor metadata, free, always run (also under ``torch.compile``, where they are guards);
* **values** (:func:`check_finite`, :func:`check_labels`): they read tensor contents, which on a GPU is one blocking
  host synchronisation each. They run on eager calls, where a user wants the clear message, and are skipped while
  :func:`values_checked` is false: inside ``torch.compile`` (a graph break otherwise) and inside
  :func:`deferred_checks`, which the training steps use after the first, fully checked, step of each epoch. Their
  steady-state steps keep one check instead, on the device: :class:`~wkd_lightning.run.watch.NonFiniteWatch`.

The checks of a WKD-L cost matrix live beside the cost code (:mod:`wkd_lightning.losses.cost_checks`); those of a
whole training step (the input batch, the summed loss) with the run machinery (:mod:`wkd_lightning.run.watch`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

_deferred = 0


def values_checked() -> bool:
    """Whether the value checks run now: on eager calls, not under ``torch.compile`` nor inside
    :func:`deferred_checks`."""
    return _deferred == 0 and not torch.compiler.is_compiling()


@contextmanager
def deferred_checks(enabled: bool = True) -> Iterator[None]:
    """Skip the value checks (those that read tensor contents) inside the block when ``enabled``.

    The caller takes over: it has checked the same kind of inputs before (the first step of an epoch) and watches the
    loss with a :class:`NonFiniteWatch`.
    """
    global _deferred
    _deferred += int(enabled)
    try:
        yield
    finally:
        _deferred -= int(enabled)


# ---------------------------------------------------------------------------------------------------------------
# Arguments.


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


def check_wkd_logit_hparams(temperature: float, eps: float, iters: int, owner: str) -> tuple[float, float, int]:
    """WKD-L's ``(τ, ε, iterations)`` as float, float, int after checking them."""
    return (
        check_number(temperature, "temperature", owner, positive=True),
        check_number(eps, "sinkhorn_eps", owner, positive=True, hint="The release uses 0.05."),
        check_integer(iters, "sinkhorn_iters", owner),
    )


# ---------------------------------------------------------------------------------------------------------------
# Logits and labels.


def check_finite(student: Tensor, teacher: Tensor, what: str, owner: str) -> None:
    """Raise if the student's or the teacher's tensor holds NaN or ±inf, naming the side and the counts.

    A value check (skipped while :func:`values_checked` is false). Both are tested with one device synchronisation; the
    counts are only computed on failure. Non-finite inputs would otherwise surface as a NaN loss (or, in ``eigh``, as a
    convergence error) with no hint of their origin.

    Args:
        student: the student's tensor (logits or feature map).
        teacher: the teacher's tensor, same kind.
        what: what the tensors are, for the message (``"logits"``, ``"feature maps"``).
        owner: the function or class that received them.

    Raises:
        ValueError: naming the side, the number of NaN and inf entries, and what to do.
    """
    if not values_checked() or bool(torch.isfinite(student).all() & torch.isfinite(teacher).all()):
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

    A value check (skipped while :func:`values_checked` is false; on a GPU an index out of range then stops the step
    with a device-side assert).

    Args:
        target: class indices.
        num_classes: ``C``.
        owner: the caller, prefixed to the message when given.
    """
    if target.numel() == 0 or not values_checked():
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


# ---------------------------------------------------------------------------------------------------------------
# Feature maps (WKD-F).


def check_feature_maps(student_feat: Tensor, teacher_feat: Tensor, grid: int, owner: str) -> int:
    """Check the two maps (same B×C×H×W shape, B >= 1, finite) and return ``grid`` as an int >= 1."""
    if student_feat.ndim != 4 or student_feat.shape != teacher_feat.shape:
        raise ValueError(
            f"{owner}: expected student and teacher feature maps of the same B×C×H×W shape, got "
            f"{tuple(student_feat.shape)} and {tuple(teacher_feat.shape)}. Project the student map to the teacher's "
            "shape first (see wkd_lightning.losses.projectors.make_projector)."
        )
    grid = check_integer(grid, "grid", owner)
    if student_feat.shape[0] == 0:
        raise ValueError(f"{owner}: got an empty batch (B = 0).")
    check_finite(student_feat, teacher_feat, "feature maps", owner)
    return grid


def check_grid_cells(shape: tuple[int, ...], grid: int, owner: str) -> None:
    """Raise if a g×g grid over B×C×H×W maps of ``shape`` leaves cells of a single pixel.

    A one-pixel cell has no spatial spread: its variance is 0 for student and teacher alike, so its std term is
    exactly 0 and WKD-F only matches means there. Shape metadata only (free); the WKD-F plug-in runs it at set-up, when
    it first sees the teacher's feature map.

    Raises:
        ValueError: naming the feature shape, the grid, the cell sizes and the largest grid that works.
    """
    height, width = shape[-2:]

    def shortest(size: int, g: int) -> int:  # cell i spans [⌊i·size/g⌋, ⌈(i+1)·size/g⌉) (SPEC §4.2)
        return min(-(-(i + 1) * size // g) - i * size // g for i in range(g))

    if shortest(height, grid) * shortest(width, grid) > 1:
        return
    largest = max((g for g in range(1, grid) if shortest(height, g) * shortest(width, g) > 1), default=None)
    fix = f"use grid <= {largest}" if largest is not None else "use grid: 1"
    raise ValueError(
        f"{owner}: grid={grid} splits the teacher feature maps of shape C×H×W = {tuple(shape[-3:])} ({height}×{width} "
        "positions) "
        f"into cells of a single pixel, whose std term is exactly 0 (no spatial variance): {fix}, or read the features "
        "at an earlier, larger stage (teacher_path/student_path)."
    )
