"""WKD-F: feature distillation with the Wasserstein distance between Gaussians (SPEC §4).

Each channel of a feature map (or of each of g×g spatial cells) is modelled as a Gaussian over spatial positions.
The squared 2-Wasserstein distance between two Gaussians splits into a mean part and a covariance part,

    W₂²(N(μ_s, Σ_s), N(μ_t, Σ_t)) = ‖μ_s − μ_t‖² + tr(Σ_s + Σ_t − 2 (Σ_t^{½} Σ_s Σ_t^{½})^{½}),

and WKD-F weights the mean part by ρ: ``w_f(e) · (ρ · L_mean + L_cov)``. With diagonal covariances (the released
method) the covariance part is ``Σ_c (σ_s,c − σ_t,c)²``; :func:`gaussian_wd_full_cov` keeps the full channel
covariance (an option beyond the release).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from wkd_lightning.losses.base import DistillationContext, float32
from wkd_lightning.losses.checks import check_feature_maps, check_grid_cells, check_integer, check_number
from wkd_lightning.losses.projectors import ProjectedFeatureLoss
from wkd_lightning.losses.schedule import WeightSchedule

#: Added to every variance (diagonal) / to the covariance diagonal (full) before taking square roots.
VARIANCE_EPS = 1e-5
#: Eigenvalues of ``Σ_t^{½} Σ_s Σ_t^{½}`` are floored here before the square root (they are ≥ ~1e-10 thanks to the
#: ridge, so this only catches round-off; it keeps ``d√λ/dλ`` finite).
_EIGENVALUE_FLOOR = 1e-13
COVARIANCE_KINDS: tuple[str, ...] = ("diagonal", "full")


def cell_bounds(size: int, grid: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` ranges that adaptive pooling gives ``grid`` cells along an axis of length ``size``.

    Cell ``i`` spans ``[⌊i·size/g⌋, ⌈(i+1)·size/g⌉)``; neighbouring cells overlap when ``g`` does not divide
    ``size`` (e.g. size 7, g 4 → [0,2), [1,4), [3,6), [5,7)).
    """
    return [((i * size) // grid, -((-(i + 1) * size) // grid)) for i in range(grid)]


def _axis_index(size: int, grid: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Gather indices (g×L, padded by repeating the last index) and the validity mask (g×L) of one axis.

    Made on ``device`` from ``arange`` (the bounds of :func:`cell_bounds` in closed form), so no host→device copy.
    """
    length = max(end - start for start, end in cell_bounds(size, grid))
    cells = torch.arange(grid, device=device).unsqueeze(1)
    starts = torch.div(cells * size, grid, rounding_mode="floor")
    ends = -torch.div(-(cells + 1) * size, grid, rounding_mode="floor")
    offsets = torch.arange(length, device=device)
    index = torch.minimum(starts + offsets, ends - 1)
    return index, offsets < ends - starts


def grid_cells(x: Tensor, grid: int) -> tuple[Tensor, Tensor]:
    """Split B×C×H×W maps into g×g (possibly overlapping) cells of adaptive-pool boundaries.

    Args:
        x: B×C×H×W maps.
        grid: ``g``.

    Returns:
        ``(values, mask)``: values B×C×g×g×L with the L = L_h·L_w entries of each cell (shorter cells padded with
        repeats), and the g×g×L boolean mask of the real entries.
    """
    b, c, h, w = x.shape
    if grid == 1:
        return x.reshape(b, c, 1, 1, h * w), torch.ones(1, 1, h * w, dtype=torch.bool, device=x.device)
    rows, row_mask = _axis_index(h, grid, x.device)  # g×Lh
    cols, col_mask = _axis_index(w, grid, x.device)  # g×Lw
    lh, lw = rows.shape[1], cols.shape[1]
    cells = x[:, :, rows.reshape(-1)][..., cols.reshape(-1)]  # B×C×(g·Lh)×(g·Lw)
    cells = cells.reshape(b, c, grid, lh, grid, lw).permute(0, 1, 2, 4, 3, 5).reshape(b, c, grid, grid, lh * lw)
    mask = (row_mask[:, None, :, None] & col_mask[None, :, None, :]).reshape(grid, grid, lh * lw)
    return cells, mask


def _centred_cells(x: Tensor, grid: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-cell means (B×C×g×g), centred masked cell values (B×C×g×g×L, zero at padding) and counts (g×g)."""
    cells, mask = grid_cells(x, grid)
    weights = mask.to(x.dtype)
    counts = weights.sum(-1)
    mean = (cells * weights).sum(-1) / counts
    centred = (cells - mean.unsqueeze(-1)) * weights
    return mean, centred, counts


def cell_mean_var(x: Tensor, grid: int = 1) -> tuple[Tensor, Tensor]:
    """Per-channel, per-cell spatial mean ``μ`` and unbiased variance of B×C×H×W maps, both B×C×g×g.

    Computed in two passes (mean, then centred squares), so it is accurate for large means. A cell with a single
    element has no spread: its variance is defined as 0 (not NaN).
    """
    mean, centred, counts = _centred_cells(x, grid)
    var = centred.square().sum(-1) / (counts - 1).clamp(min=1)
    return mean, var


def gaussian_wd_loss(student_feat: Tensor, teacher_feat: Tensor, grid: int = 1) -> tuple[Tensor, Tensor]:
    """WKD-F's diagonal-Gaussian Wasserstein terms (SPEC §4.2-4.3).

    For each sample, channel c and cell: ``μ`` = spatial mean, ``σ = sqrt(unbiased spatial variance + 1e-5)``.
    Then ``L_mean = Σ(μ_s − μ_t)² / (g²B)`` and ``L_std = Σ(σ_s − σ_t)² / (g²B)`` (sums over samples, channels and
    cells), so ``L_mean + L_std`` is the squared W₂ between diagonal Gaussians, averaged over samples and cells.

    Computed in fp32 with autocast disabled; the teacher side is detached.

    Args:
        student_feat: projected student maps ``F_s``, B×C×H×W.
        teacher_feat: teacher maps ``F_t``, same shape.
        grid: ``g``; the maps are split into g×g adaptive-pool cells (g = 1: whole map).

    Returns:
        ``(L_mean, L_std)``, two scalars.

    Raises:
        ValueError: if the shapes differ or are not 4-D, a map holds NaN/inf (the message names the side), or
            ``grid`` is not an integer ≥ 1.
    """
    grid = check_feature_maps(student_feat, teacher_feat, grid, "gaussian_wd_loss")
    with torch.autocast(device_type=student_feat.device.type, enabled=False):
        mu_s, var_s = cell_mean_var(float32(student_feat), grid)
        mu_t, var_t = cell_mean_var(float32(teacher_feat).detach(), grid)
        scale = grid * grid * student_feat.shape[0]
        loss_mean = (mu_s - mu_t).square().sum() / scale
        loss_std = ((var_s + VARIANCE_EPS).sqrt() - (var_t + VARIANCE_EPS).sqrt()).square().sum() / scale
    return loss_mean, loss_std


def cell_mean_cov(x: Tensor, grid: int = 1) -> tuple[Tensor, Tensor]:
    """Per-cell channel means (B×g×g×C) and unbiased channel covariances (B×g×g×C×C) of B×C×H×W maps.

    A one-element cell gets a zero covariance.
    """
    mean, centred, counts = _centred_cells(x, grid)
    centred = centred.permute(0, 2, 3, 1, 4)  # B×g×g×C×L
    cov = centred @ centred.transpose(-1, -2) / (counts - 1).clamp(min=1)[..., None, None]
    return mean.permute(0, 2, 3, 1), cov


def bures_squared(cov_s: Tensor, cov_t: Tensor) -> Tensor:
    """Squared Bures distance ``tr(Σ_s + Σ_t − 2 (Σ_t^{½} Σ_s Σ_t^{½})^{½})`` of batched PSD matrices.

    ``Σ_t`` must carry no gradient (the teacher): its square root comes from ``eigh`` outside autograd, and the
    cross term uses only the eigen*values* of ``Σ_t^{½} Σ_s Σ_t^{½}`` (``eigvalsh``), whose gradient
    ``V diag(∂/∂λ) Vᵀ`` stays finite even when eigenvalues repeat (as they do for rank-deficient sample
    covariances). Eigenvalues are clamped at a tiny floor against round-off; the result is clamped at 0.

    Args:
        cov_s: ...×C×C student covariances (any float dtype; use fp64 for accuracy).
        cov_t: ...×C×C teacher covariances, no grad.

    Returns:
        The ``...``-shaped squared distances.
    """
    with torch.no_grad():
        lam_t, vec_t = torch.linalg.eigh(cov_t)
        sqrt_t = (vec_t * lam_t.clamp(min=0).sqrt().unsqueeze(-2)) @ vec_t.transpose(-1, -2)
    middle = sqrt_t @ cov_s @ sqrt_t
    middle = 0.5 * (middle + middle.transpose(-1, -2))
    cross = torch.linalg.eigvalsh(middle).clamp(min=_EIGENVALUE_FLOOR).sqrt().sum(-1)
    traces = cov_s.diagonal(dim1=-2, dim2=-1).sum(-1) + cov_t.diagonal(dim1=-2, dim2=-1).sum(-1)
    return (traces - 2.0 * cross).clamp(min=0.0)


def gaussian_wd_full_cov(student_feat: Tensor, teacher_feat: Tensor, grid: int = 1) -> tuple[Tensor, Tensor]:
    """Squared W₂ between full-covariance channel Gaussians, split as ``(L_mean, L_cov)`` (SPEC §4.4).

    Per sample and cell: ``μ`` ∈ R^C the channel means, ``Σ`` the unbiased C×C spatial covariance plus a
    ``1e-5·I`` ridge (the same 1e-5 as the diagonal variant). ``L_mean = Σ‖μ_s − μ_t‖² / (g²B)`` (identical to
    :func:`gaussian_wd_loss`'s) and ``L_cov = Σ tr(Σ_s + Σ_t − 2 (Σ_t^{½} Σ_s Σ_t^{½})^{½}) / (g²B)``. When both
    sample covariances happen to be diagonal, ``L_cov`` equals the diagonal ``L_std`` exactly.

    Computed in fp64 (via ``eigh``) with autocast disabled and returned in fp32; the teacher side is detached.
    Costs two C×C eigendecompositions per sample and cell.

    Args:
        student_feat: projected student maps ``F_s``, B×C×H×W.
        teacher_feat: teacher maps ``F_t``, same shape.
        grid: ``g``, as in :func:`gaussian_wd_loss`.

    Returns:
        ``(L_mean, L_cov)``, two fp32 scalars.

    Raises:
        ValueError: if the shapes differ or are not 4-D, a map holds NaN/inf (the message names the side), or
            ``grid`` is not an integer ≥ 1.
    """
    grid = check_feature_maps(student_feat, teacher_feat, grid, "gaussian_wd_full_cov")
    with torch.autocast(device_type=student_feat.device.type, enabled=False):
        mu_s, cov_s = cell_mean_cov(student_feat.double(), grid)
        mu_t, cov_t = cell_mean_cov(teacher_feat.detach().double(), grid)
        ridge = VARIANCE_EPS * torch.eye(cov_s.shape[-1], dtype=cov_s.dtype, device=cov_s.device)
        scale = grid * grid * student_feat.shape[0]
        loss_mean = (mu_s - mu_t).square().sum() / scale
        loss_cov = bures_squared(cov_s + ridge, cov_t + ridge).sum() / scale
    return loss_mean.float(), loss_cov.float()


class WKDFeature(ProjectedFeatureLoss):
    """WKD-F plug-in: ``{"feat": ρ · L_mean + L_std}`` between the projected student map and the teacher map,
    entering the loss times ``w_f(e)``.

    The student map ``F_s`` (at ``student_path``) goes through a trainable projector (created by :meth:`build` from
    the example shapes) to the teacher map's shape; then :func:`gaussian_wd_loss` (or
    :func:`gaussian_wd_full_cov` with ``covariance="full"``) compares it with ``F_t`` (at ``teacher_path``).

    Args:
        student_path: dotted module path of the student feature map (e.g. ``"layer4"``).
        teacher_path: dotted module path of the teacher feature map.
        projector: ``"conv1x1"`` or ``"bottleneck"`` (see :mod:`wkd_lightning.losses.projectors`).
        grid: ``g``, the number of cells per spatial axis.
        mean_weight: ``ρ``, the weight of the mean term relative to the covariance term.
        weight: ``w_f``, the WKD-F weight (use a :class:`~wkd_lightning.losses.schedule.CosineDecay` schedule for
            the paper's ``w_f(e)``).
        covariance: ``"diagonal"`` (the released method) or ``"full"`` (full channel covariance).
        schedule: epoch schedule of ``w_f``; constant by default.
    """

    name = "wkd_f"

    def __init__(
        self,
        student_path: str,
        teacher_path: str,
        projector: str = "conv1x1",
        grid: int = 1,
        mean_weight: float = 2.0,
        weight: float = 0.02,
        covariance: str = "diagonal",
        schedule: WeightSchedule | None = None,
    ) -> None:
        super().__init__(student_path, teacher_path, projector, weight, schedule)
        if covariance not in COVARIANCE_KINDS:
            raise ValueError(f"WKDFeature: covariance must be one of {COVARIANCE_KINDS}, got {covariance!r}.")
        self.grid = check_integer(grid, "grid", "WKDFeature")
        self.mean_weight = check_number(mean_weight, "mean_weight (ρ)", "WKDFeature")
        self.covariance = covariance

    def build(self, student_features: Mapping[str, Tensor], teacher_features: Mapping[str, Tensor]) -> None:
        """The projector (see :meth:`ProjectedFeatureLoss.build`), once the grid is known to fit the teacher's map.

        Raises:
            ValueError: the grid leaves single-pixel cells (:func:`~wkd_lightning.losses.checks.check_grid_cells`).
        """
        if self.teacher_path in teacher_features:
            owner = f"{type(self).__name__} (teacher_path {self.teacher_path!r})"
            check_grid_cells(tuple(teacher_features[self.teacher_path].shape), self.grid, owner)
        super().build(student_features, teacher_features)

    def forward(self, ctx: DistillationContext) -> dict[str, Tensor]:
        projected, teacher = self.project(ctx)
        distance = gaussian_wd_loss if self.covariance == "diagonal" else gaussian_wd_full_cov
        loss_mean, loss_cov = distance(projected, teacher, self.grid)
        return {"feat": self.mean_weight * loss_mean + loss_cov}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, grid={self.grid}, mean_weight={self.mean_weight}, covariance={self.covariance!r}"
        )
