"""The one place that decides where a teacher comes from and how it is kept frozen.

Where (:func:`select_teacher`): a pretrained network whose weights come from a file (a released teacher, a run of
this project, or the previous generation of a Born-Again run), an online teacher made from the student itself
(:mod:`wkd_lightning.selfkd`: an EMA copy, the previous epoch's predictions), or none. Both kinds answer one
interface, :class:`Teacher`, so the module drives them alike.

Rules for networks used as teachers (tested): the teacher is in eval mode at all times, even after Lightning switches
the surrounding module to train mode; it never requires grad and never enters the optimizer; it runs under
``torch.no_grad``. A pretrained teacher's weights are read once with ``weights_only=True`` and are not written into
the student's checkpoints; an online teacher's state cannot be read from anywhere else, so it is saved with them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from wkd_lightning.checkpoints import describe_mismatch, fill_missing_bn_counters, read_state_dict
from wkd_lightning.losses.base import DistillationLoss


class Teacher(nn.Module):
    """What a distillation module asks of its teacher, in this order (every call but :meth:`targets` a no-op here):

    1. :meth:`attach` once at construction (build from the student, check the losses can be served);
    2. :meth:`prepare_state` before a checkpoint's state dict is loaded (to size lazy buffers);
    3. :meth:`start` at the start of every fit;
    4. :meth:`refresh_costs` at the start of every training epoch;
    5. per training step: :meth:`targets` for the teacher logits, :meth:`observe` with the student's logits once the
       losses are computed, and :meth:`after_optimizer_step` after the optimizer step.

    The module keeps its teacher under the attribute :attr:`slot`; whether the teacher's state goes into the
    module's checkpoints follows from it (``teacher.`` never does, see :func:`without_teacher`).
    """

    #: The module attribute holding the teacher, hence the prefix of its state-dict entries.
    slot: ClassVar[str] = "teacher"

    def attach(self, student: nn.Module, losses: Iterable[DistillationLoss]) -> None:
        """Build what the teacher needs from ``student`` and check that it can serve ``losses``."""

    def prepare_state(self, state: Mapping[str, Tensor], prefix: str) -> None:
        """Make the buffers that ``state`` (a module state dict; own keys start with ``prefix``) will be loaded into."""

    def start(self, *, num_samples: int | None, num_classes: int, world_size: int, device: torch.device) -> None:
        """Check the training set (``num_samples``: its length, if known) at the start of fit."""

    def refresh_costs(self, losses: Iterable[DistillationLoss], student: nn.Module) -> None:
        """Update the losses' teacher-derived parts (the WKD-L cost) at the start of a training epoch."""

    def targets(self, x: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Teacher logits for the batch ``x`` (B×C, no grad) and which samples have one (``None``: all of them).

        Args:
            x: the inputs of the batch.
            index: each sample's index in the training set, or ``None`` when the batches carry none.
        """
        raise NotImplementedError

    def observe(self, index: Tensor | None, student_logits: Tensor) -> None:
        """See the student's (detached) logits of the batch after the losses are computed."""

    def after_optimizer_step(self, student: nn.Module) -> None:
        """Follow the student after each optimizer step."""


def select_teacher(
    student: nn.Module,
    teacher: nn.Module | None,
    teacher_weights: str | os.PathLike | None,
    online_teacher: Teacher | None,
    losses: Sequence[DistillationLoss],
) -> Teacher | None:
    """Decide where the soft targets come from: a pretrained network, the student itself, or nowhere.

    Args:
        student: the network being trained (an online teacher is built from it).
        teacher: architecture of a pretrained teacher, or ``None``.
        teacher_weights: its weights file (see :func:`~wkd_lightning.checkpoints.read_state_dict`).
        online_teacher: a teacher made from the student while it trains, or ``None``.
        losses: the distillation losses (an online teacher checks it can serve them).

    Returns:
        The attached online teacher, the pretrained network as a :class:`FrozenTeacher`, or ``None``.

    Raises:
        ValueError: an online teacher together with a pretrained one, weights without an architecture, or losses that
            the online teacher cannot serve.
    """
    if online_teacher is not None and (teacher is not None or teacher_weights is not None):
        raise ValueError(
            "online_teacher makes the teacher from the student itself, so it cannot be combined with a pretrained "
            "`teacher`/`teacher_weights`: remove one of the two (e.g. --model.teacher null --model.teacher_weights "
            "null)."
        )
    if teacher is None and teacher_weights is not None:
        raise ValueError("teacher_weights was given but no teacher architecture: set `teacher` as well.")
    if online_teacher is not None:
        online_teacher.attach(student, losses)
        return online_teacher
    return FrozenTeacher(teacher, teacher_weights) if teacher is not None else None


#: Where a distillation module keeps its pretrained teacher; checkpoints never hold these entries.
TEACHER_PREFIX = Teacher.slot + "."


def without_teacher(state: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Remove the pretrained teacher's entries (``<prefix>teacher.*``) from a module's state dict, in place."""
    for key in [k for k in state if k.startswith(prefix + TEACHER_PREFIX)]:
        del state[key]
    return state


def refuse_teacher_entries(state: Mapping[str, Tensor]) -> None:
    """Raise if a checkpoint to load holds teacher weights: teachers come from ``teacher_weights`` only."""
    saved_teacher = [k for k in state if k.startswith(TEACHER_PREFIX)]
    if saved_teacher:
        raise ValueError(
            f"the checkpoint holds teacher weights ({saved_teacher[0]}, ...); teachers are loaded from "
            "`teacher_weights`, never from a student checkpoint."
        )


def load_weights(model: nn.Module, path: str | os.PathLike, *, owner: str = "teacher") -> nn.Module:
    """Load the weights in ``path`` into ``model`` with strict key and shape checking.

    Before the check, three known layouts are reconciled, and nothing else:

    * BatchNorm ``num_batches_tracked`` counters in the file are dropped where the model has none (frozen BatchNorm,
      as in torchvision's detectors, whose released files were saved from ordinary BatchNorm);
    * counters the model has but an old file lacks (torchvision's 2017 ImageNet files) are filled with 0
      (:func:`~wkd_lightning.checkpoints.fill_missing_bn_counters`);
    * a model with a ``convert_state_dict`` method (e.g. :class:`~wkd_lightning.models.MobileNetV1`, for mdistiller's
      key names) renames a foreign layout of the same architecture to its own.

    Raises:
        ValueError: the keys or shapes differ; the message lists the first mismatches so a wrong architecture is
            easy to spot.
    """
    if owner == "teacher" and not os.path.isfile(path):
        advice = missing_teacher_advice(model, path)
        if advice:  # otherwise read_state_dict's message (train one with this CLI) fits
            raise FileNotFoundError(f"teacher weights file {os.fspath(path)!r} does not exist. {advice}")
    expected = model.state_dict()
    state = read_state_dict(path)
    convert = getattr(model, "convert_state_dict", None)
    if callable(convert):
        state = convert(state)
    state = {k: v for k, v in state.items() if k in expected or not k.endswith(".num_batches_tracked")}
    fill_missing_bn_counters(expected, state)
    problem = describe_mismatch(expected, state)
    if problem:
        raise ValueError(
            f"{owner} weights in {os.fspath(path)!r} do not fit {type(model).__name__}: {problem}. "
            f"Is the {owner} architecture in the config the one these weights were trained with?"
        )
    model.load_state_dict(state)
    return model


#: torchvision's weight file names (``resnet34-b627a593.pth``): their download address is known.
_TORCHVISION_FILE = re.compile(r"[a-z0-9_]+-[0-9a-f]{8}\.pth")


def missing_teacher_advice(model: nn.Module, path: str | os.PathLike) -> str | None:
    """Where the weights of a missing teacher file come from, by the teacher's architecture: torchvision (ImageNet)
    and CIFAR-100 teachers are released files; ``None`` for the others (trained with this CLI)."""
    family = type(model).__module__
    name = os.path.basename(os.fspath(path))
    if family.startswith("torchvision.") or family == "wkd_lightning.models.imagenet":
        url = f"https://download.pytorch.org/models/{name}" if _TORCHVISION_FILE.fullmatch(name) else (
            "https://download.pytorch.org/models/<arch>-<hash>.pth, e.g. resnet34-b627a593.pth"
        )  # fmt: skip
        return (
            f"ImageNet teachers ({type(model).__name__}) are released pretrained weights, not trained here: download "
            f"torchvision's file once on a machine with network ({url}; or run torchvision.models."
            "<arch>(weights='IMAGENET1K_V1'), which keeps it in ~/.cache/torch/hub/checkpoints), copy it to that path, "
            "or point --model.teacher_weights at your copy."
        )
    if family.startswith("wkd_lightning.models.cifar"):
        return (
            f"CIFAR-100 teachers ({type(model).__name__}) are RepDistiller's released files: extract "
            "cifar_teachers.tar (e.g. weights/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth), or train one with "
            "`wkd fit -c configs/cifar100/teacher/<teacher>.yaml` (its checkpoints/best.ckpt); then point "
            "--model.teacher_weights at the file."
        )
    return None


class FrozenTeacher(Teacher):
    """A teacher network that stays frozen: eval mode always, no grad, no checkpoint entries.

    Called on a batch it is the network (under ``no_grad``); as a :class:`Teacher` it gives every sample a target.

    Args:
        model: the teacher network.
        weights: optional file to load into ``model`` first (see :func:`read_state_dict` for the formats).
    """

    def __init__(self, model: nn.Module, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        if weights is not None:
            load_weights(model, weights)
        self.model = model
        self.model.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Ignore ``mode``: a teacher's BatchNorm statistics and dropout must never change."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def targets(self, x: Tensor, index: Tensor | None) -> tuple[Tensor, None]:
        return self(x), None
