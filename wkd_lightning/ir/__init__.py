"""Category interrelations (IRs): the cost matrices of WKD-L, their features, scores and pictures (SPEC §3).

* :func:`cost_matrix` — ``cka_paired`` (released), ``cov_align``, ``class_mean_cosine``, ``uniform``;
  :func:`classifier_cosine` from the teacher's final linear layer;
* :func:`extract_class_features` — per-class teacher features over a data set;
* :func:`semantic_score` — do nearest neighbours fall in known class groups? (with chance level);
* :func:`plot_cost_heatmap` — clustered heatmap PNG;
* the ``wkd-ir`` command (:mod:`wkd_lightning.commands.ir`) doing all of it and writing files for ``WKDLogit``.
"""

from wkd_lightning.ir.extract import extract_class_features, feature_rows
from wkd_lightning.ir.heatmap import average_linkage, leaf_order, plot_cost_heatmap
from wkd_lightning.ir.methods import (
    KNOWN_METHODS,
    check_class_features,
    classifier_cosine,
    cost_matrix,
)
from wkd_lightning.ir.score import (
    CIFAR100_FINE_TO_COARSE,
    CIFAR100_SUPERCLASSES,
    FASHION_MNIST_GROUPS,
    SemanticScore,
    group_labels,
    known_groups,
    semantic_score,
)

__all__ = [
    "CIFAR100_FINE_TO_COARSE",
    "CIFAR100_SUPERCLASSES",
    "FASHION_MNIST_GROUPS",
    "KNOWN_METHODS",
    "SemanticScore",
    "average_linkage",
    "check_class_features",
    "classifier_cosine",
    "cost_matrix",
    "extract_class_features",
    "feature_rows",
    "group_labels",
    "known_groups",
    "leaf_order",
    "plot_cost_heatmap",
    "semantic_score",
]
