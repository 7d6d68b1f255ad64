"""DDP on the CPU (gloo, 2 processes) trains to the same student as one process with the same global batch.

Why they can match: the epoch-seeded sampler gives rank r every second index of the single-process order, so each
step's two half-batches together are exactly the single-process batch, with the same per-sample augmentation;
DDP averages the two half-batch gradients (= the full-batch mean gradient, every loss being a batch mean);
torchmetrics synchronises the validation accuracy. The student has no BatchNorm: DDP cannot use SyncBatchNorm on
the CPU, and per-process batch statistics legitimately differ from full-batch ones (the frozen teacher's BatchNorm
uses its running statistics, so it may have BatchNorm).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from wkd_lightning import DistillationModule, FashionMNISTDataModule
from wkd_lightning.losses import KD
from wkd_lightning.models import mini_resnet14

GLOBAL_BATCH = 8


class RecordTrainOrder(L.Callback):
    """Each rank's sampler epoch at every epoch start (Lightning must call ``set_epoch`` on our sampler in DDP)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sampler = trainer.train_dataloader.sampler
        assert sampler.epoch == trainer.current_epoch and sampler.num_replicas == trainer.world_size


def fit(run_dir: Path, data_dir: Path, devices: int) -> dict[str, torch.Tensor]:
    L.seed_everything(0)
    teacher = mini_resnet14()
    teacher_file = run_dir / "teacher.pt"
    run_dir.mkdir(parents=True)
    torch.save(teacher.state_dict(), teacher_file)
    module = DistillationModule(
        student=nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 10)),
        teacher=mini_resnet14(),
        teacher_weights=str(teacher_file),
        losses=[KD(temperature=4)],
    )
    data = FashionMNISTDataModule(data_dir=str(data_dir), batch_size=GLOBAL_BATCH // devices, num_workers=0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=2,
        deterministic=True,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=run_dir, filename="last", monitor=None), RecordTrainOrder()],
    )
    trainer.fit(module, datamodule=data)
    return torch.load(run_dir / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
def test_two_process_ddp_equals_one_process(tmp_path, fashion_dir):
    single = fit(tmp_path / "single", fashion_dir, devices=1)
    ddp = fit(tmp_path / "ddp", fashion_dir, devices=2)
    assert single.keys() == ddp.keys()
    assert float(single["val_top1_best"]) > 0  # a synchronised accuracy was recorded
    for key, value in single.items():
        torch.testing.assert_close(ddp[key].float(), value.float(), rtol=1e-4, atol=1e-5, msg=key)
