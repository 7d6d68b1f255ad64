"""The GPU-ready training step: checks off the hot path, ``compile=True``, channels-last weights, the fused EMA update.

On the CPU these tests check the behaviour (what is checked when, what a compiled run saves and resumes); the test
at the end checks on a GPU, when there is one, that steady-state steps do not synchronise with the host at all.
"""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from wkd_lightning import DistillationModule
from wkd_lightning.losses import KD, WKDFeature, WKDLogit
from wkd_lightning.models import mini_resnet8, mini_resnet14
from wkd_lightning.run.watch import NonFiniteWatch
from wkd_lightning.selfkd import EMATeacher


class FixedData(L.LightningDataModule):
    """Random 1×28×28 images in a fixed order (so two fits see the same batches)."""

    num_classes = 10
    input_size = (1, 28, 28)

    def __init__(self, n: int = 24, channels_last: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % 10)
        self.channels_last = channels_last

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=8)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=8)


def trainer(tmp_path, **kwargs) -> L.Trainer:
    options = dict(
        max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1, enable_checkpointing=False,
    )  # fmt: skip
    return L.Trainer(**(options | kwargs))


def _module(student_path: str = "layer3", logit_loss: str = "KD", **kwargs) -> DistillationModule:
    torch.manual_seed(0)
    logits = KD(temperature=4.0, weight=0.9) if logit_loss == "KD" else WKDLogit(weight=30.0, temperature=2.0)
    losses = [logits, WKDFeature(student_path, "layer3", mean_weight=4.0, weight=0.1)]
    return DistillationModule(student=mini_resnet8(), teacher=mini_resnet14(), losses=losses, **kwargs)


def _manual(module: DistillationModule) -> DistillationModule:
    """A module driven without a trainer (logging is not under test)."""
    module.log = module.log_dict = lambda *a, **k: None
    module.num_classes, module.input_size = 10, (1, 28, 28)
    module._make_metrics(10)
    module._probe()
    return module.train()


# ---------------------------------------------------------------------------------------------------------------
# Checks off the hot path.


def test_the_watch_names_the_first_non_finite_step_and_its_terms() -> None:
    watch = NonFiniteWatch(every=4)
    names = ("ce", "wkd_f/feat")

    def observe(step: int, feat: float) -> None:
        stacked = torch.tensor([1.0, feat])
        watch.observe(dict(zip(names, stacked)), stacked, stacked.sum(), 2, step)

    for step in range(6):
        observe(step, 0.5)
    observe(6, math.nan)  # the 7th step: the read started at the 4th said "finite"
    observe(7, math.inf)  # 8th: reads that, then starts a new read
    with pytest.raises(
        FloatingPointError, match=r"^non-finite loss at epoch 2, step 6: terms \['wkd_f/feat'\]\. Lower"
    ):
        for step in range(8, 12):  # the read started at the 8th step arrives and is read at the 12th
            observe(step, 0.5)
    healthy = NonFiniteWatch(every=4)
    for step in range(9):
        stacked = torch.tensor([1.0, 2.0])
        healthy.observe(dict(zip(names, stacked)), stacked, stacked.sum(), 1, step)
    healthy.flush()  # nothing to report


def test_first_step_of_an_epoch_checks_the_inputs_the_others_watch_the_loss() -> None:
    module = _manual(_module())
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    bad = x.clone()
    bad[0, 0, 0, 0] = math.nan
    # A NaN pixel is named as one, not as a diverged student (whose logits it makes NaN).
    with pytest.raises(ValueError, match=r"^input batch contains NaN/inf pixels at epoch 1, step 0 \(1 sample"):
        module.training_step((bad, y), 0)  # the checked step: the clear message at once
    module.on_train_epoch_start()
    module.training_step((x, y), 0)  # checked, fine
    module.training_step((bad, y), 1)  # steady state: no read, no error yet...
    module.training_step((x, y), 2)
    with pytest.raises(ValueError, match=r"^input batch contains NaN/inf pixels at epoch 1, step 1 .*positions \[0\]"):
        module.on_train_epoch_end()  # ...the epoch-end read names the step and the sample
    diverged = _manual(_module())
    diverged.training_step((x, y), 0)
    diverged.student.fc.weight.data.fill_(math.nan)  # a diverged student: the loss terms are named
    diverged.training_step((x, y), 1)
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 1: terms \['ce', 'kd/kl'"):
        diverged.on_train_epoch_end()
    module.on_train_epoch_start()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        module.training_step((x, y + 5), 0)


def test_steady_state_steps_equal_checked_steps() -> None:
    module = _manual(_module())
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    checked = module.training_step((x, y), 0)
    steady = module.training_step((x, y), 1)
    torch.testing.assert_close(steady, checked, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# compile=True: checkpoints, hooks and exact resume. The aot_eager backend keeps this short on a CPU: Dynamo captures
# the same graphs (hooks included) as with the default inductor backend, which the slow test below runs.


@pytest.fixture
def quick_compile(monkeypatch):
    monkeypatch.setattr(DistillationModule, "compile_options", {"backend": "aot_eager"})


def test_compiled_fit_resumes_exactly_with_plain_checkpoint_keys(tmp_path, quick_compile) -> None:
    whole = _module(compile=True)
    trainer(tmp_path / "a", max_epochs=2).fit(whole, datamodule=FixedData())
    assert whole.student._compiled_call_impl is not None and whole.teacher.model._compiled_call_impl is not None

    first = _module(compile=True)
    fit = trainer(tmp_path / "b", max_epochs=1)
    fit.fit(first, datamodule=FixedData())
    fit.save_checkpoint(tmp_path / "epoch1.ckpt")
    state = torch.load(tmp_path / "epoch1.ckpt", weights_only=True)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k or k.startswith("teacher.")]
    assert any(k.startswith("losses.1.projector.") for k in state)  # the WKD-F projector, built from hooked features
    resumed = _module(compile=True)
    trainer(tmp_path / "b", max_epochs=2).fit(resumed, datamodule=FixedData(), ckpt_path=tmp_path / "epoch1.ckpt")

    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() == state.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


def test_compiled_students_of_one_class_keep_their_own_feature_hooks(quick_compile) -> None:
    """A graph traced for a student without hooks must not be reused for one whose features a loss reads."""
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    plain = _manual(DistillationModule(student=mini_resnet8(), teacher=mini_resnet14(), losses=[KD()], compile=True))
    plain._prepare_models(channels_last=False)
    plain.training_step((x, y), 0)
    with_features = _manual(_module(compile=True))
    with_features._prepare_models(channels_last=False)
    with_features.training_step((x, y), 0)
    assert float(with_features.training_step((x, y), 1)) > 0


def _steps_agree(logit_loss: str, tolerance: float) -> None:
    """Three optimizer steps of an eager and a compiled module on the same batch: the same loss at every step and
    the same gradients, up to ``tolerance`` (relative, in the 2-norm of all the gradients together)."""
    modules = [_manual(_module(logit_loss=logit_loss, compile=c)) for c in (False, True)]
    modules[1].load_state_dict(modules[0].state_dict())  # the same projector
    modules[1]._prepare_models(channels_last=False)
    optimizers = [m.configure_optimizers() for m in modules]
    x, y = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.arange(8)
    for step in range(3):  # step 0 runs the plug-ins eagerly (checked), 1 and 2 compiled
        losses, grads = [], []
        for module, optimizer in zip(modules, optimizers):
            optimizer.zero_grad()
            loss = module.training_step((x, y), step)
            loss.backward()
            losses.append(loss.detach())
            grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
            optimizer.step()
        torch.testing.assert_close(losses[1], losses[0], rtol=tolerance, atol=0)
        assert grads[0].keys() == grads[1].keys()
        eager, compiled = (torch.cat([g[name].flatten() for name in grads[0]]) for g in grads)
        error = float((compiled - eager).norm() / eager.norm())
        assert error < tolerance, (step, error)


def test_compiled_steps_equal_the_eager_steps(quick_compile) -> None:
    _steps_agree("KD", 1e-6)


@pytest.mark.slow
def test_compiled_steps_with_the_default_compiler() -> None:
    """The real ``--model.compile true``: inductor kernels for the student, the teacher, WKD-L (its unrolled
    Sinkhorn backward included) and WKD-F. Fused kernels sum in other orders: the losses agree to ~1e-6, but after two
    optimizer steps the gradients differ by ~0.5 % (measured, relative 2-norm; the first convolution's dominates),
    round-off amplified through BatchNorm on a batch of 8. WKD-L alone is compared tightly under inductor in
    ``tests/losses/test_compile.py``."""
    _steps_agree("WKDLogit", 1e-2)


# ---------------------------------------------------------------------------------------------------------------
# Memory format and the EMA update.


def test_channels_last_data_gives_channels_last_weights(tmp_path) -> None:
    module = _module(student_path="layer2")  # 14×14 → 7×7: a 3×3 stride-2 projector conv
    trainer(tmp_path, limit_train_batches=1).fit(module, datamodule=FixedData(channels_last=True))
    networks = {"student": module.student, "teacher": module.teacher.model, "projector": module.losses[1].projector}
    for name, network in networks.items():
        weights = [p for p in network.parameters() if p.ndim == 4 and p.shape[-1] > 1]
        assert weights, name
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights), name
    plain = _module()
    trainer(tmp_path, limit_train_batches=1).fit(plain, datamodule=FixedData())
    assert plain.student.conv1.weight.is_contiguous()


def test_fused_ema_update_equals_the_per_parameter_loop() -> None:
    torch.manual_seed(0)
    module = DistillationModule(student=mini_resnet8(), online_teacher=EMATeacher(decay=0.9), losses=[KD()])
    student, ema = module.student, module.online_teacher
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
        for b in student.buffers():
            b.add_(torch.ones_like(b))
    expected = copy.deepcopy(ema.ema.model)
    with torch.no_grad():
        for e, p in zip(expected.parameters(), student.parameters()):
            e.lerp_(p, 1.0 - 0.9)
        for e, b in zip(expected.buffers(), student.buffers()):
            e.copy_(b)
    ema.after_optimizer_step(student)
    for (name, value), reference in zip(ema.ema.model.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(value, reference), name
    assert any(not torch.equal(a, b) for a, b in zip(ema.ema.model.parameters(), student.parameters()))


# ---------------------------------------------------------------------------------------------------------------
# On a GPU: no host synchronisation in steady-state steps.


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.set_sync_debug_mode)")
@pytest.mark.parametrize("loss", ["KD", "WKD-L", "WKD-LF"])
def test_steady_state_steps_never_synchronise_on_a_gpu(loss: str) -> None:
    torch.manual_seed(0)
    plugins = {
        "KD": [KD()],
        "WKD-L": [WKDLogit(weight=30.0, temperature=2.0)],
        "WKD-LF": [WKDLogit(weight=30.0, temperature=2.0), WKDFeature("layer3", "layer3", grid=2)],
    }[loss]
    module = _manual(DistillationModule(student=mini_resnet8(), teacher=mini_resnet14(), losses=plugins)).cuda()
    optimizer = module.configure_optimizers()
    x, y = torch.randn(64, 1, 28, 28, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    module.loss_watch.every = 3  # the watch's non-blocking reads happen inside the checked window

    def step(batch_idx: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            total = module.training_step((x, y), batch_idx)
        total.backward()
        optimizer.step()

    step(0)  # the first step of the epoch checks its inputs (host reads on purpose)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch_idx in range(1, 8):
            step(batch_idx)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    module.on_train_epoch_end()  # the epoch-end read (one synchronisation, outside the steps)
