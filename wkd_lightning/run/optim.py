"""The recipes' optimizer (:class:`PaperSGD`) and the LR schedules that follow the run length:
``--trainer.max_epochs 30`` on a config written for 15 epochs must not leave a cosine LR that reaches 0 at epoch 15
and climbs back, nor step milestones or a loss-weight decay placed for the shorter run.

* :class:`CosineAnnealingLR` takes ``T_max: max_epochs`` (the default): the cosine ends with the run. An integer pins
  it.
* :class:`MultiStepLR` takes ``milestones`` as fractions of the run (``[0.625, 0.75, 0.875]``: epochs 150, 180 and
  210 of 240, the CIFAR-100 release) or as integers (epochs, pinned).
* The loss-weight schedules take their epochs the same way (:class:`~wkd_lightning.losses.CosineDecay`'s
  ``start_epoch: 0.625`` is epoch 150 of 240; ``150`` pins it): one rule, :func:`epoch_of`.

The ``wkd`` CLI resolves all of them against ``trainer.max_epochs`` before anything is built
(:func:`resolve_lr_scheduler`, :func:`resolve_loss_schedules`), so ``--print_config`` and the run directory's
``config.yaml`` show the epochs used. In Python, pass integers (or resolve a config with these functions); an
unresolved LR value is an error that says so, a loss schedule resolves a fraction against the run it is called with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence

import torch
from torch import nn
from torch.optim import Optimizer

from wkd_lightning.losses.base import loss_class
from wkd_lightning.losses.schedule import epoch_of

#: The value of ``T_max`` that means "the run's ``trainer.max_epochs``".
RUN_LENGTH = "max_epochs"


class PaperSGD(torch.optim.SGD):
    """The CIFAR-100 recipe of the WKD release (SPEC §5): Nesterov SGD, weight decay on every learnable parameter."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        nesterov: bool = True,
    ) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def milestone_epochs(milestones: Sequence[float], max_epochs: int | None) -> list[int]:
    """Epochs of ``milestones``: fractions (0 < m < 1) of ``max_epochs`` are rounded to epochs; integers are kept.

    Raises:
        ValueError: a fraction without ``max_epochs``, or a value that is neither a fraction in (0, 1) nor an epoch.
    """
    epochs = []
    for m in milestones:
        if isinstance(m, int) or (isinstance(m, float) and m.is_integer() and m >= 1):
            epochs.append(int(m))
        elif isinstance(m, float) and 0 < m < 1:
            if not max_epochs or max_epochs < 0:
                raise ValueError(
                    f"MultiStepLR: milestone {m} is a fraction of the run, but the run length is unknown "
                    f"(max_epochs {max_epochs}): set trainer.max_epochs (the wkd CLI resolves fractions against it), "
                    "or give the milestones in epochs."
                )
            epochs.append(round(m * max_epochs))
        else:
            raise ValueError(
                f"MultiStepLR: milestone {m!r} is neither a fraction of the run in (0, 1) nor an epoch (an integer "
                ">= 1): e.g. milestones [0.625, 0.75, 0.875] of 240 epochs are epochs [150, 180, 210]."
            )
    return epochs


def cosine_length(T_max: int | str, max_epochs: int | None) -> int:
    """``T_max`` in epochs: ``"max_epochs"`` → ``max_epochs``; an integer is kept (pinned)."""
    if T_max == RUN_LENGTH:
        if not max_epochs or max_epochs < 0:
            raise ValueError(
                f"CosineAnnealingLR: T_max {RUN_LENGTH!r} follows the run length, but it is unknown (max_epochs "
                f"{max_epochs}): set trainer.max_epochs, or pin T_max to a number of epochs."
            )
        return int(max_epochs)
    if isinstance(T_max, int) and T_max >= 1:
        return T_max
    raise ValueError(f"CosineAnnealingLR: T_max must be {RUN_LENGTH!r} or a number of epochs >= 1, got {T_max!r}.")


class CosineAnnealingLR(torch.optim.lr_scheduler.CosineAnnealingLR):
    """torch's cosine LR whose ``T_max`` defaults to the run length (``"max_epochs"``, resolved by the CLI)."""

    def __init__(
        self,
        optimizer: Optimizer,
        T_max: int | str = RUN_LENGTH,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        super().__init__(optimizer, T_max=cosine_length(T_max, None), eta_min=eta_min, last_epoch=last_epoch)


class MultiStepLR(torch.optim.lr_scheduler.MultiStepLR):
    """torch's step LR whose ``milestones`` may be fractions of the run (resolved by the CLI)."""

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: list[int | float],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        super().__init__(optimizer, milestones=milestone_epochs(milestones, None), gamma=gamma, last_epoch=last_epoch)


def resolve_lr_scheduler(scheduler: MutableMapping | None, max_epochs: int | None) -> None:
    """Write the epochs of a config's ``lr_scheduler`` (one of this module's classes) into its ``init_args``."""
    if not scheduler or not str(scheduler.get("class_path", "")).startswith(__name__ + "."):
        return
    args = scheduler.get("init_args")
    if args is None:
        return
    if "T_max" in args:
        args["T_max"] = cosine_length(args["T_max"], max_epochs)
    if args.get("milestones") is not None:
        args["milestones"] = milestone_epochs(list(args["milestones"]), max_epochs)


def resolve_loss_schedules(losses: Mapping | Sequence | None, max_epochs: int | None) -> None:
    """Write the epochs of the loss-weight schedules of a config's ``model.losses`` (a mapping or a list of loss
    specs) into their ``init_args``: every argument a schedule class lists in its ``run_length_args`` (CosineDecay's
    ``start_epoch``) is resolved with :func:`epoch_of`. Schedules of other classes are left alone."""
    entries = losses.values() if isinstance(losses, Mapping) else losses or []
    for loss in entries:
        init_args = loss.get("init_args") if hasattr(loss, "get") else None
        schedule = init_args.get("schedule") if hasattr(init_args, "get") else None
        args = schedule.get("init_args") if hasattr(schedule, "get") else None
        if args is None or not schedule.get("class_path"):
            continue
        try:
            names = getattr(loss_class(schedule["class_path"]), "run_length_args", ())
        except ValueError:
            continue  # not ours to resolve: instantiation reports a bad class path
        for name in names:
            if args.get(name) is not None:
                args[name] = epoch_of(args[name], max_epochs, f"{schedule['class_path'].rpartition('.')[2]}: {name}")
