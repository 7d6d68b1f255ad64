"""A transformer teacher distilling into a CNN student through the ordinary training module.

The teacher is a tiny torchvision ``VisionTransformer`` (one layer, 32-dim tokens) so the check is cheap; the
registered ``vit_b_16`` is the same class at full size (its own forward/backward is covered in ``test_zoo``).
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import VisionTransformer

from wkd_lightning import DistillationModule
from wkd_lightning.losses import WKDLogit
from wkd_lightning.models import create_model
from wkd_lightning.teacher import FrozenTeacher

NUM_CLASSES = 10


def tiny_vit() -> VisionTransformer:
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=NUM_CLASSES
    )


def test_vit_teacher_cnn_student_training_step():
    torch.manual_seed(0)
    teacher, student = tiny_vit(), create_model("resnet8", num_classes=NUM_CLASSES)
    module = DistillationModule(
        student=student,
        teacher=teacher,
        losses=[WKDLogit(cost="uniform", weight=5.0, temperature=2.0)],
        num_classes=NUM_CLASSES,
        input_size=(3, 32, 32),
    )
    assert isinstance(module.teacher, FrozenTeacher)
    module.log = module.log_dict = lambda *args, **kwargs: None  # no trainer attached: logging is not under test
    module._make_metrics(NUM_CLASSES)  # normally made in setup(), which needs a trainer
    module.train()
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4) % NUM_CLASSES
    total = module.training_step((x, y), 0)
    assert total.ndim == 0 and torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not any(m.training for m in teacher.modules())


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_vit_teacher_cnn_student_fit_one_batch(tmp_path):
    torch.manual_seed(0)
    teacher, student = tiny_vit(), create_model("resnet8", num_classes=NUM_CLASSES)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    module = DistillationModule(
        student=student,
        teacher=teacher,
        losses=[WKDLogit(cost="uniform", weight=5.0, temperature=2.0)],
        num_classes=NUM_CLASSES,
        input_size=(3, 32, 32),
    )
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.arange(8) % NUM_CLASSES)
    trainer = L.Trainer(
        fast_dev_run=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in student_before.items())
