"""Student→teacher feature projectors (SPEC §4.1) and the base class of the losses that use them.

A feature-distillation loss compares a student feature map ``F_s`` (B×C_s×H_s×W_s) with a teacher map ``F_t``
(B×C_t×H_t×W_t). A small trainable projector maps ``F_s`` to the teacher's shape first. Two kinds exist:

- ``conv1x1``: one convolution + BN + ReLU. The convolution is a 1×1 conv when the maps have the same spatial size,
  a 3×3 stride-2 conv (padding 1) when the student map is twice as large, and a 4×4 stride-2 transposed conv
  (padding 1) when it is half as large. This is also FitNet's hint regressor.
- ``bottleneck`` (the release's ImageNet projector): 1×1 conv C_s→256, 3×3 conv 256→256, 1×1 conv 256→C_t, every
  conv with a bias and no normalisation in between, then ONE BatchNorm over C_t and a ReLU. The middle conv carries
  the spatial change (3×3 stride 1, padding 1 if same size; 3×3 stride 2 if the student is twice as large; 4×4
  stride-2 transposed conv if half), so the 1×1 convs only mix channels. The ImageNet pairs of SPEC §5 have equal
  7×7 maps, where this is exactly the release's layer stack.
- ``bottleneck_bn_each`` (ours, a deviation kept for ablations): the same three convs without biases, each followed
  by its own BN + ReLU (this was this project's ``bottleneck`` before it was aligned with the release).

Every kind ends in BN + ReLU, so its output is non-negative, as are the post-ReLU stage outputs (e.g. ResNet's
``layer4``) that WKD-F usually reads from the teacher.

Both are built by :func:`make_projector`; :class:`ProjectedFeatureLoss` holds the build/lookup logic shared by
WKD-F and FitNet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from wkd_lightning.losses.base import DistillationContext, DistillationLoss
from wkd_lightning.losses.schedule import WeightSchedule

#: The projector kinds :func:`make_projector` knows.
PROJECTOR_KINDS: tuple[str, ...] = ("conv1x1", "bottleneck", "bottleneck_bn_each")

#: Hidden width of the ``bottleneck`` projectors.
BOTTLENECK_CHANNELS = 256

_SUPPORTED_RATIOS = (
    "same spatial size (H_s = H_t, W_s = W_t), student twice as large (H_s = 2·H_t, W_s = 2·W_t) or student half as "
    "large (2·H_s = H_t, 2·W_s = W_t)"
)


def spatial_relation(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> str:
    """How the student map's spatial size relates to the teacher's.

    Args:
        student_shape: B×C_s×H_s×W_s (the batch size is ignored).
        teacher_shape: B×C_t×H_t×W_t.

    Returns:
        ``"same"``, ``"down"`` (student twice as large: the projector halves it) or ``"up"`` (student half as
        large: the projector doubles it).

    Raises:
        ValueError: if a shape is not 4-D, or the spatial sizes are in no supported ratio.
    """
    student, teacher = tuple(int(s) for s in student_shape), tuple(int(s) for s in teacher_shape)
    for side, shape in (("student", student), ("teacher", teacher)):
        if len(shape) != 4 or min(shape) < 1:
            raise ValueError(
                f"make_projector: cannot map a student feature map of shape {student} to a teacher map of shape "
                f"{teacher}: the {side} shape is not a B×C×H×W (4-D) shape with positive sizes. The projectors "
                f"{PROJECTOR_KINDS} map convolutional feature maps; pick a module path (student_path / teacher_path) "
                "whose output is a 4-D map."
            )
    _, _, hs, ws = student
    _, _, ht, wt = teacher
    if (hs, ws) == (ht, wt):
        return "same"
    if (hs, ws) == (2 * ht, 2 * wt):
        return "down"
    if (2 * hs, 2 * ws) == (ht, wt):
        return "up"
    raise ValueError(
        f"make_projector: cannot map a student feature map of shape {student} to a teacher map of shape {teacher}: "
        f"spatial sizes {hs}×{ws} → {ht}×{wt}. Supported by every projector kind "
        f"{PROJECTOR_KINDS}: {_SUPPORTED_RATIOS}. Choose feature layers (student_path / teacher_path) whose spatial "
        "sizes are in one of these ratios."
    )


def _resampling_conv(
    in_channels: int, out_channels: int, relation: str, same_kernel: int, bias: bool = False
) -> nn.Module:
    """The conv that maps ``in_channels`` → ``out_channels`` and applies the spatial change ``relation``."""
    if relation == "down":
        return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=bias)
    if relation == "up":
        return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=bias)
    return nn.Conv2d(in_channels, out_channels, kernel_size=same_kernel, padding=same_kernel // 2, bias=bias)


def _conv_bn_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


def make_projector(kind: str, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Sequential:
    """Build a trainable projector that maps student maps of ``student_shape`` to ``teacher_shape``.

    Args:
        kind: one of :data:`PROJECTOR_KINDS` (see the module docstring for the layers).
        student_shape: the student map's B×C_s×H_s×W_s shape (e.g. ``tensor.shape``; B is ignored).
        teacher_shape: the teacher map's B×C_t×H_t×W_t shape.

    Returns:
        An ``nn.Sequential`` whose output on a B×C_s×H_s×W_s map has shape B×C_t×H_t×W_t.

    Raises:
        ValueError: for an unknown ``kind``, a non-4-D shape, or spatial sizes that are neither equal nor in a
            2:1 / 1:2 ratio.
    """
    if kind not in PROJECTOR_KINDS:
        raise ValueError(f"make_projector: unknown projector kind {kind!r}; expected one of {PROJECTOR_KINDS}.")
    relation = spatial_relation(student_shape, teacher_shape)
    c_s, c_t = int(student_shape[1]), int(teacher_shape[1])
    if kind == "conv1x1":
        return nn.Sequential(*_conv_bn_relu(_resampling_conv(c_s, c_t, relation, same_kernel=1), c_t))
    hidden = BOTTLENECK_CHANNELS
    if kind == "bottleneck":  # the release: three biased convs, then a single BN + ReLU
        return nn.Sequential(
            nn.Conv2d(c_s, hidden, kernel_size=1, bias=True),
            _resampling_conv(hidden, hidden, relation, same_kernel=3, bias=True),
            nn.Conv2d(hidden, c_t, kernel_size=1, bias=True),
            nn.BatchNorm2d(c_t),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        *_conv_bn_relu(nn.Conv2d(c_s, hidden, kernel_size=1, bias=False), hidden),
        *_conv_bn_relu(_resampling_conv(hidden, hidden, relation, same_kernel=3), hidden),
        *_conv_bn_relu(nn.Conv2d(hidden, c_t, kernel_size=1, bias=False), c_t),
    )


def _lookup(features: Mapping[str, Tensor], path: str, side: str, owner: str) -> Tensor:
    if path not in features:
        raise ValueError(
            f"{owner}: no {side} feature captured at {path!r}; captured {side} paths: {sorted(features)}. Check the "
            f"{side}_path argument against the {side} model's module names (model.named_modules())."
        )
    return features[path]


class ProjectedFeatureLoss(DistillationLoss):
    """Base of the plug-ins that compare a projected student feature map with a teacher feature map.

    It reads ``F_s`` at ``student_path`` and ``F_t`` at ``teacher_path``, builds the projector in :meth:`build` from
    the example features' shapes, and gives subclasses the pair ``(projector(F_s), F_t)`` via :meth:`project`.
    The projector is a submodule, so it is saved with the plug-in and optimised with the student.

    Args:
        student_path: dotted module path of the student feature map ``F_s``.
        teacher_path: dotted module path of the teacher feature map ``F_t``.
        projector: projector kind, one of :data:`PROJECTOR_KINDS`.
        weight: the plug-in's base weight (applied to its terms by the module, not by the plug-in).
        schedule: optional epoch schedule of the weight.
    """

    def __init__(
        self,
        student_path: str,
        teacher_path: str,
        projector: str = "conv1x1",
        weight: float = 1.0,
        schedule: WeightSchedule | None = None,
    ) -> None:
        super().__init__(weight, schedule)
        if projector not in PROJECTOR_KINDS:
            raise ValueError(
                f"{type(self).__name__}: unknown projector {projector!r}; expected one of {PROJECTOR_KINDS}."
            )
        for arg, value in (("student_path", student_path), ("teacher_path", teacher_path)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{type(self).__name__}: {arg} must be a non-empty module path, got {value!r}.")
        self.student_path = student_path
        self.teacher_path = teacher_path
        self.projector_kind = projector
        self.projector: nn.Module | None = None

    @property
    def student_paths(self) -> tuple[str, ...]:
        return (self.student_path,)

    @property
    def teacher_paths(self) -> tuple[str, ...]:
        return (self.teacher_path,)

    @property
    def is_built(self) -> bool:
        """Whether :meth:`build` has created the projector."""
        return self.projector is not None

    def build(self, student_features: Mapping[str, Tensor], teacher_features: Mapping[str, Tensor]) -> None:
        """Create the projector from the shapes of the example features (a no-op once built).

        Raises:
            ValueError: if a feature is missing or the two shapes cannot be mapped (see :func:`make_projector`).
        """
        if self.projector is not None:
            return
        owner = type(self).__name__
        student = _lookup(student_features, self.student_path, "student", owner)
        teacher = _lookup(teacher_features, self.teacher_path, "teacher", owner)
        projector = make_projector(self.projector_kind, student.shape, teacher.shape).to(device=student.device)
        self.projector = projector.train(self.training)

    def project(self, ctx: DistillationContext) -> tuple[Tensor, Tensor]:
        """``(projector(F_s), F_t)`` for the context's features.

        Raises:
            RuntimeError: if :meth:`build` has not been called.
            ValueError: if a feature is missing from the context.
        """
        owner = type(self).__name__
        if self.projector is None:
            raise RuntimeError(
                f"{owner}.forward was called before build(): the projector is created from example features. Call "
                "loss.build(student_features, teacher_features) once (DistillationModule does this before making "
                "the optimizer)."
            )
        student = _lookup(ctx.student_features, self.student_path, "student", owner)
        teacher = _lookup(ctx.teacher_features, self.teacher_path, "teacher", owner)
        return self.projector(student), teacher

    def extra_repr(self) -> str:
        return (
            f"student_path={self.student_path!r}, teacher_path={self.teacher_path!r}, "
            f"projector={self.projector_kind!r}, weight={self.weight}, schedule={self.schedule!r}"
        )
