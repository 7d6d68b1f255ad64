"""Semantic score: nearest-neighbour agreement with known class groups, beside chance; the group tables."""

from __future__ import annotations

import pytest
import torch

from wkd_lightning.data.fashion_mnist import CLASS_NAMES
from wkd_lightning.ir import (
    CIFAR100_FINE_TO_COARSE,
    CIFAR100_SUPERCLASSES,
    FASHION_MNIST_GROUPS,
    group_labels,
    known_groups,
    semantic_score,
)


def test_cifar100_table_has_20_superclasses_of_5_distinct_fine_classes():
    assert len(CIFAR100_SUPERCLASSES) == 20
    assert all(len(members) == 5 for members in CIFAR100_SUPERCLASSES.values())
    assert len(CIFAR100_FINE_TO_COARSE) == 100
    # The dataset's fine labels are its class names in alphabetical order; a few spot checks of the mapping.
    assert sorted(CIFAR100_FINE_TO_COARSE)[:3] == ["apple", "aquarium_fish", "baby"]
    assert CIFAR100_FINE_TO_COARSE["whale"] == "aquatic_mammals"
    assert CIFAR100_FINE_TO_COARSE["pickup_truck"] == "vehicles_1"
    assert CIFAR100_FINE_TO_COARSE["mushroom"] == "fruit_and_vegetables"
    assert list(CIFAR100_SUPERCLASSES)[19] == "vehicles_2"


def test_known_groups_recognise_the_datasets_in_any_order_and_spelling():
    name, labels = known_groups(list(CLASS_NAMES))
    assert name == "fashion_mnist"
    tops = {labels[CLASS_NAMES.index(c)] for c in FASHION_MNIST_GROUPS["tops"]}
    assert len(tops) == 1
    assert len(set(labels)) == 5  # tops, footwear, and the singletons Trouser, Dress, Bag
    cifar = sorted(CIFAR100_FINE_TO_COARSE, reverse=True)
    cifar[cifar.index("aquarium_fish")] = "Aquarium Fish"
    name, labels = known_groups(cifar)
    assert name == "cifar100_superclasses" and len(set(labels)) == 20
    assert labels[cifar.index("Aquarium Fish")] == labels[cifar.index("shark")]
    assert known_groups(["cat", "dog"]) is None


def test_score_and_chance_on_a_hand_made_matrix():
    # classes 0,1,2 in group a; 3,4 in group b; 5 alone.
    groups = ["a", "a", "a", "b", "b", "c"]
    d = torch.full((6, 6), 0.9)
    d[0, 1] = d[1, 0] = 0.1  # 0 <-> 1: match
    d[2, 3] = d[3, 2] = 0.2  # 2 -> 3 and 3 -> 2: misses
    d[4, 5] = d[5, 4] = 0.3  # 4 -> 5: miss (5 is a singleton, not scored)
    d.fill_diagonal_(0)
    result = semantic_score(d, groups)
    assert result.num_scored == 5 and result.num_classes == 6
    assert result.score == pytest.approx(2 / 5)
    assert result.chance == pytest.approx((3 * 2 / 5 + 2 * 1 / 5) / 5)
    assert result.nearest == (1, 0, 3, 2, 5, 4)
    assert result.matches[5] is None
    assert "semantic score 0.400" in str(result)


def test_ties_count_fractionally_so_a_constant_matrix_scores_chance():
    groups = group_labels(list(CLASS_NAMES), FASHION_MNIST_GROUPS)
    result = semantic_score(1 - torch.eye(10), groups)
    assert result.score == pytest.approx(result.chance)
    assert result.chance == pytest.approx((4 * 3 / 9 + 3 * 2 / 9) / 7)


def test_score_errors():
    with pytest.raises(ValueError, match="C×C cost matrix"):
        semantic_score(torch.zeros(3, 4), [0, 0, 1])
    with pytest.raises(ValueError, match="2 group labels for a 3×3"):
        semantic_score(torch.zeros(3, 3), [0, 0])
    with pytest.raises(ValueError, match="every class is alone"):
        semantic_score(torch.zeros(3, 3), [0, 1, 2])
    with pytest.raises(ValueError, match="non-finite"):
        semantic_score(torch.full((2, 2), float("nan")), [0, 0])
    with pytest.raises(ValueError, match="not one of the dataset's classes"):
        group_labels(["a", "b"], {"g": ["a", "z"]})
    with pytest.raises(ValueError, match="in two groups"):
        group_labels(["a", "b"], {"g": ["a", "b"], "h": ["b"]})
