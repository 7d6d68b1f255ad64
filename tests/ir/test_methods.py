"""IR cost matrices (SPEC §3): batched forms against per-pair oracles, invariances, planted structure, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wkd_lightning.ir import KNOWN_METHODS, classifier_cosine, cost_matrix, semantic_score

from .reference_ir import reference_cka_paired, reference_class_mean_cosine, reference_cov_align


def _features(sizes, d, seed=0, dtype=torch.float32):
    """Per-class features with class-specific scale, mean and mixing (not white noise), uneven class sizes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(sizes):
        mix = torch.randn(d, d, generator=g) / d**0.5 + torch.eye(d) * (i % 3)
        out.append((torch.randn(n, d, generator=g) @ mix * (1 + 0.3 * i) + torch.randn(d, generator=g)).to(dtype))
    return out


def _planted(num_groups=4, per_group=3, n=80, d=24, seed=0):
    """Classes whose covariance and mean are perturbations of their group's: a planted group structure."""
    g = torch.Generator().manual_seed(seed)
    features, groups = [], []
    for group in range(num_groups):
        loading, mean = torch.randn(d, 4, generator=g), 3 * torch.randn(d, generator=g)
        for _ in range(per_group):
            class_loading = loading + 0.25 * torch.randn(d, 4, generator=g)
            class_mean = mean + 0.5 * torch.randn(d, generator=g)
            z = torch.randn(n, 4, generator=g)
            features.append(z @ class_loading.T + 0.2 * torch.randn(n, d, generator=g) + class_mean)
            groups.append(group)
    return features, groups


# (sizes, d, form, block_size): d×d form with several blocks and uneven last block, Gram form (n < d), auto.
CKA_CASES = [
    ((130, 120, 150, 125, 140, 160, 121), 24, "cov", 2),
    ((130, 120, 150, 125, 140, 160, 121), 24, "auto", None),
    ((20, 25, 22, 30, 21), 48, "gram", 2),
    ((20, 25, 22, 30, 21), 48, "auto", None),
    ((20, 25, 22, 30, 21), 48, "cov", 3),
]


@pytest.mark.parametrize(("sizes", "d", "form", "block_size"), CKA_CASES)
def test_cka_paired_equals_the_per_pair_definition(sizes, d, form, block_size):
    features = _features(sizes, d)
    expected = reference_cka_paired(features)
    got = cost_matrix(features, "cka_paired", form=form, block_size=block_size)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


COV_CASES = [("auto", None), ("cov", None), ("cov", 4), ("gram", None), ("gram", 2)]


@pytest.mark.parametrize(("form", "block_size"), COV_CASES)
def test_cov_align_equals_the_per_pair_definition(form, block_size):
    features = _features((40, 25, 33, 60, 29, 31), 16, seed=1)
    got = cost_matrix(features, "cov_align", form=form, block_size=block_size)
    torch.testing.assert_close(got.double(), reference_cov_align(features), atol=1e-5, rtol=0)


def test_class_mean_cosine_equals_the_per_pair_definition():
    features = _features((10, 12, 9, 14), 8, seed=2)
    got = cost_matrix(features, "class_mean_cosine")
    torch.testing.assert_close(got.double(), reference_class_mean_cosine(features), atol=1e-6, rtol=0)


def test_fp64_input_is_computed_in_fp64_and_returned_in_fp32():
    features = _features((50, 60, 55), 12, dtype=torch.float64)
    got = cost_matrix(features, "cka_paired")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference_cka_paired(features), atol=1e-7, rtol=0)


@pytest.mark.parametrize("method", KNOWN_METHODS)
def test_every_method_is_symmetric_with_zero_diagonal_and_in_range(method):
    features = _features((30, 35, 40, 32, 31), 10, seed=3)
    d = cost_matrix(features, method)
    assert d.shape == (5, 5) and d.dtype == torch.float32
    assert torch.equal(d, d.T)
    assert torch.equal(d.diagonal(), torch.zeros(5))
    upper = 2.0 if method == "class_mean_cosine" else 1.0
    off = d[~torch.eye(5, dtype=torch.bool)]
    assert (off >= 0).all() and (off <= upper).all() and (off > 0).all()
    if method == "uniform":
        assert torch.equal(d, 1 - torch.eye(5))


def test_a_class_by_n_by_d_tensor_is_accepted():
    features = _features((20, 20, 20), 6)
    torch.testing.assert_close(
        cost_matrix(torch.stack(features), "cov_align"), cost_matrix(features, "cov_align"), atol=0, rtol=0
    )


def test_classifier_cosine_is_one_minus_cosine_of_weight_rows():
    linear = nn.Linear(7, 5)
    d = classifier_cosine(linear)
    w = linear.weight.detach().double()
    expected = 1 - torch.nn.functional.cosine_similarity(w[:, None], w[None], dim=-1)
    torch.testing.assert_close(d.double(), expected.fill_diagonal_(0), atol=1e-6, rtol=0)
    assert d.dtype == torch.float32 and torch.equal(d, d.T) and torch.equal(d.diagonal(), torch.zeros(5))
    torch.testing.assert_close(classifier_cosine(linear.weight), d)


def test_cov_align_ignores_row_order_while_cka_paired_does_not():
    features = _features((60, 70, 65, 80), 12, seed=4)
    g = torch.Generator().manual_seed(5)
    shuffled = [x[torch.randperm(len(x), generator=g)] for x in features]
    torch.testing.assert_close(
        cost_matrix(shuffled, "cov_align"), cost_matrix(features, "cov_align"), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        cost_matrix(shuffled, "class_mean_cosine"), cost_matrix(features, "class_mean_cosine"), atol=1e-6, rtol=0
    )
    change = (cost_matrix(shuffled, "cka_paired") - cost_matrix(features, "cka_paired")).abs().max()
    assert change > 1e-3  # the pairing of row k with row k is part of the released cost


def test_cka_paired_keeps_only_the_first_n_rows_of_each_class():
    features = _features((40, 55, 47), 9, seed=6)
    padded = [torch.cat([x, 100 * torch.randn(13, 9)]) if i != 0 else x for i, x in enumerate(features)]
    torch.testing.assert_close(cost_matrix(padded, "cka_paired"), cost_matrix(features, "cka_paired"), atol=0, rtol=0)


@pytest.mark.parametrize("method", ["cov_align", "class_mean_cosine"])
def test_pairing_free_methods_recover_a_planted_group_structure(method):
    features, groups = _planted()
    result = semantic_score(cost_matrix(features, method), groups)
    assert result.score == 1.0
    assert result.chance == pytest.approx(2 / 11)


def test_released_cka_paired_misses_the_planted_group_structure():
    """Rows of different classes are independent draws, so pairing them by index loses the group structure."""
    features, groups = _planted()
    assert semantic_score(cost_matrix(features, "cka_paired"), groups).score < 0.75


def test_bad_inputs_give_clear_errors():
    good = _features((5, 6), 3)
    with pytest.raises(ValueError, match="at least 2 classes"):
        cost_matrix(good[:1], "cov_align")
    with pytest.raises(ValueError, match="class 1 has feature dimension 4, but class 0 has 3"):
        cost_matrix([good[0], torch.randn(5, 4)], "cov_align")
    with pytest.raises(ValueError, match="class 1 is empty"):
        cost_matrix([good[0], torch.empty(0, 3)], "class_mean_cosine")
    with pytest.raises(ValueError, match="class 1 has 1 non-finite"):
        cost_matrix([good[0], torch.tensor([[1.0, float("nan"), 0.0], [0.0, 1.0, 2.0]])], "uniform")
    with pytest.raises(ValueError, match="non-finite"):
        cost_matrix([good[0], torch.full((4, 3), float("inf"))], "cka_paired")
    with pytest.raises(ValueError, match=r"unknown IR method 'cka'\. Known methods: cka_paired, cov_align"):
        cost_matrix(good, "cka")
    with pytest.raises(ValueError, match="unknown form"):
        cost_matrix(good, "cka_paired", form="fast")
    with pytest.raises(ValueError, match="class 0: expected an n_i × d feature tensor"):
        cost_matrix([torch.randn(5), good[1]], "cov_align")
    with pytest.raises(ValueError, match=r"classes \[1\] have constant features"):
        cost_matrix([good[0], torch.ones(6, 3)], "cov_align")
    with pytest.raises(ValueError, match="smallest class size, which is 1 row"):
        cost_matrix([good[0], torch.randn(1, 3)], "cka_paired")
    with pytest.raises(ValueError, match=r"classes \[1\] have 1"):
        cost_matrix([good[0], torch.randn(1, 3)], "cov_align")
    with pytest.raises(ValueError, match="zero mean feature"):
        cost_matrix([good[0], torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]])], "class_mean_cosine")
    with pytest.raises(ValueError, match="sequence of n_i × d tensors"):
        cost_matrix(3, "uniform")
    with pytest.raises(ValueError, match=r"final nn\.Linear"):
        classifier_cosine(nn.Conv2d(3, 4, 1))
    with pytest.raises(ValueError, match="at least 2 classes"):
        classifier_cosine(nn.Linear(4, 1))
