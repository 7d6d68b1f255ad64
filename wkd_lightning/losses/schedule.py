"""Epoch-dependent loss-weight factors ``c(e)`` (SPEC §2), multiplied into a plug-in's base weight."""

from __future__ import annotations

import math


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

    Args:
        start_epoch: ``E0``, the last epoch at full weight (150 of 240 on CIFAR-100, 0 on most ImageNet configs).
    """

    def __init__(self, start_epoch: int = 0) -> None:
        if start_epoch < 0:
            raise ValueError(f"CosineDecay: start_epoch must be >= 0, got {start_epoch}.")
        self.start_epoch = start_epoch

    def __call__(self, epoch: int, max_epochs: int) -> float:
        if epoch <= self.start_epoch or max_epochs <= self.start_epoch:
            return 1.0
        progress = min((epoch - self.start_epoch) / (max_epochs - self.start_epoch), 1.0)
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
