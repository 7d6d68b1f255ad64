"""An exponential-moving-average copy of the student as its own teacher (mean-teacher style self-KD)."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from wkd_lightning.losses.base import DistillationLoss
from wkd_lightning.selfkd.online import OnlineTeacher
from wkd_lightning.teacher import FrozenTeacher


class EMATeacher(OnlineTeacher):
    """Teacher = an EMA of the student's weights, updated after every optimizer step.

    Update (in :meth:`after_optimizer_step`, which the module calls from its ``optimizer_step`` hook right after
    ``optimizer.step()``, so never during gradient accumulation): for every parameter
    ``θ_ema ← d·θ_ema + (1 − d)·θ_student``; buffers (BatchNorm running statistics, counters) are copied from the
    student. The copy starts equal to the student at construction and is a
    :class:`~wkd_lightning.teacher.FrozenTeacher` (eval mode, no grad, outside the optimizer). It is saved in the
    checkpoints (``online_teacher.ema.model.*``) and restored with them.

    Args:
        decay: ``d`` in (0, 1); the copy averages over about ``1/(1 − d)`` steps (0.99: the last ~100 steps).
        refresh_cost: see :class:`~wkd_lightning.selfkd.online.OnlineTeacher` (cost from the EMA's classifier).
        classifier: see :class:`~wkd_lightning.selfkd.online.OnlineTeacher`.
    """

    def __init__(self, decay: float = 0.999, refresh_cost: bool = True, classifier: str | None = None) -> None:
        super().__init__(refresh_cost, classifier)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMATeacher: decay must lie in (0, 1), got {decay}.")
        self.decay = float(decay)
        self.ema: FrozenTeacher | None = None

    def attach(self, student: nn.Module, losses: Iterable[DistillationLoss]) -> None:
        super().attach(student, losses)
        self.ema = FrozenTeacher(copy.deepcopy(student))

    def cost_network(self, student: nn.Module) -> nn.Module:
        return self._ema().model

    def targets(self, x: Tensor, index: Tensor | None) -> tuple[Tensor, None]:
        return self._ema()(x), None

    @torch.no_grad()
    def after_optimizer_step(self, student: nn.Module) -> None:
        """``θ_ema ← d·θ_ema + (1 − d)·θ`` for every parameter, buffers copied: fused ``torch._foreach_*`` kernels
        (one launch per dtype/device group instead of one per tensor, which dominates on small students)."""
        ema = self._ema().model
        ema_params, params = list(ema.parameters()), list(student.parameters())
        if ema_params:
            torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)  # θ_ema + (1 − d)(θ − θ_ema)
        ema_buffers, buffers = list(ema.buffers()), list(student.buffers())
        if ema_buffers:
            torch._foreach_copy_(ema_buffers, buffers)

    def _ema(self) -> FrozenTeacher:
        if self.ema is None:
            raise RuntimeError("EMATeacher has no student yet: pass it as DistillationModule(online_teacher=...).")
        return self.ema

    def extra_repr(self) -> str:
        return f"decay={self.decay}, refresh_cost={self.refresh_cost}, classifier={self.classifier!r}"
