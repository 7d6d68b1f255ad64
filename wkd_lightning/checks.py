"""Input checks of the losses and the distillation modules, kept off the GPU hot path.

Every loss function and plug-in checks its arguments and inputs through these helpers, so the same mistake gets the
same message everywhere: ``"<owner>: <argument> must be <valid range>, got <value>. <advice>"``. The checks come in
three kinds, by what they cost:

* **arguments** (:func:`check_number`, :func:`check_integer`): Python numbers, free;
* **shapes and dtypes** (:func:`check_logits`, :func:`class_indices`, :func:`check_feature_maps`,
  :func:`check_cost`, :func:`check_grid_cells`): tensor metadata, free, always run (also under ``torch.compile``,
  where they are guards); comparisons of names (:func:`check_cost_class_names`), at set-up;
* **values** (:func:`check_finite`, :func:`check_labels`, the cost's NaN count, :func:`check_stable_range`,
  :func:`check_cost_meaning`, :func:`check_input_batch`): they
  read tensor contents, which on a GPU is one blocking host synchronisation each. They run on eager calls, where a
  user wants the clear message, and are skipped while :func:`values_checked` is false: inside ``torch.compile``
  (a graph break otherwise) and inside :func:`deferred_checks`, which the training steps of
  :class:`~wkd_lightning.module.DistillationModule` and the detection module use after the first, fully checked, step
  of each epoch. Their steady-state steps keep one check instead, on the device: :class:`NonFiniteWatch` notes
  whether the summed loss ``L = Σ terms`` was finite, and is read every ``N`` steps without waiting for the GPU.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

#: Largest ``max(M)/ε`` the stabilised Sinkhorn path accepts: ``exp(−650)`` ≈ 5e-283 is still a normal fp64 number, and
#: the ``1/x`` factors of its backward pass (``≤ e^650``) leave a wide margin below the fp64 maximum (≈ 1.8e308).
MAX_STABLE_COST_OVER_EPS = 650.0

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


# ---------------------------------------------------------------------------------------------------------------
# WKD-L cost matrices.


def check_cost_size(cost_classes: int, num_classes: int, owner: str) -> None:
    """Raise if a ``cost_classes``-square cost does not fit ``num_classes``-class logits."""
    if cost_classes != num_classes:
        raise ValueError(
            f"{owner}: the cost matrix is {cost_classes}×{cost_classes} but the logits have C = {num_classes} "
            f"classes; use a cost computed for this dataset's {num_classes} classes (e.g. with `wkd-ir` on its "
            "teacher), or cost='uniform'."
        )


def check_cost(cost: Tensor, num_classes: int | None, owner: str) -> Tensor:
    """Return ``cost`` after checking it is a finite square matrix of size >= 2 (and C if given).

    Negative entries pass here: ``M = relu(D) + 1e-8`` maps them to the floor, as the release does (SPEC §1.3);
    the WKD-L plug-in refuses them, and similarity matrices, once when its cost is set (:func:`check_cost_meaning`).
    The NaN/inf count is a value check.
    """
    if not isinstance(cost, Tensor):
        raise ValueError(f"{owner}: cost must be a C×C tensor, got {type(cost).__name__}.")
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"{owner}: cost must be a square C×C matrix, got shape {tuple(cost.shape)}.")
    if num_classes is not None:
        check_cost_size(cost.shape[0], num_classes, owner)
    if cost.shape[0] < 2:
        raise ValueError(f"{owner}: cost must be at least 2×2, got {tuple(cost.shape)}.")
    bad = int((~torch.isfinite(cost)).sum()) if values_checked() else 0
    if bad:
        raise ValueError(
            f"{owner}: cost has {bad} non-finite entries (NaN or inf) of {cost.numel()}; every entry must be finite. "
            "Recompute the matrix (e.g. with `wkd-ir`) or replace those entries."
        )
    return cost


#: Round-off allowed below 0 and around a zero diagonal, relative to ``max(1, max |D|)``.
COST_TOLERANCE = 1e-6


def check_cost_meaning(cost: Tensor, owner: str) -> None:
    """Raise if a category cost cannot be a matrix of distances: negative entries, or a similarity matrix.

    A value check (run once when a WKD-L cost is set, never in the steps). ``D`` is a distance between categories: no
    entry may be negative (beyond round-off), and a class is at distance 0 from itself. A diagonal that is not 0 is
    accepted when it is not the largest entry of its row (a distance shifted by a constant, say, which changes ``W`` by
    that constant and not its gradient); a non-zero diagonal that is at least as large as every other entry of its row,
    in every row, is what a *similarity* (cosine, CKA: 1 on the diagonal) looks like, and is refused: as a cost it
    would make the most similar classes the farthest apart.

    Raises:
        ValueError: naming the smallest entry and where it is, or the diagonal, and how to make a cost of it.
    """
    if not values_checked():
        return
    cost = cost.detach().float()
    off = cost.masked_fill(torch.eye(cost.shape[0], dtype=torch.bool, device=cost.device), -math.inf)
    diagonal = cost.diagonal()
    low, at = cost.min(), cost.argmin()
    stats = torch.stack([low, cost.abs().max(), diagonal.abs().max(), (diagonal >= off.amax(dim=1)).all().float()])
    low, high, diagonal_max, diagonal_is_row_max = stats.tolist()
    tolerance = COST_TOLERANCE * max(1.0, high)
    if low < -tolerance:
        row, col = divmod(int(at), cost.shape[1])
        raise ValueError(
            f"{owner}: cost has negative entries (the smallest is D[{row}, {col}] = {low:.4g}); a category cost is a "
            "distance, >= 0 everywhere. Rebuild it (e.g. with `wkd-ir`), or shift or clip it yourself (D - D.min(), "
            "D.clamp(min=0)) if that is what you mean."
        )
    if diagonal_max > tolerance and diagonal_is_row_max:
        raise ValueError(
            f"{owner}: cost looks like a similarity matrix, not a cost: its diagonal is not 0 (up to "
            f"{diagonal_max:.4g}) and is the largest entry of every row, so the most similar classes would be the "
            "farthest apart. A cost needs D[i, i] = 0: pass 1 - S for a similarity S in [0, 1] (what `wkd-ir` writes), "
            "or compute the cost with `wkd-ir`."
        )


def check_cost_class_names(
    cost_names: Sequence[str] | None, data_names: Sequence[str] | None, source: str, data_owner: str
) -> None:
    """Raise if a cost file was computed for other classes (or another class order) than the data module's.

    ``wkd-ir`` stores the data module's ``class_names`` in each cost file; row ``i`` of the cost belongs to class ``i``.
    Nothing is checked when either side has no names (a plain tensor file, a data module without ``class_names``).

    Raises:
        ValueError: naming the file, the first differing positions and what to do.
    """
    if cost_names is None or data_names is None:
        return
    cost_names, data_names = [str(n) for n in cost_names], [str(n) for n in data_names]
    if cost_names == data_names:
        return
    if sorted(cost_names) == sorted(data_names):
        what = "the same classes in another order"
    else:
        only_cost = [n for n in cost_names if n not in set(data_names)]
        only_data = [n for n in data_names if n not in set(cost_names)]
        what = f"other classes (only in the cost file: {_first(only_cost)}; only in the data: {_first(only_data)})"
    differ = [i for i, (a, b) in enumerate(zip(cost_names, data_names)) if a != b]
    where = f"; first difference at class {differ[0]}: {cost_names[differ[0]]!r} vs {data_names[differ[0]]!r}"
    raise ValueError(
        f"{source} was computed for {what} than {data_owner} ({len(cost_names)} vs {len(data_names)} names"
        f"{where if differ else ''}): its row i would be read as another class. Rebuild the cost for this data with "
        "`wkd-ir` (it stores the data module's class names), or use the data module it was made for."
    )


def check_costs_fit_data(losses: Iterable, datamodule: object) -> None:
    """:func:`check_cost_class_names` for every loss whose cost came from a file that names its classes (WKD-L's
    ``cost_class_names``), against ``datamodule.class_names``; run once at set-up."""
    data_names = getattr(datamodule, "class_names", None)
    for loss in losses:
        names = getattr(loss, "cost_class_names", None)
        source = f"{loss.name}: the WKD-L cost file {getattr(loss, 'cost_source', '?')!r}"
        check_cost_class_names(names, data_names, source, f"the data module {type(datamodule).__name__}")


def _first(names: Sequence[str], count: int = 5) -> str:
    shown = ", ".join(map(repr, names[:count]))
    return f"[{shown}{', ...' if len(names) > count else ''}]" if names else "none"


def check_stable_range(cost: Tensor, eps: float, owner: str) -> None:
    """Raise if ``max(M)/ε`` exceeds :data:`MAX_STABLE_COST_OVER_EPS`, where even float64 cannot hold the kernel.

    A value check (the WKD-L plug-in runs it once, when its cost is set).

    Args:
        cost: ``M``, C×C.
        eps: ``ε``.
        owner: the caller, for the message.

    Raises:
        ValueError: naming the ratio, the cost maximum and ``ε``, and what to change.
    """
    if not values_checked():
        return
    high = float(cost.detach().max())
    ratio = high / eps
    if ratio > MAX_STABLE_COST_OVER_EPS:
        raise ValueError(
            f"{owner}: max(cost)/eps = {high:.4g}/{eps:g} = {ratio:.4g} exceeds {MAX_STABLE_COST_OVER_EPS:g}; "
            "exp(-cost/eps) cannot be represented even in float64. Sharpen the cost (kappa > 0 maps it into [0, 1)), "
            "rescale it, or use a larger sinkhorn_eps."
        )


def assert_on_device(condition: Tensor, message: str) -> None:
    """Fail if ``condition`` (a 0-d bool tensor) is false, without a host synchronisation (a device-side assert on a
    GPU; under ``torch.compile`` an assert in the graph). For the checks that must hold where values are not read."""
    torch._assert_async(condition, message)


# ---------------------------------------------------------------------------------------------------------------
# The summed loss.


def bad_input_rows(inputs: Tensor) -> Tensor:
    """B bools: which samples of a B×... input batch hold a NaN or an inf (device work only; integer inputs: none)."""
    if not inputs.is_floating_point():
        return torch.zeros(inputs.shape[0], dtype=torch.bool, device=inputs.device)
    return ~torch.isfinite(inputs.detach()).flatten(1).all(dim=1)


def input_message(epoch: int, step: int, count: int, samples: list[int], indexed: bool) -> str:
    """The message of an input batch with NaN/inf pixels: where, which samples, what to check."""
    shown = ", ".join(map(str, samples[:10])) + (", ..." if len(samples) > 10 or count > len(samples) else "")
    which = (
        f"sample indices [{shown}] of the training set"
        if indexed
        else f"positions [{shown}] in the batch; --data.return_index true names their dataset indices"
    )
    return (
        f"input batch contains NaN/inf pixels at epoch {epoch}, step {step} ({count} sample(s): {which}): the data is "
        "broken, not the student. Check those samples' files and the transforms (a normalisation by a zero std, a "
        "division in a custom transform)."
    )


def check_input_batch(inputs: Tensor, index: Tensor | None, epoch: int, step: int) -> None:
    """Raise if a training batch holds NaN/inf pixels, naming the samples (a value check: one host synchronisation).

    The training steps run it on the first, fully checked, step of each epoch; the steps in between hand their inputs
    to :class:`NonFiniteWatch`, which names them when the loss turns non-finite.

    Raises:
        ValueError: naming the epoch, the step and the samples (dataset indices when the batch carries them).
    """
    if not values_checked():
        return
    rows = bad_input_rows(inputs)
    if not bool(rows.any()):
        return
    positions = rows.nonzero().flatten()
    samples = index.to(positions.device)[positions] if index is not None else positions
    raise ValueError(input_message(epoch, step, len(positions), samples.tolist(), index is not None))


def nonfinite_message(epoch: int, step: int, bad: list[str], advice: str) -> str:
    """The message of a non-finite training loss: where, which terms, what to try."""
    return f"non-finite loss at epoch {epoch}, step {step}: terms {bad}. {advice}"


def check_total(terms: Mapping[str, Tensor], total: Tensor, epoch: int, step: int, advice: str) -> None:
    """Raise now if ``total`` is NaN or infinite (a value check: one host synchronisation).

    Raises:
        FloatingPointError: naming the epoch, the step and the non-finite terms.
    """
    if values_checked() and not torch.isfinite(total):
        bad = [name for name, value in terms.items() if not torch.isfinite(value)]
        raise FloatingPointError(nonfinite_message(epoch, step, bad, advice))


class NonFiniteWatch:
    """The deferred form of :func:`check_total`: notes on the device whether a step's loss ``L`` was non-finite.

    :meth:`observe` only launches a few element-wise kernels (``isfinite`` of ``L`` and of its terms, and ``where``
    updates of a flag, of the first bad step's position and of its non-finite terms): nothing waits for the device.
    Every ``every`` observed steps the flag is copied to host memory without blocking (pinned memory and a CUDA event);
    the copy is read at the next such step, once it has arrived, and :meth:`flush` (at each epoch end) reads it
    waiting. A non-finite loss thus stops the run at most ``2·every`` steps after it happened, with the same message as
    :func:`check_total`, naming the step where it happened. Given the step's inputs, it also notes whether they held
    NaN/inf pixels: the message is then :func:`input_message` (which samples, at which step), a ``ValueError``, since
    the data, not the student, is at fault.

    Args:
        every: steps between two reads of the flag.
        advice: what to try, appended to the message.
    """

    def __init__(self, every: int = 50, advice: str = "Lower the learning rate or the loss weights.") -> None:
        self.every = check_integer(every, "every", "NonFiniteWatch")
        self.advice = advice
        self._observed = 0
        self._flag: Tensor | None = None
        self._where: Tensor | None = None
        self._bad_terms: dict[tuple[str, ...], Tensor] = {}
        self._inputs: Tensor | None = None  # at the first bad step: [inputs bad, bad samples, first bad sample]
        self._indexed = False
        self._pending: tuple[Tensor, torch.cuda.Event | None] | None = None

    def observe(
        self,
        terms: Mapping[str, Tensor],
        stacked: Tensor,
        total: Tensor,
        epoch: int,
        step: int,
        inputs: Tensor | None = None,
        index: Tensor | None = None,
    ) -> None:
        """Note whether ``total = stacked.sum()`` (``stacked``: the terms, in order) is finite; device work only.

        ``inputs`` (the step's B×... input batch) and ``index`` (its samples' dataset indices) let the message name
        NaN/inf pixels as the cause.
        """
        if self._flag is None or self._flag.device != total.device:
            self._flag = torch.zeros((), dtype=torch.bool, device=total.device)
            self._where = torch.zeros((), dtype=torch.int64, device=total.device)
            self._inputs = torch.zeros(3, dtype=torch.int64, device=total.device)
            self._bad_terms = {}
        bad = ~torch.isfinite(total.detach())
        new = bad & ~self._flag
        # Epoch and step packed in one integer: a Python scalar goes to the kernel as an argument, not as a copy.
        self._where = torch.where(new, epoch * 2**32 + step, self._where)
        names = tuple(terms)
        previous = self._bad_terms.get(names)
        bad_terms = new & ~torch.isfinite(stacked.detach())
        self._bad_terms[names] = bad_terms if previous is None else torch.where(new, bad_terms, previous)
        if inputs is not None:
            rows = bad_input_rows(inputs).to(total.device)
            first = rows.to(torch.uint8).argmax().view(1)  # first bad sample (0 when none); no host read
            sample = index.to(total.device).gather(0, first) if index is not None else first
            noted = torch.cat([rows.any().view(1), rows.sum().view(1), sample.view(1)]).to(torch.int64)
            self._inputs = torch.where(new, noted, self._inputs)
            self._indexed = index is not None
        self._flag = self._flag | bad
        self._observed += 1
        if self._observed % self.every == 0:
            self._read(wait=False)
            self._request()

    def flush(self) -> None:
        """Read the flag now, waiting for the device (one synchronisation; call it off the hot path)."""
        if self._flag is not None:
            self._request()
            self._read(wait=True)

    def _request(self) -> None:
        flag = self._flag
        if flag.device.type == "cuda":
            host = torch.empty((), dtype=torch.bool, pin_memory=True)
            host.copy_(flag, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (host, event)
        else:
            self._pending = (flag.clone(), None)

    def _read(self, wait: bool) -> None:
        if self._pending is None:
            return
        host, event = self._pending
        if event is not None and not event.query():
            if not wait:
                return
            event.synchronize()
        self._pending = None
        if bool(host):
            self._raise()

    def _raise(self) -> None:
        where = int(self._where)
        inputs_bad, count, sample = self._inputs.tolist()
        if inputs_bad:
            message = input_message(where >> 32, where & (2**32 - 1), count, [sample], self._indexed)
            raise ValueError(f"{message} (noticed by the loss watch, which reads the loss every {self.every} steps)")
        bad = [name for names, flags in self._bad_terms.items() for name, flag in zip(names, flags.tolist()) if flag]
        message = nonfinite_message(where >> 32, where & (2**32 - 1), list(dict.fromkeys(bad)), self.advice)
        raise FloatingPointError(
            f"{message} (noticed {self._observed} steps into the watch, which reads the loss "
            f"every {self.every} steps off the hot path)"
        )
