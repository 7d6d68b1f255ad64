"""The contract between a distillation module (:mod:`wkd_lightning.base_module`) and its distillation losses.

Data flows one way: the module runs the student and the teacher on a batch, captures the features that some loss
asked for, packs everything into one :class:`DistillationContext` and hands it to each loss plug-in. A plug-in
returns its *raw* terms by name, before any weight: it never reads its own ``weight`` or ``schedule``.
:func:`plugin_terms` is the one place that applies them, ``w · term`` with ``w = weight · c(e)``, to every term but
the plug-in's ``unweighted_terms``; the module adds the results to its own task loss and logs each term weighted
(``train/loss/<plug-in name>/<term>``), raw (``.../<term>_raw``) and the weight itself (``train/weight/<plug-in
name>``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from wkd_lightning.losses.checks import check_number, deferred_checks
from wkd_lightning.losses.schedule import Constant, WeightSchedule


@dataclass(frozen=True)
class DistillationContext:
    """Everything one training (or validation) step knows, as seen by a loss.

    Attributes:
        student_logits: ``z_s``, B×C student logits (autograd attached).
        teacher_logits: ``z_t``, B×C teacher logits (no grad), or ``None`` in a teacher-free run.
        target: labels, B class indices (or B×C soft labels from mixing augmentations).
        student_features: outputs of the student modules named by the losses' ``student_paths``.
        teacher_features: outputs of the teacher modules named by the losses' ``teacher_paths``.
        epoch: the 1-based epoch ``e`` of SPEC §2.
        max_epochs: ``E``, the length of the run (used by the weight schedules).
    """

    student_logits: Tensor
    teacher_logits: Tensor | None
    target: Tensor
    student_features: Mapping[str, Tensor] = field(default_factory=dict)
    teacher_features: Mapping[str, Tensor] = field(default_factory=dict)
    epoch: int = 1
    max_epochs: int = 1

    @property
    def hard_target(self) -> Tensor:
        """Class indices: the labels themselves, or the argmax of soft (2-D) labels."""
        return self.target.argmax(dim=1) if self.target.ndim == 2 else self.target

    def restricted(self, keep: Tensor) -> DistillationContext | None:
        """The context limited to the samples where ``keep`` (B bools) is true; ``None`` when there are none."""
        if bool(keep.all()):
            return self
        if not bool(keep.any()):
            return None
        return replace(
            self,
            student_logits=self.student_logits[keep],
            teacher_logits=self.teacher_logits[keep],
            target=self.target[keep],
            student_features={k: v[keep] for k, v in self.student_features.items()},
            teacher_features={k: v[keep] for k, v in self.teacher_features.items()},
        )


class DistillationLoss(nn.Module):
    """Base class of the loss plug-ins.

    A plug-in names the features it needs (dotted module paths of the student and the teacher), may own trainable
    parts (projectors, regressors; optimised together with the student) and buffers (cost kernels), and maps a
    :class:`DistillationContext` to a dict of raw scalar terms (before the weight, which :func:`plugin_terms`
    applies).

    Args:
        weight: the base weight of the plug-in's main term (γ for WKD-L, the WKD-F weight, α for KD, ...).
        schedule: how that weight changes with the epoch; constant by default.
    """

    #: Short name used in logs (``train/loss/<name>/...``) and error messages.
    name: str = "loss"
    #: Whether the plug-in needs a teacher; the module refuses to start without one when this is set.
    requires_teacher: bool = True
    #: The terms that enter the loss without the plug-in's weight (WKD-L's target term ``L_t``); every other term is
    #: multiplied by :meth:`scheduled_weight` in :func:`plugin_terms`.
    unweighted_terms: tuple[str, ...] = ()

    def __init__(self, weight: float = 1.0, schedule: WeightSchedule | None = None) -> None:
        super().__init__()
        self.weight = check_number(weight, "weight", type(self).__name__)
        self.schedule = schedule if schedule is not None else Constant()

    @property
    def student_paths(self) -> tuple[str, ...]:
        """Dotted paths of the student modules whose outputs this loss reads."""
        return ()

    @property
    def teacher_paths(self) -> tuple[str, ...]:
        """Dotted paths of the teacher modules whose outputs this loss reads."""
        return ()

    def build(self, student_features: Mapping[str, Tensor], teacher_features: Mapping[str, Tensor]) -> None:
        """Create shape-dependent parts (projectors) from example features.

        Called once by the module before the optimizer is made, with features from one real sample run through the
        student and the teacher in eval mode (so no BatchNorm statistics move). Plug-ins without such parts do
        nothing.
        """

    def scheduled_weight(self, ctx: DistillationContext) -> float:
        """``w = weight · c(e)``, the plug-in's weight at the context's epoch (a Python number)."""
        return self.weight * self.schedule(ctx.epoch, ctx.max_epochs)

    def forward(self, ctx: DistillationContext) -> dict[str, Tensor]:  # pragma: no cover - interface
        """The plug-in's raw terms on ``ctx``, by name, before its weight."""
        raise NotImplementedError

    def require_teacher_logits(self, ctx: DistillationContext) -> Tensor:
        """The context's teacher logits; raises if this run has no teacher (their shape is checked by the loss)."""
        if ctx.teacher_logits is None:
            raise ValueError(
                f"{self.name} needs teacher logits, but this run has no teacher; configure a teacher "
                "(model.teacher and model.teacher_weights) or remove this loss."
            )
        return ctx.teacher_logits


#: What a loss key may look like: it is typed on the command line (``--model.losses.<key>.weight``) and logged
#: (``train/loss/<key>/<term>``), so no dots, slashes or spaces.
LOSS_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def loss_plugins(
    losses: Mapping[str, DistillationLoss | None] | Sequence[DistillationLoss] | None,
) -> nn.ModuleList:
    """A module's loss plug-ins as an ``nn.ModuleList``, each named by its key.

    A mapping gives every plug-in its key (``{"wkd_l": WKDLogit(...), "wkd_f": WKDFeature(...)}``): the key becomes
    the plug-in's ``name`` (logs ``train/loss/<key>/...``, messages); ``None`` values (a loss removed by a config
    override) are left out. A list keys each plug-in by its class's ``name`` (``wkd_l``, ``wkd_f``, ``kd``, ...). The
    container stays a list in key order, so checkpoint keys are ``losses.<position>...`` as before keyed losses.

    Raises:
        ValueError: a key that is not a plain word (letters, digits, ``_``, ``-``), or two plug-ins with one name.
        TypeError: a value that is not a :class:`DistillationLoss`.
    """
    if isinstance(losses, Mapping):
        for key, loss in losses.items():
            if not isinstance(key, str) or not LOSS_KEY.fullmatch(key):
                raise ValueError(
                    f"loss key {key!r}: keys are typed on the command line (--model.losses.<key>.weight) and logged "
                    "(train/loss/<key>/...); use letters, digits, '_' or '-' (e.g. wkd_l, kd_t4)."
                )
            if loss is not None and not isinstance(loss, DistillationLoss):
                raise TypeError(f"loss {key!r} is a {type(loss).__name__}, not a DistillationLoss plug-in.")
        plugins = [loss for loss in losses.values() if loss is not None]
        for key, loss in losses.items():
            if loss is not None:
                loss.name = key
    else:
        plugins = list(losses or [])
    names = [loss.name for loss in plugins]
    if len(set(names)) != len(names):
        raise ValueError(
            f"loss plug-ins need distinct names, got {names}; give them keys instead of a list "
            "(losses={'kd_t4': KD(temperature=4), 'kd_t8': KD(temperature=8)}; in YAML, `losses:` as a mapping)."
        )
    return nn.ModuleList(plugins)


def loss_class(class_path: str) -> type:
    """The class a config's ``class_path`` names: a dotted import path, or a plug-in class name
    (``WKDLogit``, as jsonargparse also accepts).

    Raises:
        ValueError: no such class.
    """
    module, _, name = str(class_path).rpartition(".")
    try:
        if module:
            return getattr(importlib.import_module(module), name)
        import wkd_lightning.losses

        return getattr(wkd_lightning.losses, name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"loss class_path {class_path!r} names no class: {error}") from error


def keyed_loss_configs(losses: Mapping | Sequence | None) -> dict:
    """The ``model.losses`` of a config (as read from YAML) keyed: a mapping as it is, a list keyed by each entry's
    class ``name`` (``wkd_lightning.losses.WKDLogit`` → ``wkd_l``) in list order. Entries are the same objects.

    Raises:
        ValueError: a list entry without ``class_path``, or two list entries of one class (key them by hand).
    """
    if losses is None:
        return {}
    if isinstance(losses, Mapping):
        return dict(losses)
    keyed = {}
    for entry in losses:
        class_path = entry.get("class_path") if hasattr(entry, "get") else None  # a dict or a Namespace
        if class_path is None:
            raise ValueError(f"a loss in a list of losses needs a class_path, got {entry!r}.")
        key = getattr(loss_class(class_path), "name", None)
        if key in keyed:
            raise ValueError(
                f"two losses of a list have the name {key!r}; write `losses:` as a mapping with a key for each "
                f"(e.g. {key}_a: and {key}_b:)."
            )
        keyed[key] = entry
    return keyed


@dataclass
class Terms:
    """A step's loss terms, keyed ``<name>/<term>`` (the names logged under ``train/loss/``).

    Attributes:
        weighted: each term as it enters the summed loss ``L``.
        raw: each term before its weight.
        weights: each weight, keyed by plug-in (or task-loss) name.
    """

    weighted: dict[str, Tensor] = field(default_factory=dict)
    raw: dict[str, Tensor] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, raw: Tensor, weight: float) -> None:
        """Add the task-loss term ``name`` as ``weight · raw``."""
        self.weighted[name], self.raw[name], self.weights[name] = weight * raw, raw, weight

    def update(self, other: Terms) -> None:
        """Append ``other``'s terms and weights (after this one's, in the order they are summed)."""
        self.weighted.update(other.weighted)
        self.raw.update(other.raw)
        self.weights.update(other.weights)


def plugin_terms(losses: Iterable[DistillationLoss], ctx: DistillationContext, *, checked: bool = True) -> Terms:
    """Every plug-in's terms on ``ctx``, raw and weighted: the one place where plug-in weights are applied.

    Each plug-in returns its raw terms; every term but the plug-in's ``unweighted_terms`` is then multiplied by
    ``w = weight · c(e)`` (:meth:`DistillationLoss.scheduled_weight`, a Python number, so ``w · term`` is one
    scalar multiplication).

    Args:
        losses: the plug-ins.
        ctx: the step's context.
        checked: run the plug-ins' value checks, eagerly (a plug-in compiled with ``nn.Module.compile`` runs its
            eager code, hooks included); ``False`` skips them (:func:`~wkd_lightning.losses.checks.deferred_checks`)
            and runs the plug-ins as they are, compiled or not.

    Returns:
        The terms keyed ``<plug-in name>/<term>``, and each plug-in's weight ``w`` keyed by its name.
    """
    eager = torch.compiler.set_stance("force_eager") if checked else nullcontext()
    terms = Terms()
    with deferred_checks(not checked), eager:
        for loss in losses:
            weight = loss.scheduled_weight(ctx)
            terms.weights[loss.name] = weight
            for key, value in loss(ctx).items():
                name = f"{loss.name}/{key}"
                terms.raw[name] = value
                terms.weighted[name] = value if key in loss.unweighted_terms else weight * value
    return terms


def float32(x: Tensor) -> Tensor:
    """``x`` in fp32 (WKD losses always compute in full precision, even under autocast)."""
    return x.float() if x.dtype != torch.float32 else x
