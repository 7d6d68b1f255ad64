"""Online self-KD: the EMA teacher and the previous-epoch teacher, their checkpoints, the per-epoch WKD-L cost."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from wkd_lightning import DistillationModule
from wkd_lightning.commands.wkd import make_cli
from wkd_lightning.ir.methods import classifier_cosine
from wkd_lightning.losses import KD, DistillationContext, DistillationLoss, WKDFeature, WKDLogit
from wkd_lightning.models import mini_resnet8, mini_resnet14
from wkd_lightning.selfkd import EMATeacher, PreviousEpochTeacher


class IndexedData(L.LightningDataModule):
    """Random 1×28×28 images; training batches are ``(x, y, index)`` (``with_index``) or ``(x, y)``."""

    num_classes = 10
    input_size = (1, 28, 28)

    def __init__(self, n: int = 16, batch_size: int = 8, shuffle: bool = True, with_index: bool = True) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % 10
        self.train = TensorDataset(x, y, torch.arange(n)) if with_index else TensorDataset(x, y)
        self.val = TensorDataset(x, y)
        self.batch_size, self.shuffle = batch_size, shuffle

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=self.batch_size)


class RecordTeacherLogits(DistillationLoss):
    """Records the teacher logits and sample count each distillation step sees; adds 0."""

    name = "probe"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Tensor] = []

    def forward(self, ctx: DistillationContext) -> dict[str, Tensor]:
        self.seen.append(ctx.teacher_logits.detach().clone())
        return {"zero": ctx.student_logits.sum() * 0}


class RecordTrainOutputs(nn.Module):
    """A student that remembers its logits of every forward pass in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mini_resnet8()
        self.outputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        if self.training:
            self.outputs.append(out.detach().clone())
        return out


class RecordCost(L.Callback):
    """At every training batch: the WKD-L cost in use and the cost expected from the EMA's classifier right now."""

    def __init__(self) -> None:
        self.records: list[tuple[int, Tensor, Tensor]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        (loss,) = [x for x in module.losses if isinstance(x, WKDLogit)]
        expected = WKDLogit(cost=classifier_cosine(module.online_teacher.ema.model.fc), kappa=loss.kappa)
        self.records.append((trainer.current_epoch, loss.cost_matrix.clone(), expected.cost_matrix))


def trainer(tmp_path, **kwargs) -> L.Trainer:
    options = dict(
        max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, limit_val_batches=1, num_sanity_val_steps=0,
    )  # fmt: skip
    return L.Trainer(**(options | kwargs))


def ema_module(decay: float = 0.9, losses=None) -> DistillationModule:
    return DistillationModule(student=mini_resnet8(), online_teacher=EMATeacher(decay=decay), losses=losses or [KD()])


def test_ema_update_matches_its_formula_after_one_step(tmp_path):
    torch.manual_seed(0)
    module = ema_module(decay=0.9)
    ema = module.online_teacher.ema.model
    before = {k: v.clone() for k, v in module.student.named_parameters()}
    assert all(torch.equal(before[k], v) for k, v in ema.named_parameters())  # starts as a copy of the student
    trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(module, datamodule=IndexedData())
    after = dict(module.student.named_parameters())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for name, value in ema.named_parameters():  # θ_ema ← d·θ_ema + (1 − d)·θ_student
        torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * after[name], rtol=0, atol=1e-6)
        assert not value.requires_grad
    student_buffers = dict(module.student.named_buffers())
    assert all(torch.equal(v, student_buffers[k]) for k, v in ema.named_buffers())  # BN statistics copied
    assert not any(m.training for m in ema.modules())
    optimizer = module.trainer.optimizers[0]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in module.student.parameters()}


def test_ema_copy_is_in_the_checkpoint_and_restored(tmp_path):
    module = ema_module(decay=0.5)
    fit = trainer(tmp_path, limit_train_batches=2)
    fit.fit(module, datamodule=IndexedData())
    fit.save_checkpoint(tmp_path / "run.ckpt")
    state = torch.load(tmp_path / "run.ckpt", weights_only=True)["state_dict"]
    ema_keys = [k for k in state if k.startswith("online_teacher.ema.model.")]
    assert ema_keys and not [k for k in state if k.startswith("teacher.")]
    assert not torch.equal(state["online_teacher.ema.model.fc.weight"], state["student.fc.weight"])
    fresh = ema_module(decay=0.5)
    fresh.load_state_dict(state)
    trained = module.online_teacher.ema.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in fresh.online_teacher.ema.model.state_dict().items())


def test_wkd_l_cost_is_rebuilt_from_the_ema_classifier_every_epoch_and_on_resume(tmp_path):
    """Epoch 1, then epoch 2 resumed in a fresh module: the EMA comes back from the checkpoint, the cost from it."""
    torch.manual_seed(0)
    first, first_record = ema_module(decay=0.5, losses=[WKDLogit(weight=1.0, temperature=4.0)]), RecordCost()
    fit = trainer(tmp_path, limit_train_batches=2, callbacks=[first_record])
    fit.fit(first, datamodule=IndexedData())
    fit.save_checkpoint(tmp_path / "epoch1.ckpt")
    expected = WKDLogit(cost=classifier_cosine(first.online_teacher.ema.model.fc), kappa=1.0).cost_matrix

    resumed, record = ema_module(decay=0.5, losses=[WKDLogit(weight=1.0, temperature=4.0)]), RecordCost()
    trainer(tmp_path, max_epochs=2, limit_train_batches=2, callbacks=[record]).fit(
        resumed, datamodule=IndexedData(), ckpt_path=tmp_path / "epoch1.ckpt"
    )
    (epoch_1, *_), (epoch_2, *_) = first_record.records, record.records
    assert epoch_1[0] == 0 and epoch_2[0] == 1
    for _, cost, now_expected in (epoch_1, epoch_2):  # set at the epoch start from the EMA classifier of that moment
        torch.testing.assert_close(cost, now_expected)
    torch.testing.assert_close(epoch_2[1], expected)  # = the cost of the EMA saved at the end of epoch 1
    assert not torch.allclose(epoch_1[1], epoch_2[1])
    assert all(torch.equal(cost, epoch_2[1]) for _, cost, _ in record.records)  # fixed within the epoch


def test_previous_epoch_teacher_gives_last_epochs_logits_and_nothing_in_epoch_one(tmp_path):
    student, probe = RecordTrainOutputs(), RecordTeacherLogits()
    module = DistillationModule(student=student, online_teacher=PreviousEpochTeacher(), losses=[KD(), probe])
    data = IndexedData(n=8, batch_size=8, shuffle=False)  # one batch per epoch, samples in order
    fit = trainer(tmp_path, max_epochs=2)
    fit.fit(module, datamodule=data)
    assert len(student.outputs) == 2 and len(probe.seen) == 1  # epoch 1: no distillation term at all
    torch.testing.assert_close(probe.seen[0], student.outputs[0], rtol=0, atol=0)
    bank = module.online_teacher
    torch.testing.assert_close(bank.logits, student.outputs[1], rtol=0, atol=0)
    assert bool(bank.seen.all())

    fit.save_checkpoint(tmp_path / "run.ckpt")
    state = torch.load(tmp_path / "run.ckpt", weights_only=True)["state_dict"]
    assert state["online_teacher.logits"].shape == (8, 10)
    fresh = DistillationModule(student=RecordTrainOutputs(), online_teacher=PreviousEpochTeacher(), losses=[KD()])
    fresh.load_state_dict(state)
    assert torch.equal(fresh.online_teacher.logits, bank.logits) and bool(fresh.online_teacher.seen.all())


def test_previous_epoch_teacher_distils_only_samples_it_has_seen():
    teacher = PreviousEpochTeacher()
    teacher.start(num_samples=4, num_classes=3, world_size=1, device=torch.device("cpu"))
    index = torch.tensor([0, 2])
    _, seen = teacher.targets(torch.zeros(2, 1), index)
    assert not seen.any()
    teacher.observe(index, torch.ones(2, 3))
    logits, seen = teacher.targets(torch.zeros(4, 1), torch.arange(4))
    assert seen.tolist() == [True, False, True, False]
    assert torch.equal(logits[0], torch.ones(3)) and torch.equal(logits[1], torch.zeros(3))


def test_online_config_trains_through_the_cli_with_no_file_on_disk(tmp_path, fashion_dir):
    config = Path(__file__).resolve().parents[2] / "configs/fashion_mnist/self_kd_online.yaml"
    cli = make_cli(["fit", "-c", str(config), "--data.data_dir", str(fashion_dir), "--data.train_size=null",
                    "--data.num_workers=0", "--data.batch_size=16", "--trainer.fast_dev_run=2",
                    f"--trainer.default_root_dir={tmp_path}",
                    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])  # fmt: skip
    module = cli.model
    assert isinstance(module.online_teacher, EMATeacher) and module.teacher is None
    assert cli.trainer.global_step == 2
    ema, student = module.online_teacher.ema.model, module.student
    assert not torch.equal(ema.fc.weight, student.fc.weight)
    (loss,) = module.losses
    expected = WKDLogit(cost=classifier_cosine(ema.fc), kappa=loss.kappa).cost_matrix
    assert not torch.allclose(loss.cost_matrix, expected)  # set at the epoch start, before the two EMA updates


def test_previous_epoch_teacher_trains_through_the_cli_with_indexed_fashion_mnist(tmp_path, fashion_dir):
    config = Path(__file__).resolve().parents[2] / "configs/fashion_mnist/self_kd_online.yaml"
    cli = make_cli(["fit", "-c", str(config), "--data.data_dir", str(fashion_dir), "--data.train_size=null",
                    "--data.num_workers=0", "--data.batch_size=16", "--data.return_index=true",
                    "--model.online_teacher=wkd_lightning.selfkd.PreviousEpochTeacher", "--trainer.max_epochs=2",
                    "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={tmp_path}",
                    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])  # fmt: skip
    teacher = cli.model.online_teacher
    assert isinstance(teacher, PreviousEpochTeacher)
    assert teacher.logits.shape == (80, 10) and bool(teacher.seen.all())  # every training sample stored
    assert float(cli.trainer.callback_metrics["train/loss/wkd_l/wd"]) > 0  # epoch 2 distilled from epoch 1


# ------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1, 1.5])
def test_ema_decay_outside_the_open_unit_interval_is_an_error(decay):
    with pytest.raises(ValueError, match=r"decay must lie in \(0, 1\)"):
        EMATeacher(decay=decay)


def test_online_teacher_together_with_a_pretrained_teacher_is_an_error():
    with pytest.raises(ValueError, match="cannot be combined with a pretrained `teacher`"):
        DistillationModule(student=mini_resnet8(), teacher=mini_resnet14(), online_teacher=EMATeacher(), losses=[KD()])
    with pytest.raises(ValueError, match="cannot be combined"):
        DistillationModule(student=mini_resnet8(), teacher_weights="t.ckpt", online_teacher=EMATeacher(), losses=[KD()])


def test_online_teacher_rejects_losses_it_cannot_serve(tmp_path):
    with pytest.raises(ValueError, match="no loss uses a teacher"):
        DistillationModule(student=mini_resnet8(), online_teacher=EMATeacher())
    with pytest.raises(ValueError, match="gives logits only"):
        DistillationModule(student=mini_resnet8(), online_teacher=EMATeacher(), losses=[WKDFeature("layer3", "layer3")])
    cost = tmp_path / "cost.pt"
    torch.save(1 - torch.eye(10), cost)
    with pytest.raises(ValueError, match="refresh_cost"):
        DistillationModule(student=mini_resnet8(), online_teacher=EMATeacher(), losses=[WKDLogit(cost=str(cost))])
    module = DistillationModule(  # with refresh_cost off, the file is the cost
        student=mini_resnet8(), online_teacher=EMATeacher(refresh_cost=False), losses=[WKDLogit(cost=str(cost))]
    )
    assert module.losses[0].cost_source == str(cost)


def test_previous_epoch_bank_on_a_training_set_of_another_length_is_an_error(tmp_path):
    module = DistillationModule(student=mini_resnet8(), online_teacher=PreviousEpochTeacher(), losses=[KD()])
    fit = trainer(tmp_path)
    fit.fit(module, datamodule=IndexedData(n=16))
    fit.save_checkpoint(tmp_path / "run.ckpt")
    fresh = DistillationModule(student=mini_resnet8(), online_teacher=PreviousEpochTeacher(), losses=[KD()])
    with pytest.raises(ValueError, match=r"built for 16 samples .* now has 12 samples"):
        trainer(tmp_path, max_epochs=2).fit(fresh, datamodule=IndexedData(n=12), ckpt_path=tmp_path / "run.ckpt")


def test_previous_epoch_teacher_without_sample_indices_says_how_to_get_them(tmp_path):
    module = DistillationModule(student=mini_resnet8(), online_teacher=PreviousEpochTeacher(), losses=[KD()])
    with pytest.raises(ValueError, match=r"set --data\.return_index true"):
        trainer(tmp_path).fit(module, datamodule=IndexedData(with_index=False))
