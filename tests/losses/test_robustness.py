"""Property-based robustness of WKD-L and WKD-F (issue 8): finite values and gradients over the whole input range.

Ranges covered: logits up to ±1e4 in fp32, bf16 or fp16 (also under bf16 autocast, where the losses must still
compute in fp32); τ in [0.5, 16]; C in {2, 3, 10, 100, 1000}; near-one-hot teachers and students; costs with entries
up to 30, sharpened (κ = 1) or not (κ = 0: at ε = 0.05 the kernel ``exp(−M/ε)`` then underflows in fp32, up to
``max M/ε`` = 600, and the one fp32 Sinkhorn path must still give the released values); constant (zero-variance)
and rank-deficient feature maps for WKD-F, diagonal and full covariance. Where the released algorithm is well
defined, WKD-L also has to agree with the fp64 per-sample reference, so staying finite never comes from changing the
numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wkd_lightning.losses import (
    WKDFeature,
    WKDLogit,
    gaussian_wd_full_cov,
    gaussian_wd_loss,
    sharpen_cost,
    wkd_logit_loss,
)
from wkd_lightning.losses.base import DistillationContext

from .reference_wkd_logit import reference_wkd_logit_loss

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Largest |logit| and |feature| drawn (fp16 holds up to 65504).
MAX_SCALE = 1e4
#: Transport costs are non-negative; allow this much round-off below 0.
TINY = 1e-6


def _log_uniform(low: float, high: float) -> st.SearchStrategy[float]:
    """Floats whose log10 is uniform in [log10 low, log10 high], so every order of magnitude gets drawn."""
    return st.floats(math.log10(low), math.log10(high)).map(lambda e: min(10.0**e, high))


@dataclass
class LogitProblem:
    student: torch.Tensor  # B×C, in ``dtype``, leaf requiring grad
    teacher: torch.Tensor
    target: torch.Tensor
    cost: torch.Tensor  # raw (unsharpened) C×C cost D
    kappa: float
    temperature: float

    def sharpened_cost(self) -> torch.Tensor:
        return sharpen_cost(self.cost, self.kappa)


@st.composite
def logit_problems(draw: st.DrawFn, classes: tuple[int, ...] = (2, 3, 10, 100, 1000)) -> LogitProblem:
    num_classes = draw(st.sampled_from(classes))
    batch = draw(st.integers(1, 2 if num_classes == 1000 else 8))
    scale = draw(_log_uniform(1e-2, MAX_SCALE))
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    cost_max = draw(st.floats(0.0, 30.0))
    cost_kind = draw(st.sampled_from(["random", "uniform", "one-far-class"]))
    teacher_kind = draw(st.sampled_from(["random", "one-hot", "one-hot-on-target"]))
    student_kind = draw(st.sampled_from(["random", "one-hot", "one-hot-on-target", "negative-on-target"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    target = torch.randint(0, num_classes, (batch,), generator=g)
    rows = torch.arange(batch)

    def logits(kind: str) -> torch.Tensor:
        z = (torch.randn(batch, num_classes, generator=g) * scale).clamp(-MAX_SCALE, MAX_SCALE)
        if kind == "one-hot":  # a huge entry on a random class (the target for some rows, by chance)
            z[rows, torch.randint(0, num_classes, (batch,), generator=g)] = MAX_SCALE
        elif kind == "one-hot-on-target":
            z[rows, target] = MAX_SCALE
        elif kind == "negative-on-target":
            z[rows, target] = -MAX_SCALE
        return z.to(dtype)

    if cost_kind == "uniform":
        cost = cost_max * (1 - torch.eye(num_classes))
    else:
        cost = torch.rand(num_classes, num_classes, generator=g) * cost_max
        if cost_kind == "one-far-class":  # one class far from all others: a nearly empty kernel row and column
            cost *= 0.1
            far = int(torch.randint(0, num_classes, (1,), generator=g))
            cost[far, :] = cost[:, far] = cost_max
        cost = ((cost + cost.t()) / 2).fill_diagonal_(0.0)
    return LogitProblem(
        student=logits(student_kind).requires_grad_(),
        teacher=logits(teacher_kind),
        target=target,
        cost=cost,
        kappa=draw(st.sampled_from([0.0, 1.0])),
        temperature=draw(st.floats(0.5, 16.0)),
    )


def _wkd_l_terms(problem: LogitProblem, plugin: bool, autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_t, W)`` through the plug-in (γ = 1) or the function, optionally under bf16 autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if plugin:
            loss = WKDLogit(cost=problem.cost, weight=1.0, temperature=problem.temperature, kappa=problem.kappa)
            ctx = DistillationContext(
                student_logits=problem.student, teacher_logits=problem.teacher, target=problem.target
            )
            out = loss(ctx)
            return out["target"], out["wd"]
        return wkd_logit_loss(
            problem.student, problem.teacher, problem.target, problem.sharpened_cost(), problem.temperature
        )


@settings(max_examples=60, deadline=None)
@given(problem=logit_problems(), plugin=st.booleans(), autocast=st.booleans())
def test_wkd_logit_is_finite_with_finite_gradient(problem: LogitProblem, plugin: bool, autocast: bool) -> None:
    l_t, w = _wkd_l_terms(problem, plugin, autocast)
    assert l_t.dtype == w.dtype == torch.float32
    assert torch.isfinite(l_t) and torch.isfinite(w)
    assert w.item() >= -TINY and l_t.item() >= -TINY
    (grad,) = torch.autograd.grad(l_t + 100.0 * w, problem.student)
    assert grad.dtype == problem.student.dtype
    assert torch.isfinite(grad).all()
    if autocast:  # fp32 inside: autocast changes nothing, to the bit
        l_t32, w32 = _wkd_l_terms(problem, plugin, autocast=False)
        assert torch.equal(l_t, l_t32) and torch.equal(w, w32)


@settings(max_examples=40, deadline=None)
@given(problem=logit_problems(classes=(2, 3, 10, 100)))
def test_wkd_logit_keeps_the_released_values(problem: LogitProblem) -> None:
    """``W`` and its gradient equal the released per-sample algorithm run in fp64 on the same inputs.

    fp64 represents every kernel entry drawn here (``exp(−30/0.05)`` ≈ 3e-261), so the reference is the released
    iteration without underflow. The fp32 path, whose kernel loses the entries below ≈ 1.2e-38, must reproduce it;
    the tolerances cover fp32 round-off, which the ten unconverged iterations amplify in the gradient (measured on
    1000 draws of this strategy, 196 of them with a kernel that underflows in fp32: ≤ 5e-6 relative on ``W``, ≤ 3e-3
    of the largest gradient entry; earlier, with costs up to 10, 5000 draws: ≤ 2e-5 and ≤ 4e-3).
    """
    w = wkd_logit_loss(problem.student, problem.teacher, problem.target, problem.sharpened_cost(), problem.temperature)[
        1
    ]
    (grad,) = torch.autograd.grad(w, problem.student)
    student64 = problem.student.detach().double().requires_grad_()
    w_ref = reference_wkd_logit_loss(
        student64, problem.teacher.double(), problem.target, problem.sharpened_cost().double(), problem.temperature
    )[1]
    (grad_ref,) = torch.autograd.grad(w_ref, student64)
    assert abs(w.item() - w_ref.item()) <= 1e-4 * abs(w_ref.item()) + 1e-12
    assert float((grad.double() - grad_ref).abs().max()) <= 2e-2 * float(grad_ref.abs().max()) + 1e-6


# ---------------------------------------------------------------------------------------------------------- WKD-F


@dataclass
class FeatureProblem:
    student: torch.Tensor  # B×C×H×W in ``dtype``, leaf requiring grad
    teacher: torch.Tensor
    grid: int


@st.composite
def feature_problems(draw: st.DrawFn) -> FeatureProblem:
    batch, channels = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    height, width = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    scale = draw(_log_uniform(1e-3, MAX_SCALE))
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    def feature_map(kind: str) -> torch.Tensor:
        shape = (batch, channels, height, width)
        if kind == "constant":  # zero spatial variance in every channel
            x = torch.randn(batch, channels, 1, 1, generator=g).expand(shape)
        elif kind == "identical-channels":  # a rank-1 channel covariance
            x = torch.randn(batch, 1, height, width, generator=g).expand(shape)
        elif kind == "post-relu":
            x = torch.relu(torch.randn(shape, generator=g))
        else:
            x = torch.randn(shape, generator=g)
        return (x * scale).clamp(-MAX_SCALE, MAX_SCALE).to(dtype).contiguous()

    kinds = st.sampled_from(["random", "constant", "identical-channels", "post-relu"])
    return FeatureProblem(
        student=feature_map(draw(kinds)).requires_grad_(),
        teacher=feature_map(draw(kinds)),
        grid=draw(st.integers(1, 4)),
    )


@settings(max_examples=60, deadline=None)
@given(problem=feature_problems(), full=st.booleans(), autocast=st.booleans())
def test_wkd_feature_is_finite_with_finite_gradient(problem: FeatureProblem, full: bool, autocast: bool) -> None:
    distance = gaussian_wd_full_cov if full else gaussian_wd_loss
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss_mean, loss_cov = distance(problem.student, problem.teacher, problem.grid)
    assert loss_mean.dtype == loss_cov.dtype == torch.float32
    assert torch.isfinite(loss_mean) and torch.isfinite(loss_cov)
    assert loss_mean.item() >= 0 and loss_cov.item() >= 0
    (grad,) = torch.autograd.grad(2.0 * loss_mean + loss_cov, problem.student)
    assert torch.isfinite(grad).all()
    if autocast:
        expected = distance(problem.student, problem.teacher, problem.grid)
        assert torch.equal(loss_mean, expected[0]) and torch.equal(loss_cov, expected[1])


@settings(max_examples=12, deadline=None)
@given(
    projector=st.sampled_from(["conv1x1", "bottleneck"]),
    covariance=st.sampled_from(["diagonal", "full"]),
    constant_student=st.booleans(),
    scale=_log_uniform(1e-3, MAX_SCALE),
    autocast=st.booleans(),
)
def test_wkd_feature_plugin_is_finite_for_constant_maps(
    projector: str, covariance: str, constant_student: bool, scale: float, autocast: bool
) -> None:
    """Through the trainable projector (BN + ReLU in train mode): a constant student map, or a large one, stays finite
    in the loss, in the student's gradient and in every projector parameter's gradient."""
    torch.manual_seed(0)
    loss = WKDFeature("s", "t", projector=projector, grid=2, covariance=covariance, weight=1.0)
    loss.build({"s": torch.zeros(1, 4, 8, 8)}, {"t": torch.zeros(1, 6, 4, 4)})
    student = torch.full((2, 4, 8, 8), scale) if constant_student else torch.randn(2, 4, 8, 8) * scale
    student.requires_grad_()
    teacher = torch.full((2, 6, 4, 4), 0.5)  # constant teacher too
    ctx = DistillationContext(
        student_logits=torch.zeros(2, 3),
        teacher_logits=torch.zeros(2, 3),
        target=torch.zeros(2, dtype=torch.long),
        student_features={"s": student},
        teacher_features={"t": teacher},
    )
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        feat = loss(ctx)["feat"]
    assert feat.dtype == torch.float32 and torch.isfinite(feat)
    feat.backward()
    assert torch.isfinite(student.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in loss.parameters())
