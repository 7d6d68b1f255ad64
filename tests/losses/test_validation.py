"""Bad arguments and bad inputs of every loss: each raises a ValueError (or FileNotFoundError) that names the argument
or input, its value and the valid range, and says what to do. One table per kind of mistake; the test ids are the
rows of the table of error messages on the docs' Reliability page."""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import wkd_lightning.losses
from wkd_lightning.losses import (
    DKD,
    KD,
    WKDFeature,
    WKDLogit,
    dkd_loss,
    gaussian_wd_full_cov,
    gaussian_wd_loss,
    kd_loss,
    load_cost,
    make_projector,
    sharpen_cost,
    uniform_cost,
    wkd_logit_loss,
)
from wkd_lightning.losses.base import DistillationContext
from wkd_lightning.losses.sinkhorn import gibbs_kernel, sinkhorn_cost


def _raises(call: Callable[[], object], prefix: str, error: type[Exception] = ValueError) -> str:
    """Run ``call``, check that it raises ``error`` whose message starts with ``prefix``, and return the message."""
    with pytest.raises(error, match="^" + re.escape(prefix)) as info:
        call()
    return str(info.value)


# ----------------------------------------------------------------------------------------------------------------
# Hyper-parameters, checked when the loss is made (plug-ins) or called (functions).

_LOGITS = torch.zeros(3, 5)
_LABELS = torch.tensor([0, 1, 2])
_MAPS = torch.zeros(2, 3, 4, 4)

BAD_HYPERPARAMETERS = {
    "WKDLogit-temperature=0": (
        lambda: WKDLogit(temperature=0.0),
        "WKDLogit: temperature must be a finite number > 0, got 0.0.",
    ),
    "WKDLogit-temperature=-1": (
        lambda: WKDLogit(temperature=-1),
        "WKDLogit: temperature must be a finite number > 0, got -1.",
    ),
    "WKDLogit-temperature=nan": (
        lambda: WKDLogit(temperature=math.nan),
        "WKDLogit: temperature must be a finite number > 0, got nan.",
    ),
    "WKDLogit-sinkhorn_eps=0": (
        lambda: WKDLogit(sinkhorn_eps=0.0),
        "WKDLogit: sinkhorn_eps must be a finite number > 0, got 0.0. The release uses 0.05.",
    ),
    "WKDLogit-sinkhorn_iters=0": (
        lambda: WKDLogit(sinkhorn_iters=0),
        "WKDLogit: sinkhorn_iters must be an integer >= 1, got 0.",
    ),
    "WKDLogit-sinkhorn_iters=2.5": (
        lambda: WKDLogit(sinkhorn_iters=2.5),
        "WKDLogit: sinkhorn_iters must be an integer >= 1, got 2.5.",
    ),
    "WKDLogit-kappa=-1": (lambda: WKDLogit(kappa=-1.0), "WKDLogit: kappa must be a finite number >= 0, got -1.0."),
    "WKDLogit-kappa=inf": (lambda: WKDLogit(kappa=math.inf), "WKDLogit: kappa must be a finite number >= 0, got inf."),
    "WKDLogit-weight=-2": (lambda: WKDLogit(weight=-2.0), "WKDLogit: weight must be a finite number >= 0, got -2.0."),
    "WKDLogit-weight=nan": (
        lambda: WKDLogit(weight=math.nan),
        "WKDLogit: weight must be a finite number >= 0, got nan.",
    ),
    "WKDLogit-cost=3": (
        lambda: WKDLogit(cost=3),
        "WKDLogit: cost must be 'uniform', a file path or a C×C tensor, got int (3).",
    ),
    "wkd_logit_loss-temperature=0": (
        lambda: wkd_logit_loss(_LOGITS, _LOGITS, _LABELS, uniform_cost(5), 0.0),
        "wkd_logit_loss: temperature must be a finite number > 0, got 0.0.",
    ),
    "wkd_logit_loss-sinkhorn_eps=-0.1": (
        lambda: wkd_logit_loss(_LOGITS, _LOGITS, _LABELS, uniform_cost(5), 2.0, sinkhorn_eps=-0.1),
        "wkd_logit_loss: sinkhorn_eps must be a finite number > 0, got -0.1. The release uses 0.05.",
    ),
    "wkd_logit_loss-sinkhorn_iters=0": (
        lambda: wkd_logit_loss(_LOGITS, _LOGITS, _LABELS, uniform_cost(5), 2.0, sinkhorn_iters=0),
        "wkd_logit_loss: sinkhorn_iters must be an integer >= 1, got 0.",
    ),
    "uniform_cost-num_classes=1": (lambda: uniform_cost(1), "uniform_cost: num_classes must be >= 2, got 1."),
    "sharpen_cost-kappa=-1": (
        lambda: sharpen_cost(uniform_cost(3), -1.0),
        "sharpen_cost: kappa must be a finite number >= 0, got -1.0.",
    ),
    "gibbs_kernel-eps=0": (
        lambda: gibbs_kernel(uniform_cost(3), 0.0),
        "gibbs_kernel: eps must be a finite number > 0, got 0.0.",
    ),
    "sinkhorn_cost-iters=0": (
        lambda: sinkhorn_cost(*([torch.ones(1, 3)] * 3), *gibbs_kernel(uniform_cost(3), 0.05), 0),
        "sinkhorn_cost: iters must be an integer >= 1, got 0.",
    ),
    "KD-temperature=0": (lambda: KD(temperature=0), "KD: temperature must be a finite number > 0, got 0."),
    "KD-weight=-1": (lambda: KD(weight=-1.0), "KD: weight must be a finite number >= 0, got -1.0."),
    "kd_loss-temperature=-1": (
        lambda: kd_loss(_LOGITS, _LOGITS, temperature=-1.0),
        "kd_loss: temperature must be a finite number > 0, got -1.0.",
    ),
    "DKD-temperature=0": (lambda: DKD(temperature=0.0), "DKD: temperature must be a finite number > 0, got 0.0."),
    "DKD-alpha=-1": (lambda: DKD(alpha=-1.0), "DKD: alpha must be a finite number >= 0, got -1.0."),
    "DKD-beta=-1": (lambda: DKD(beta=-1.0), "DKD: beta must be a finite number >= 0, got -1.0."),
    "DKD-warmup_epochs=0": (lambda: DKD(warmup_epochs=0), "LinearWarmup: warmup_epochs must be >= 1, got 0."),
    "dkd_loss-temperature=0": (
        lambda: dkd_loss(_LOGITS, _LOGITS, _LABELS, temperature=0.0),
        "dkd_loss: temperature must be a finite number > 0, got 0.0.",
    ),
    "WKDFeature-grid=0": (lambda: WKDFeature("a", "b", grid=0), "WKDFeature: grid must be an integer >= 1, got 0."),
    "WKDFeature-grid=1.5": (
        lambda: WKDFeature("a", "b", grid=1.5),
        "WKDFeature: grid must be an integer >= 1, got 1.5.",
    ),
    "WKDFeature-mean_weight=-1": (
        lambda: WKDFeature("a", "b", mean_weight=-1.0),
        "WKDFeature: mean_weight (ρ) must be a finite number >= 0, got -1.0.",
    ),
    "WKDFeature-weight=-0.1": (
        lambda: WKDFeature("a", "b", weight=-0.1),
        "WKDFeature: weight must be a finite number >= 0, got -0.1.",
    ),
    "WKDFeature-covariance": (
        lambda: WKDFeature("a", "b", covariance="low-rank"),
        "WKDFeature: covariance must be one of ('diagonal', 'full'), got 'low-rank'.",
    ),
    "WKDFeature-projector": (
        lambda: WKDFeature("a", "b", projector="linear"),
        "WKDFeature: unknown projector 'linear'; expected one of ('conv1x1', 'bottleneck', 'bottleneck_bn_each').",
    ),
    "gaussian_wd_loss-grid=0": (
        lambda: gaussian_wd_loss(_MAPS, _MAPS, grid=0),
        "gaussian_wd_loss: grid must be an integer >= 1, got 0.",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_HYPERPARAMETERS))
def test_bad_hyperparameter(case: str) -> None:
    call, message = BAD_HYPERPARAMETERS[case]
    assert _raises(call, message) == message


# ----------------------------------------------------------------------------------------------------------------
# Logits and labels. Each loss is called through its function and its plug-in; the plug-ins delegate the checks to
# the function (KD, DKD) or share them with it (WKD-L), so the same input gets the same message.


def _ctx(student: torch.Tensor, teacher: torch.Tensor | None, target: torch.Tensor) -> DistillationContext:
    return DistillationContext(student_logits=student, teacher_logits=teacher, target=target)


#: name → (call(student, teacher, target), message owner, whether it reads labels and needs C >= 2).
LOGIT_LOSSES = {
    "wkd_logit_loss": (lambda s, t, y: wkd_logit_loss(s, t, y, uniform_cost(5), 2.0), "wkd_logit_loss", True),
    "WKDLogit": (lambda s, t, y: WKDLogit(cost=uniform_cost(5))(_ctx(s, t, y)), "wkd_l", True),
    "kd_loss": (lambda s, t, y: kd_loss(s, t), "kd_loss", False),
    "KD": (lambda s, t, y: KD()(_ctx(s, t, y)), "kd_loss", False),
    "dkd_loss": (lambda s, t, y: dkd_loss(s, t, y), "dkd_loss", True),
    "DKD": (lambda s, t, y: DKD()(_ctx(s, t, y)), "dkd_loss", True),
}


def _with(x: torch.Tensor, *entries: tuple[int, int, float]) -> torch.Tensor:
    x = x.clone()
    for row, col, value in entries:
        x[row, col] = value
    return x


_Z = torch.zeros(3, 5)
#: case → (student, teacher, target, message after "<owner>: ", needs labels / C >= 2).
BAD_LOGITS = {
    "teacher-shape": (
        _Z,
        torch.zeros(3, 6),
        _LABELS,
        "teacher logits have shape (3, 6) but student logits have (3, 5); teacher and student must predict the same "
        "classes.",
        False,
    ),
    "not-2d": (
        _Z[..., None],
        _Z[..., None],
        _LABELS,
        "expected B×C (2-D) logits, got student logits of shape (3, 5, 1) and teacher logits of shape (3, 5, 1). Pass "
        "the classifier outputs, not features.",
        False,
    ),
    "student-nan": (
        _with(_Z, (1, 2, math.nan)),
        _Z,
        _LABELS,
        "the student logits contain 1 NaN and 0 inf values (of 15, shape (3, 5)); the student has diverged (lower the "
        "learning rate or the loss weights) or overflowed in float16 (train in bf16-mixed or fp32).",
        False,
    ),
    "teacher-inf": (
        _Z,
        _with(_Z, (0, 0, math.inf), (2, 1, -math.inf)),
        _LABELS,
        "the teacher logits contain 0 NaN and 2 inf values (of 15, shape (3, 5)); check the teacher weights "
        "(teacher_weights), and run the teacher in bf16 or fp32 if it overflows in float16.",
        False,
    ),
    "one-class": (
        torch.zeros(3, 1),
        torch.zeros(3, 1),
        _LABELS,
        "needs at least 2 classes, got logits of shape (3, 1) (C = 1).",
        True,
    ),
    "label-too-large": (
        _Z,
        _Z,
        torch.tensor([0, 1, 5]),
        "labels must lie in [0, 5) for 5-class logits, got values in [0, 5]. Check that the data module and the model "
        "have the same number of classes.",
        True,
    ),
    "label-negative": (
        _Z,
        _Z,
        torch.tensor([0, -1, 2]),
        "labels must lie in [0, 5) for 5-class logits, got values in [-1, 2].",
        True,
    ),
    "label-count": (
        _Z,
        _Z,
        torch.tensor([0, 1]),
        "targets have shape (2,); expected 3 class indices or 3×5 soft labels.",
        True,
    ),
    "soft-label-shape": (
        _Z,
        _Z,
        torch.zeros(3, 4),
        "soft targets have shape (3, 4) but the logits have (3, 5); expected B class indices or B×C soft labels.",
        True,
    ),
    "float-labels": (
        _Z,
        _Z,
        torch.tensor([0.0, 1.0, 2.0]),
        "1-D targets must be integer class indices, got dtype torch.float32.",
        True,
    ),
}


@pytest.mark.parametrize(
    ("loss", "case"),
    [
        (loss, case)
        for loss in sorted(LOGIT_LOSSES)
        for case in sorted(BAD_LOGITS)
        if LOGIT_LOSSES[loss][2] or not BAD_LOGITS[case][4]  # KD reads no labels and accepts C = 1
    ],
)
def test_bad_logits_and_labels(loss: str, case: str) -> None:
    call, owner, _ = LOGIT_LOSSES[loss]
    student, teacher, target, message, _ = BAD_LOGITS[case]
    _raises(lambda: call(student, teacher, target), f"{owner}: {message}")


@pytest.mark.parametrize("loss", ["WKDLogit", "KD", "DKD"])
def test_plugins_without_teacher(loss: str) -> None:
    plugin = {"WKDLogit": WKDLogit, "KD": KD, "DKD": DKD}[loss]()
    _raises(
        lambda: plugin(_ctx(_Z, None, _LABELS)),
        f"{plugin.name} needs teacher logits, but this run has no teacher; configure a teacher (model.teacher and "
        "model.teacher_weights) or remove this loss.",
    )


def test_kd_accepts_one_class() -> None:
    """KD reads no labels: one class is degenerate (KL = 0) but not an error."""
    assert float(kd_loss(torch.zeros(2, 1), torch.zeros(2, 1))) == 0.0


# ----------------------------------------------------------------------------------------------------------------
# WKD-L cost matrices.


def _five_class_ctx() -> DistillationContext:
    return _ctx(torch.randn(3, 5), torch.randn(3, 5), _LABELS)


def _cost_with_non_finite() -> torch.Tensor:
    return _with(uniform_cost(5), (0, 1, math.nan), (1, 0, math.nan), (3, 4, math.inf))


NON_FINITE_COST = (
    "cost has 3 non-finite entries (NaN or inf) of 25; every entry must be finite. Recompute the matrix (e.g. with "
    "`wkd-ir`) or replace those entries."
)
SIZE_4_FOR_5 = (
    "the cost matrix is 4×4 but the logits have C = 5 classes; use a cost computed for this dataset's 5 classes (e.g. "
    "with `wkd-ir` on its teacher), or cost='uniform'."
)


def test_cost_of_the_wrong_size(tmp_path: Path) -> None:
    _raises(lambda: wkd_logit_loss(_Z, _Z, _LABELS, uniform_cost(4), 2.0), f"wkd_logit_loss: {SIZE_4_FOR_5}")
    _raises(lambda: WKDLogit(cost=uniform_cost(4))(_five_class_ctx()), f"wkd_l (cost 'tensor'): {SIZE_4_FOR_5}")
    path = tmp_path / "four.pt"
    torch.save(uniform_cost(4), path)
    _raises(lambda: WKDLogit(cost=path)(_five_class_ctx()), f"wkd_l (cost {str(path)!r}): {SIZE_4_FOR_5}")
    loss = WKDLogit()  # 'uniform' is built for the first batch's C, then holds to it
    loss(_five_class_ctx())
    message = _raises(lambda: loss(_ctx(torch.randn(3, 4), torch.randn(3, 4), _LABELS)), "wkd_l (cost 'uniform'): ")
    assert "the cost matrix is 5×5 but the logits have C = 4 classes" in message


def test_cost_tensor_errors() -> None:
    owner = "WKDLogit.set_cost: "
    _raises(lambda: WKDLogit(cost=torch.ones(3, 4)), owner + "cost must be a square C×C matrix, got shape (3, 4).")
    _raises(lambda: WKDLogit(cost=torch.ones(5)), owner + "cost must be a square C×C matrix, got shape (5,).")
    _raises(lambda: WKDLogit(cost=torch.zeros(1, 1)), owner + "cost must be at least 2×2, got (1, 1).")
    _raises(lambda: WKDLogit(cost=_cost_with_non_finite()), owner + NON_FINITE_COST)
    _raises(lambda: wkd_logit_loss(_Z, _Z, _LABELS, _cost_with_non_finite(), 2.0), "wkd_logit_loss: " + NON_FINITE_COST)


def test_cost_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    for call in (lambda: load_cost(missing), lambda: WKDLogit(cost=str(missing))):
        _raises(
            call,
            f"WKD-L cost file {str(missing)!r} does not exist. Make one from a trained teacher with the IR tool, e.g. "
            "`wkd-ir -c configs/fashion_mnist/ir.yaml` (it writes <output_dir>/<method>.pt), or save a C×C tensor of "
            "category distances with `torch.save(D, path)`; or pass cost='uniform'.",
            FileNotFoundError,
        )
    expected = "expected a C×C tensor or a dict {'cost': C×C tensor, ...metadata}"
    text = tmp_path / "cost.txt"
    text.write_text("0 1\n1 0\n")
    message = _raises(
        lambda: WKDLogit(cost=text),
        f"WKD-L cost file {str(text)!r} could not be read with torch.load(weights_only=True) (",
    )
    assert message.endswith(f"{expected}, written by `wkd-ir` or by torch.save(torch.as_tensor(D), path).")
    listed = tmp_path / "list.pt"
    torch.save([[0.0, 1.0], [1.0, 0.0]], listed)
    _raises(lambda: load_cost(listed), f"WKD-L cost file {str(listed)!r} holds a list; {expected}.")
    keyed = tmp_path / "keyed.pt"
    torch.save({"matrix": uniform_cost(5)}, keyed)
    _raises(
        lambda: load_cost(keyed),
        f"WKD-L cost file {str(keyed)!r} holds a dict without a 'cost' entry (keys: ['matrix']); {expected}.",
    )
    non_finite = tmp_path / "non_finite.pt"
    torch.save({"cost": _cost_with_non_finite(), "kappa_applied": False}, non_finite)
    _raises(lambda: WKDLogit(cost=non_finite), f"WKD-L cost file {str(non_finite)!r}: {NON_FINITE_COST}")


def test_negative_cost_entries_are_refused_by_the_plugin_and_clipped_by_the_function() -> None:
    """A category cost is a distance: the plug-in refuses negative entries when its cost is set; the pure function
    (which takes a sharpened cost every step and reads no more values than it must) applies ``M = relu(D) + 1e-8``."""
    g = torch.Generator().manual_seed(0)
    cost = uniform_cost(5)
    cost[1, 3] = -0.25
    _raises(
        lambda: WKDLogit(cost=cost), "WKDLogit.set_cost: cost has negative entries (the smallest is D[1, 3] = -0.25)"
    )
    round_off = uniform_cost(5)
    round_off[0, 1] = -1e-7
    WKDLogit(cost=round_off)  # round-off below 0 passes (relu maps it to the floor)
    student, teacher = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    torch.testing.assert_close(
        wkd_logit_loss(student, teacher, _LABELS, cost, 2.0)[1],
        wkd_logit_loss(student, teacher, _LABELS, cost.clamp(min=0), 2.0)[1],
        rtol=0,
        atol=0,
    )


def test_a_similarity_matrix_is_refused_a_shifted_distance_is_not(tmp_path: Path) -> None:
    features = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    similarity = features @ features.T  # cosine: 1 on the diagonal, the largest entry of each row
    path = tmp_path / "similarity.pt"
    torch.save({"cost": similarity.clamp(min=0), "kappa_applied": False}, path)
    message = _raises(lambda: WKDLogit(cost=str(path)), f"WKD-L cost file {str(path)!r}: cost looks like a similarity")
    assert "pass 1 - S" in message
    _raises(lambda: WKDLogit(cost=torch.eye(4) + 0.5), "WKDLogit.set_cost: cost looks like a similarity matrix")
    WKDLogit(cost=1 - similarity)  # the matching cost
    WKDLogit(cost=uniform_cost(5) + 0.25)  # a distance shifted by a constant: W shifts, its gradient does not


def test_cost_class_names_must_match_the_data_modules() -> None:
    from wkd_lightning.losses.cost_checks import check_cost_class_names

    check_cost_class_names(None, ["a", "b"], "cost", "data")  # no names on one side: nothing to compare
    check_cost_class_names(["a", "b"], ("a", "b"), "cost", "data")
    message = _raises(lambda: check_cost_class_names(["a", "x"], ["a", "b"], "cost", "data"), "cost was computed for")
    assert "only in the cost file: ['x']; only in the data: ['b']" in message and "class 1: 'x' vs 'b'" in message


def test_a_grid_of_single_pixel_cells_is_refused_when_the_plugin_is_built() -> None:
    loss = WKDFeature("s", "t", grid=4)
    message = _raises(
        lambda: loss.build({"s": torch.zeros(1, 4, 8, 8)}, {"t": torch.zeros(1, 6, 4, 4)}),
        "WKDFeature (teacher_path 't'): grid=4 splits the teacher feature maps of shape C×H×W = (6, 4, 4)",
    )
    assert "use grid <= 3" in message
    WKDFeature("s", "t", grid=4).build({"s": torch.zeros(1, 4, 4, 8)}, {"t": torch.zeros(1, 6, 4, 8)})  # 1×2 cells


def test_nan_input_pixels_are_named_at_once_and_by_the_watch() -> None:
    from wkd_lightning.run.watch import NonFiniteWatch, check_input_batch, total_loss

    x = torch.zeros(4, 1, 2, 2)
    x[2, 0, 1, 1] = float("nan")
    index = torch.tensor([7, 8, 9, 10])
    _raises(lambda: check_input_batch(x, index, 1, 3), "input batch contains NaN/inf pixels at epoch 1, step 3 (1 "
            "sample(s): sample indices [9] of the training set)")  # fmt: skip
    terms = {"ce": torch.tensor(float("nan"))}
    _raises(lambda: total_loss(terms, 2, 5, inputs=x), "input batch contains NaN/inf pixels at epoch 2, step 5 (1 "
            "sample(s): positions [2] in the batch")  # fmt: skip
    watch = NonFiniteWatch(every=100)
    total_loss({"ce": torch.tensor(1.0)}, 1, 0, watch=watch, inputs=torch.zeros(4, 1, 2, 2), index=index)
    total_loss(terms, 1, 1, watch=watch, inputs=x, index=index)
    _raises(watch.flush, "input batch contains NaN/inf pixels at epoch 1, step 1 (1 sample(s): sample indices [9]")
    clean = NonFiniteWatch(every=100)
    total_loss(terms, 1, 1, watch=clean, inputs=torch.zeros(4, 1, 2, 2))
    _raises(clean.flush, "non-finite loss at epoch 1, step 1: terms ['ce']", FloatingPointError)


# ----------------------------------------------------------------------------------------------------------------
# WKD-F feature maps and projectors.

KINDS = "('conv1x1', 'bottleneck', 'bottleneck_bn_each')"


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "message"),
    [
        (
            (2, 6, 4, 4),
            (2, 10, 12, 12),
            "make_projector: cannot map a student feature map of shape (2, 6, 4, 4) to a teacher map of shape "
            f"(2, 10, 12, 12): spatial sizes 4×4 → 12×12. Supported by every projector kind {KINDS}: same spatial size",
        ),
        (
            (2, 16),
            (2, 10, 4, 4),
            "make_projector: cannot map a student feature map of shape (2, 16) to a teacher map of shape "
            "(2, 10, 4, 4): the student shape is not a B×C×H×W (4-D) shape with positive sizes. The projectors "
            f"{KINDS} map convolutional feature maps;",
        ),
        (
            (2, 6, 8, 8),
            (2, 10, 8),
            "make_projector: cannot map a student feature map of shape (2, 6, 8, 8) to a teacher map of shape "
            "(2, 10, 8): the teacher shape is not a B×C×H×W (4-D) shape",
        ),
    ],
    ids=["3x-smaller", "student-not-4d", "teacher-not-4d"],
)
@pytest.mark.parametrize("projector", ["conv1x1", "bottleneck", "bottleneck_bn_each"])
def test_feature_shapes_no_projector_can_map(projector: str, student_shape, teacher_shape, message: str) -> None:
    loss = WKDFeature("s", "t", projector=projector)
    _raises(lambda: loss.build({"s": torch.zeros(student_shape)}, {"t": torch.zeros(teacher_shape)}), message)
    assert not loss.is_built
    _raises(lambda: make_projector(projector, student_shape, teacher_shape), message)


@pytest.mark.parametrize("fn", [gaussian_wd_loss, gaussian_wd_full_cov], ids=lambda fn: fn.__name__)
def test_bad_feature_maps(fn: Callable) -> None:
    name = fn.__name__
    _raises(
        lambda: fn(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4)),
        f"{name}: expected student and teacher feature maps of the same B×C×H×W shape, got (2, 3, 4, 4) and "
        "(2, 5, 4, 4). Project the student map to the teacher's shape first",
    )
    _raises(lambda: fn(torch.zeros(2, 3), torch.zeros(2, 3)), f"{name}: expected student and teacher feature maps")
    _raises(lambda: fn(torch.zeros(0, 3, 4, 4), torch.zeros(0, 3, 4, 4)), f"{name}: got an empty batch (B = 0).")
    _raises(
        lambda: fn(_with(_MAPS.view(2, -1), (1, 7, math.nan)).view_as(_MAPS), _MAPS),
        f"{name}: the student feature maps contain 1 NaN and 0 inf values (of 96, shape (2, 3, 4, 4)); the student "
        "has diverged",
    )
    _raises(
        lambda: fn(_MAPS, _with(_MAPS.view(2, -1), (0, 0, math.inf)).view_as(_MAPS)),
        f"{name}: the teacher feature maps contain 0 NaN and 1 inf values (of 96, shape (2, 3, 4, 4)); check the "
        "teacher weights",
    )


def test_every_torch_load_in_the_losses_is_weights_only() -> None:
    """Cost files may come from anywhere: loading them must never run pickled code."""
    calls = []
    for path in sorted(Path(wkd_lightning.losses.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                weights_only = [k.value for k in node.keywords if k.arg == "weights_only"]
                calls.append((path.name, node.lineno, weights_only))
    assert calls, "expected at least the cost-file loader"
    for name, line, weights_only in calls:
        assert len(weights_only) == 1 and getattr(weights_only[0], "value", None) is True, f"{name}:{line}"


def test_total_loss_sums_the_terms_and_names_the_non_finite_ones():
    from wkd_lightning.run.watch import total_loss

    terms = {"ce": torch.tensor(1.5), "wkd_l/wd": torch.tensor(0.25)}
    assert float(total_loss(terms, epoch=1, step=0)) == 1.75
    terms["wkd_f/feat"] = torch.tensor(float("nan"))
    with pytest.raises(FloatingPointError, match=r"epoch 3, step 7: terms \['wkd_f/feat'\]\. Try this\."):
        total_loss(terms, epoch=3, step=7, advice="Try this.")
