"""Average-linkage ordering (against SciPy when installed) and the PNG heatmap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wkd_lightning.ir import average_linkage, leaf_order, plot_cost_heatmap


def _blocks(seed=0):
    """Three obvious clusters {0,3,6}, {1,4,7}, {2,5} plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    d = np.where(labels[:, None] == labels[None], 0.1, 0.9) + 0.05 * rng.random((8, 8))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    return d, labels


def test_average_linkage_orders_clusters_contiguously():
    d, labels = _blocks()
    order = leaf_order(average_linkage(d))
    assert sorted(order) == list(range(8))
    runs = [labels[order[i]] != labels[order[i + 1]] for i in range(7)]
    assert sum(runs) == 2  # each cluster is one contiguous run


def test_average_linkage_matches_scipy():
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    distance = pytest.importorskip("scipy.spatial.distance")
    rng = np.random.default_rng(1)
    d = rng.random((30, 30))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    ours = average_linkage(d)
    theirs = hierarchy.linkage(distance.squareform(d, checks=False), method="average")
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_heatmap_png_is_written(tmp_path):
    d, labels = _blocks()
    path = tmp_path / "cost.png"
    order = plot_cost_heatmap(torch.tensor(d), [f"class {i}" for i in range(8)], path, title="t", groups=list(labels))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(order) == list(range(8))
    big = tmp_path / "big.png"
    plot_cost_heatmap(1 - torch.eye(130), [str(i) for i in range(130)], big)  # no names above 120 classes
    assert big.stat().st_size > 0
    with pytest.raises(ValueError, match="class names"):
        plot_cost_heatmap(torch.zeros(3, 3), ["a"], tmp_path / "x.png")
