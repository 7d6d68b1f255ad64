"""Heatmap pictures of cost matrices, with classes ordered by an average-linkage clustering of the matrix itself.

Matplotlib is used through its object interface on the Agg canvas (no pyplot, no global backend switch), so this
works headless and does not disturb a caller's own plotting.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence

import numpy as np
from torch import Tensor

#: Above this many classes the axes carry no class names (they would be unreadable).
MAX_LABELLED_CLASSES = 120


def average_linkage(cost: Tensor | np.ndarray) -> np.ndarray:
    """Agglomerative clustering with average linkage (UPGMA) on a symmetric distance matrix.

    Returns a ``(C − 1) × 4`` array in SciPy's linkage layout: row ``s`` merges clusters ``a`` and ``b`` (leaves are
    ``0..C−1``, the cluster made at step ``s`` is ``C + s``) at distance ``h`` into a cluster of ``size`` leaves.
    The distance between clusters is the mean of the pairwise distances of their members, updated with the
    Lance-Williams rule ``d(a∪b, k) = (|a| d(a, k) + |b| d(b, k)) / (|a| + |b|)``. Ties go to the lowest index pair.
    ``O(C³)`` in the worst case, well under a second for C = 1000 in practice.
    """
    dist = np.array(cost.detach().cpu().numpy() if isinstance(cost, Tensor) else cost, dtype=np.float64)
    if dist.ndim != 2 or dist.shape[0] != dist.shape[1] or dist.shape[0] < 1:
        raise ValueError(f"average_linkage needs a square distance matrix, got shape {dist.shape}.")
    n = dist.shape[0]
    dist = (dist + dist.T) / 2
    np.fill_diagonal(dist, np.inf)
    size = np.ones(n)
    cluster_id = np.arange(n)
    merges = np.empty((max(n - 1, 0), 4))
    for step in range(n - 1):
        a, b = divmod(int(np.argmin(dist)), n)
        a, b = min(a, b), max(a, b)
        merged = (size[a] * dist[a] + size[b] * dist[b]) / (size[a] + size[b])
        low, high = sorted((cluster_id[a], cluster_id[b]))
        merges[step] = (low, high, dist[a, b], size[a] + size[b])
        dist[a, :] = merged  # the new cluster takes slot a, slot b is retired
        dist[:, a] = merged
        dist[b, :] = np.inf
        dist[:, b] = np.inf
        dist[a, a] = np.inf
        size[a] += size[b]
        cluster_id[a] = n + step
    return merges


def leaf_order(merges: np.ndarray) -> list[int]:
    """Leaves of a linkage in dendrogram order (left subtree first, iteratively: no recursion limit)."""
    n = len(merges) + 1
    order, stack = [], [2 * n - 2] if n > 1 else [0]
    while stack:
        node = stack.pop()
        if node < n:
            order.append(int(node))
        else:
            left, right = merges[node - n, :2].astype(int)
            stack.extend((right, left))
    return order


def plot_cost_heatmap(
    cost: Tensor | np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    groups: Sequence[Hashable] | None = None,
    dpi: int = 120,
) -> list[int]:
    """Write a PNG heatmap of ``cost`` with rows and columns in average-linkage order, and return that order.

    The colour scale spans the off-diagonal range (the zero diagonal would otherwise flatten a near-constant
    matrix such as ``cka_paired``'s into one colour). With ``groups`` (a label per class, singletons allowed), class
    names of the same multi-class group share a colour, so semantic blocks are easy to spot.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.array(cost.detach().cpu().numpy() if isinstance(cost, Tensor) else cost, dtype=np.float64)
    num_classes = matrix.shape[0]
    if matrix.shape != (num_classes, num_classes) or len(class_names) != num_classes:
        raise ValueError(
            f"plot_cost_heatmap: a {matrix.shape} matrix with {len(class_names)} class names; need C×C and C names."
        )
    order = leaf_order(average_linkage(matrix)) if num_classes > 1 else [0]
    shown = matrix[np.ix_(order, order)]
    off = matrix[~np.eye(num_classes, dtype=bool)]
    low, high = (float(off.min()), float(off.max())) if off.size else (0.0, 1.0)
    if high <= low:
        high = low + 1e-12
    side = float(np.clip(3.0 + 0.12 * num_classes, 5.0, 22.0))
    figure = Figure(figsize=(side + 1.2, side))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(shown, cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colorbar.set_label("cost D (colour range = off-diagonal min..max)")
    if num_classes <= MAX_LABELLED_CLASSES:
        names = [str(class_names[k]) for k in order]
        font = float(np.clip(200 / max(num_classes, 1), 4, 10))
        axes.set_xticks(range(num_classes), names, rotation=90, fontsize=font)
        axes.set_yticks(range(num_classes), names, fontsize=font)
        if groups is not None:
            colours = _group_colours([groups[k] for k in order])
            for label, colour in zip(axes.get_xticklabels(), colours):
                label.set_color(colour)
            for label, colour in zip(axes.get_yticklabels(), colours):
                label.set_color(colour)
    else:
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_xlabel(f"{num_classes} classes (clustered order; too many to name)")
    if title:
        axes.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=dpi)
    return order


def _group_colours(labels: Sequence[Hashable]) -> list[str]:
    """A colour per multi-class group (20 colours, cycling), black for singletons."""
    from matplotlib import colormaps

    counts: dict[Hashable, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    palette = colormaps["tab20"]
    index: dict[Hashable, int] = {}
    colours = []
    for label in labels:
        if counts[label] < 2:
            colours.append("black")
            continue
        index.setdefault(label, len(index))
        k = index[label] % 20  # the ten dark tab20 colours first, then the ten light ones
        rgba = palette(2 * k if k < 10 else 2 * (k - 10) + 1)
        colours.append("#{:02x}{:02x}{:02x}".format(*(int(255 * c * 0.8) for c in rgba[:3])))
    return colours
