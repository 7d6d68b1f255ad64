"""Epoch-dependent loss-weight factors ``c(e)`` (SPEC §2), multiplied into a plug-in's base weight."""

from __future__ import annotations

import math


def epoch_of(value: float, max_epochs: int | None, what: str) -> int:
    """An epoch given as a fraction of the run or pinned: a fraction ``0 < value < 1`` is ``round(value · max_epochs)``;
    a whole number (``0``, ``150``, ``150.0``) is that epoch, whatever the run length.

    Args:
        value: the fraction or the epoch.
        max_epochs: the run length (``trainer.max_epochs``).
        what: the setting, for messages (``"MultiStepLR: milestone"``).

    Raises:
        ValueError: a fraction without a run length, or a value that is neither a fraction in (0, 1) nor an epoch.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} {value!r} is neither a fraction of the run in (0, 1) nor an epoch (an integer >= 0).")
    if isinstance(value, int) or (value.is_integer() and value >= 0):
        if value < 0:
            raise ValueError(f"{what} {value!r} is negative: give an epoch (an integer >= 0) or a fraction in (0, 1).")
        return int(value)
    if 0 < value < 1:
        if not max_epochs or max_epochs < 0:
            raise ValueError(
                f"{what} {value} is a fraction of the run, but the run length is unknown (max_epochs {max_epochs}): "
                "set trainer.max_epochs (the wkd CLI resolves fractions against it), or give it in epochs."
            )
        return round(value * max_epochs)
    raise ValueError(
        f"{what} {value!r} is neither a fraction of the run in (0, 1) nor an epoch (an integer >= 0): e.g. 0.625 of "
        "240 epochs is epoch 150."
    )


class WeightSchedule:
    """A factor ``c(e)`` of the 1-based epoch ``e`` and the run length ``E``."""

    def __call__(self, epoch: int, max_epochs: int) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in vars(self).items())})"


class Constant(WeightSchedule):
    """``c(e) = 1``."""

    def __call__(self, epoch: int, max_epochs: int) -> float:
        return 1.0


class CosineDecay(WeightSchedule):
    """WKD's schedule: ``c(e) = 1`` for ``e ≤ E0``, else ``½(1 + cos(π (e − E0)/(E − E0)))``.

    ``E0`` follows the run length unless pinned (the rule of :func:`epoch_of`, as for the LR milestones): a fraction
    ``0 < start_epoch < 1`` is ``round(start_epoch · E)`` (``0.625``: epoch 150 of 240, the CIFAR-100 release; epoch 18
    of a 30-epoch run); a whole number is that epoch in any run (``0``: decay from the
    first epoch, the ImageNet configs; ``150``: pinned). The ``wkd`` CLI writes the resolved epoch into the config
    (``--print_config`` shows it); in Python a fraction is resolved against the ``max_epochs`` of each call.

    Args:
        start_epoch: ``E0``, the last epoch at full weight, as a fraction of the run or an epoch.
    """

    #: Arguments that the CLI resolves against ``trainer.max_epochs`` (:func:`~wkd_lightning.losses.schedule.epoch_of`).
    run_length_args = ("start_epoch",)

    def __init__(self, start_epoch: int | float = 0) -> None:
        epoch_of(start_epoch, 1, "CosineDecay: start_epoch")  # checks the value (a fraction or an epoch >= 0)
        self.start_epoch = start_epoch

    def first_decay_epoch(self, max_epochs: int) -> int:
        """``E0`` in a run of ``max_epochs`` epochs."""
        return epoch_of(self.start_epoch, max_epochs, "CosineDecay: start_epoch")

    def __call__(self, epoch: int, max_epochs: int) -> float:
        start = self.first_decay_epoch(max_epochs)
        if epoch <= start or max_epochs <= start:
            return 1.0
        progress = min((epoch - start) / (max_epochs - start), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


class LinearWarmup(WeightSchedule):
    """DKD's warm-up: ``c(e) = min(e / warmup_epochs, 1)``.

    Args:
        warmup_epochs: epochs to reach full weight (20 in the DKD paper).
    """

    def __init__(self, warmup_epochs: int = 20) -> None:
        if warmup_epochs < 1:
            raise ValueError(f"LinearWarmup: warmup_epochs must be >= 1, got {warmup_epochs}.")
        self.warmup_epochs = warmup_epochs

    def __call__(self, epoch: int, max_epochs: int) -> float:
        return min(epoch / self.warmup_epochs, 1.0)
