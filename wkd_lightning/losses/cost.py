"""WKD-L's ground cost: the C×C category-cost matrix ``D``, how it is made, loaded and sharpened (SPEC §1.3, §3).

``D`` holds category distances (``wkd-ir`` computes them from a teacher; ``uniform`` knows nothing). It is sharpened
once, ``D ← 1 − exp(−κ·D)``, and used by Sinkhorn as ``M = relu(D) + 1e-8``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from wkd_lightning.losses.checks import check_number
from wkd_lightning.losses.cost_checks import check_cost, check_cost_meaning

#: Added to ``relu(D)`` so that every cost is strictly positive (released behaviour, SPEC §1.3).
COST_FLOOR = 1e-8


def uniform_cost(num_classes: int) -> Tensor:
    """The uninformative cost: 1 between any two different classes, 0 on the diagonal (C×C, fp32)."""
    if num_classes < 2:
        raise ValueError(f"uniform_cost: num_classes must be >= 2, got {num_classes}.")
    return 1.0 - torch.eye(num_classes)


def sharpen_cost(cost: Tensor, kappa: float) -> Tensor:
    """``D ← 1 − exp(−κ·D)`` (SPEC §1.3); returned unchanged when ``κ = 0``.

    For ``κ > 0`` this maps costs ``≥ 0`` monotonically into ``[0, 1)``, larger ``κ`` spreading small distances.

    Args:
        cost: ``D``, a C×C matrix of category distances.
        kappa: the sharpening factor ``κ``.
    """
    if check_number(kappa, "kappa", "sharpen_cost") == 0:
        return cost
    return 1.0 - torch.exp(-kappa * cost)


def load_cost(path: str | Path, kappa: float = 1.0) -> Tensor:
    """:func:`load_cost_file` without the metadata: the (sharpened) C×C cost."""
    return load_cost_file(path, kappa)[0]


def load_cost_file(path: str | Path, kappa: float = 1.0) -> tuple[Tensor, dict]:
    """Load a C×C category-cost matrix saved with ``torch.save`` and sharpen it unless that was already done.

    The file holds either a plain C×C tensor, or a dict with key ``"cost"`` (the C×C tensor) and metadata such as
    ``"method"``, ``"teacher"``, ``"dataset"``, ``"layer"``, ``"class_names"`` and ``"kappa_applied"``. When
    ``kappa_applied`` is true the stored matrix is already sharpened and ``kappa`` is ignored.

    Args:
        path: the file.
        kappa: the sharpening factor ``κ`` applied by :func:`sharpen_cost` (0 disables it).

    Returns:
        The (sharpened) C×C cost matrix in fp32 on the CPU, and the file's metadata (``{}`` for a plain tensor).

    Raises:
        FileNotFoundError: if the file does not exist (the message says how to make one).
        ValueError: if ``torch.load(..., weights_only=True)`` cannot read the file, the file holds something else, or
            the matrix is not a finite square matrix (the message names the file and counts the NaN/inf entries),
            or it is no distance: negative entries, or a similarity matrix (see
            :func:`~wkd_lightning.losses.cost_checks.check_cost_meaning`).
    """
    path = Path(path)
    source = f"WKD-L cost file {str(path)!r}"
    expected = "expected a C×C tensor or a dict {'cost': C×C tensor, ...metadata}"
    if not path.is_file():
        raise FileNotFoundError(
            f"{source} does not exist. Make one from a trained teacher with the IR tool, e.g. "
            "`wkd-ir -c configs/fashion_mnist/ir.yaml` (it writes <output_dir>/<method>.pt), or save a C×C tensor "
            "of category distances with `torch.save(D, path)`; or pass cost='uniform'."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types (UnpicklingError, EOFError, KeyError...) for bad files
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"{source} could not be read with torch.load(weights_only=True) ({type(err).__name__}: {reason}); "
            f"{expected}, written by `wkd-ir` or by torch.save(torch.as_tensor(D), path)."
        ) from err
    metadata = {}
    if isinstance(obj, dict):
        if "cost" not in obj:
            raise ValueError(
                f"{source} holds a dict without a 'cost' entry (keys: {sorted(map(str, obj))}); {expected}."
            )
        metadata = {k: v for k, v in obj.items() if k != "cost"}
        obj = obj["cost"]
    if not isinstance(obj, Tensor):
        raise ValueError(f"{source} holds a {type(obj).__name__}; {expected}.")
    cost = check_cost(obj.float(), None, source)
    check_cost_meaning(cost, source)
    return (cost if metadata.get("kappa_applied", False) else sharpen_cost(cost, kappa)), metadata


def positive_cost(cost: Tensor) -> Tensor:
    """``M = relu(D) + 1e-8`` (the cost as used by Sinkhorn), in fp32 or, for fp64 input, fp64."""
    return torch.relu(cost.to(compute_dtype(cost))) + COST_FLOOR


def compute_dtype(x: Tensor) -> torch.dtype:
    """fp32 for half/bfloat16/fp32 inputs (SPEC §1.6); fp64 inputs stay fp64 (used by gradient checks)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
