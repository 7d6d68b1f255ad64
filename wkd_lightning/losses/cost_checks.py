"""Checks of a WKD-L category cost ``D`` (SPEC §1.3): its shape, that it means a distance, and that it was computed
for the data's classes. Shape checks are free; the others read values and run once, when a cost is set or at set-up,
never in the steps (:func:`~wkd_lightning.losses.checks.values_checked`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from wkd_lightning.losses.checks import values_checked


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
