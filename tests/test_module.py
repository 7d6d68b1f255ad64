"""DistillationModule: the frozen-teacher rules, loss plumbing, metrics and checkpoints."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wkd_lightning import DistillationModule
from wkd_lightning.losses import KD, DistillationContext, DistillationLoss, kd_loss
from wkd_lightning.models import mini_resnet8, mini_resnet14


class TinyData(L.LightningDataModule):
    """Random 1×28×28 images with labels: enough to drive the loops (not for any accuracy claim)."""

    num_classes = 10
    input_size = (1, 28, 28)

    def __init__(self, n: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.num_classes = num_classes
        self.data = TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % num_classes)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=8, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=8)


class RecordTeacherState(DistillationLoss):
    """A plug-in that records what a loss sees of the teacher at every step (mode, grad state) and adds 0."""

    name = "probe"

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.seen: list[tuple[bool, bool, bool]] = []
        self._teacher = [teacher]  # a list, so the teacher is not registered as a submodule of the plug-in

    def forward(self, ctx: DistillationContext) -> dict[str, torch.Tensor]:
        teacher = self._teacher[0]
        self.seen.append(
            (
                any(m.training for m in teacher.modules()),
                any(p.requires_grad for p in teacher.parameters()),
                ctx.teacher_logits.requires_grad,
            )
        )
        return {"zero": ctx.student_logits.sum() * 0}


def trainer(tmp_path, **kwargs) -> L.Trainer:
    options = dict(
        max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_train_batches=3, limit_val_batches=2, num_sanity_val_steps=0,
    )  # fmt: skip
    return L.Trainer(**(options | kwargs))


def test_teacher_is_frozen_in_eval_mode_and_unchanged(tmp_path):
    teacher = mini_resnet14()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # BN running stats included
    probe = RecordTeacherState(teacher)
    module = DistillationModule(student=mini_resnet8(), teacher=teacher, losses=[KD(), probe])
    trainer(tmp_path, enable_checkpointing=False).fit(module, datamodule=TinyData())
    assert probe.seen and all(seen == (False, False, False) for seen in probe.seen)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    optimizer = module.trainer.optimizers[0]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    assert in_optimizer == {id(p) for p in module.student.parameters()}


def test_checkpoint_has_no_teacher_and_reloads(tmp_path):
    teacher_file = tmp_path / "teacher.pt"
    torch.save(mini_resnet14().state_dict(), teacher_file)
    module = DistillationModule(
        student=mini_resnet8(), teacher=mini_resnet14(), teacher_weights=str(teacher_file), losses=[KD()]
    )
    fit = trainer(tmp_path)
    fit.fit(module, datamodule=TinyData())
    path = tmp_path / "module.ckpt"
    fit.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["state_dict"], "student weights must be saved"
    assert not [k for k in checkpoint["state_dict"] if k.startswith("teacher.")]
    assert any(k.startswith("student.") for k in checkpoint["state_dict"])
    fresh = DistillationModule(
        student=mini_resnet8(), teacher=mini_resnet14(), teacher_weights=str(teacher_file), losses=[KD()]
    )
    fresh.load_state_dict(checkpoint["state_dict"])
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.student.state_dict().values(), module.student.state_dict().values())
    )
    teacher_reloaded = torch.load(teacher_file, weights_only=True)
    assert all(torch.equal(fresh.teacher.model.state_dict()[k], v) for k, v in teacher_reloaded.items())


def test_checkpoint_of_another_student_is_refused(tmp_path):
    module = DistillationModule(student=mini_resnet8())
    other = DistillationModule(student=mini_resnet14())
    with pytest.raises(RuntimeError, match=r"shape mismatch.*student\.conv1\.weight"):
        module.load_state_dict(other.state_dict())


def test_training_loss_is_ce_plus_weighted_kd():
    torch.manual_seed(0)
    student, teacher = mini_resnet8(), mini_resnet14()
    module = DistillationModule(student=student, teacher=teacher, losses=[KD(temperature=3.0, weight=0.5)])
    module.log = module.log_dict = lambda *a, **k: None  # no trainer attached: logging is not under test here
    module._make_metrics(10)  # normally made in setup(), which needs a trainer
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4, 5])
    total = module.training_step((x, y), 0)
    student_logits, teacher_logits = student(x), module.teacher(x)
    p_t = F.softmax(teacher_logits / 3.0, dim=1)
    kl = (p_t * (p_t.log() - F.log_softmax(student_logits / 3.0, dim=1))).sum(1).mean() * 9.0
    expected = F.cross_entropy(student_logits, y) + 0.5 * kl
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kd_loss(student_logits, teacher_logits, 3.0), kl, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ce_weight", [0.1, 0.5, 0.0])
def test_ce_weight_scales_the_cross_entropy_only(ce_weight):
    """mdistiller's KD is ``0.1·CE + 0.9·KD`` on CIFAR-100: ``ce_weight`` weights the CE term, nothing else."""
    torch.manual_seed(0)
    student, teacher = mini_resnet8(), mini_resnet14()
    module = DistillationModule(
        student=student, teacher=teacher, losses=[KD(temperature=4.0, weight=0.9)], ce_weight=ce_weight
    )
    logged = {}
    module.log = lambda *a, **k: None
    module.log_dict = lambda values, **k: logged.update(values)
    module._make_metrics(10)
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4, 5])
    total = module.training_step((x, y), 0)
    student_logits, teacher_logits = student(x), module.teacher(x)
    ce = -F.log_softmax(student_logits, dim=1)[torch.arange(6), y].mean()  # written out, not F.cross_entropy
    p_t = F.softmax(teacher_logits / 4.0, dim=1)
    kl = (p_t * (p_t.log() - F.log_softmax(student_logits / 4.0, dim=1))).sum(1).mean() * 16.0
    torch.testing.assert_close(total, ce_weight * ce + 0.9 * kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logged["train/loss/ce"], ce_weight * ce.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_ce_weight_must_be_a_finite_non_negative_number(bad):
    with pytest.raises(ValueError, match=r"DistillationModule: ce_weight must be a finite number >= 0, got"):
        DistillationModule(student=mini_resnet8(), ce_weight=bad)


def test_top1_top5_on_a_hand_made_batch(tmp_path):
    # The "student" passes hand-made logits through, so the expected accuracies are known exactly.
    logits = torch.tensor(
        [
            [9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0],  # label 0: top-1 hit
            [9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0],  # label 4: top-5 hit only
            [9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0],  # label 9: miss
            [0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9],  # label 9: top-1 hit
        ]
    )
    labels = torch.tensor([0, 4, 9, 9])
    module = DistillationModule(student=nn.Identity(), num_classes=10)
    loader = DataLoader(TensorDataset(logits, labels), batch_size=3)  # two batches: micro averaging matters
    (result,) = trainer(tmp_path).validate(module, loader, verbose=False)
    assert result["val/top1"] == pytest.approx(2 / 4)
    assert result["val/top5"] == pytest.approx(3 / 4)


def test_best_and_last_top1_are_logged(tmp_path):
    module = DistillationModule(student=mini_resnet8())
    fit = trainer(tmp_path, max_epochs=2, enable_checkpointing=False)
    fit.fit(module, datamodule=TinyData())
    metrics = fit.callback_metrics
    assert float(metrics["val/top1_best"]) >= float(metrics["val/top1"])
    assert float(module.val_top1_best) == pytest.approx(float(metrics["val/top1_best"]))


def test_class_count_mismatches_are_errors(tmp_path):
    with pytest.raises(ValueError, match="data module has 5 classes but the model is configured for 10"):
        trainer(tmp_path).fit(
            DistillationModule(student=mini_resnet8(), num_classes=10), datamodule=TinyData(num_classes=5)
        )
    with pytest.raises(ValueError, match="student outputs shape"):
        trainer(tmp_path).fit(DistillationModule(student=mini_resnet8(num_classes=7)), datamodule=TinyData())
    module = DistillationModule(student=mini_resnet8(), teacher=mini_resnet14(num_classes=7), losses=[KD()])
    with pytest.raises(ValueError, match="teacher and student must predict the same classes"):
        trainer(tmp_path).fit(module, datamodule=TinyData())


def test_constructor_errors():
    with pytest.raises(ValueError, match="need a teacher"):
        DistillationModule(student=mini_resnet8(), losses=[KD()])
    with pytest.raises(ValueError, match="no teacher architecture"):
        DistillationModule(student=mini_resnet8(), teacher_weights="x.ckpt")
    with pytest.raises(ValueError, match="distinct names"):
        DistillationModule(student=mini_resnet8(), teacher=mini_resnet14(), losses=[KD(), KD()])
    with pytest.raises(ValueError, match=r"student has no module at path 'layer9'.*layer3"):
        from wkd_lightning.losses import FitNet

        DistillationModule(student=mini_resnet8(), teacher=mini_resnet14(), losses=[FitNet("layer9", "layer3")])


def test_labels_out_of_range_are_an_error(tmp_path):
    module = DistillationModule(student=mini_resnet8(), num_classes=10)
    bad = TensorDataset(torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 12]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        trainer(tmp_path).fit(module, DataLoader(bad, batch_size=4), DataLoader(bad, batch_size=4))


def test_batches_may_carry_sample_indices():
    module = DistillationModule(student=mini_resnet8(), teacher=mini_resnet14(), losses=[KD()])
    module.log = module.log_dict = lambda *a, **k: None  # no trainer attached: logging is not under test here
    module._make_metrics(10)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(module.training_step((x, y, torch.arange(4)), 0), module.training_step((x, y), 0))
    with pytest.raises(ValueError, match=r"batches must be \(x, y\) or \(x, y, index\) tuples, got a tuple of 1"):
        module.training_step((x,), 0)
