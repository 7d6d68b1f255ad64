"""Test-only pieces imported by class path inside the commands' processes (``--trainer.callbacks+=...``)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn


class RankZeroLogDir(L.Callback):
    """The bug of the old summary callback: ``trainer.log_dir`` (a broadcast) asked on rank 0 alone. Under DDP the
    other ranks never join the broadcast, so the run hangs; the runner's time limit must catch that."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._ask(trainer)

    @rank_zero_only
    def _ask(self, trainer: L.Trainer) -> None:
        _ = trainer.log_dir


class BNNet(nn.Module):
    """A small 28×28 classifier with BatchNorm in its feature layers (``features.1``, ``features.4``)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(7),
        )
        self.fc = nn.Linear(16 * 7 * 7, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(1))


class RankShardBatchNorm(L.Callback):
    """Makes one process compute what plain (unsynchronised) BatchNorm computes under DDP with ``ranks`` processes.

    Under DDP with the epoch-seeded sampler, rank r's half of a global batch is the samples at positions r, r + R, ...
    Each rank normalises with its own shard's batch statistics, and DDP broadcasts rank 0's running statistics before
    every forward, so the running statistics follow rank 0's shard alone. Here every training-mode BatchNorm of the
    student and of the losses' adapters does exactly that over the interleaved shards of the full batch.
    """

    def __init__(self, ranks: int = 2) -> None:
        self.ranks = ranks

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for module in [*pl_module.student.modules(), *pl_module.losses.modules()]:
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.forward = self._shard_forward(module)

    def _shard_forward(self, bn: nn.modules.batchnorm._BatchNorm):
        original = type(bn).forward

        def forward(x: Tensor) -> Tensor:
            if not bn.training:
                return original(bn, x)
            assert x.shape[0] % self.ranks == 0, "the global batch must split evenly over the ranks"
            shards = [original(bn, x[0 :: self.ranks])]  # rank 0's shard: also updates the running statistics
            shards += [
                F.batch_norm(x[rank :: self.ranks], None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
                for rank in range(1, self.ranks)
            ]
            return torch.stack(shards, dim=1).flatten(0, 1)  # back to positions 0, 1, 2, ... of the batch

        return forward


class AssertTeacherSharded(L.Callback):
    """Fails the run unless FSDP wrapped the teacher in units of its own, apart from the student's parameters."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        teacher_units = [m for m in pl_module.teacher.modules() if isinstance(m, FSDP)]
        assert len(teacher_units) >= 2, "the teacher should be split into several FSDP units"
        student_units = [m for m in pl_module.student.modules() if isinstance(m, FSDP)]
        assert not student_units, "the student stays in the root unit"
