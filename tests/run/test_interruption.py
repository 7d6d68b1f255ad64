"""Ctrl-C and SIGTERM during training leave ``last-interrupted.ckpt``, and ``--ckpt_path last`` resumes from it."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tests.commands.test_cli import QUIET, ROOT, localised_config
from wkd_lightning.commands import wkd as cli_module
from wkd_lightning.commands.wkd import make_cli
from wkd_lightning.run.interruption import INTERRUPTED_NAME


class StopAtStep(L.Callback):
    """Interrupt training at a given global step, the way a user or a cluster scheduler does."""

    def __init__(self, step: int, how: str) -> None:
        self.step, self.how = step, how

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            if self.how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)  # Lightning stops at the next step boundary
            else:
                raise KeyboardInterrupt


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_interrupted_fit_leaves_a_checkpoint_that_resumes(how, tmp_path, fashion_dir):
    path = localised_config(ROOT / "configs/fashion_mnist/kd.yaml", tmp_path, fashion_dir)
    run_dir = tmp_path / "runs" / "kd"
    args = ["-c", str(path), "--trainer.max_epochs=2", "--data.batch_size=16", *QUIET]  # 80 images: 5 steps/epoch
    cli = make_cli(args, run=False)
    cli.trainer.callbacks.append(StopAtStep(step=7, how=how))
    with pytest.raises(SystemExit):  # SIGTERMException and Lightning's Ctrl-C shutdown both exit
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    saved = run_dir / "checkpoints" / INTERRUPTED_NAME
    checkpoint = torch.load(saved, weights_only=True)
    assert checkpoint["global_step"] in (7, 8) and checkpoint["epoch"] == 1  # mid-way through the second epoch
    assert not [k for k in checkpoint["state_dict"] if k.startswith("teacher.")]

    make_cli(["fit", *args, "--ckpt_path=last"])
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["epoch"] == 1 and final["global_step"] == 10  # saved at the end of epoch 1: 2 epochs of 5 steps
    assert not saved.exists()  # removed once fit ended normally
    with open(run_dir / "metrics.csv", newline="") as file:
        validated_epochs = {row["epoch"] for row in csv.DictReader(file) if row.get("val/top1")}
    assert validated_epochs == {"0", "1"}  # the rows written before the interruption are still there


def test_new_fit_in_a_folder_with_only_a_metrics_log_keeps_the_old_metrics(tmp_path, fashion_dir):
    """A folder with a metrics.csv but no checkpoint nor summary (a fit stopped in its first epoch) may be fitted
    into again; the old log is moved aside. (A folder with checkpoints is refused: tests/commands/test_cli_runs.py.)"""
    path = localised_config(ROOT / "configs/fashion_mnist/vanilla.yaml", tmp_path, fashion_dir)
    args = ["fit", "-c", str(path), "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", *QUIET]
    make_cli(args)
    run_dir = tmp_path / "runs" / "vanilla"
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "summary.json").unlink()
    make_cli(args)
    assert (run_dir / "metrics.csv").is_file() and len(list(run_dir.glob("metrics.*.csv"))) == 1


def test_uninterrupted_fit_writes_no_interrupted_checkpoint(tmp_path, fashion_dir):
    path = localised_config(ROOT / "configs/fashion_mnist/vanilla.yaml", tmp_path, fashion_dir)
    make_cli(["fit", "-c", str(path), "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", *QUIET])
    checkpoints = Path(tmp_path / "runs" / "vanilla" / "checkpoints")
    assert (checkpoints / "last.ckpt").is_file() and not (checkpoints / INTERRUPTED_NAME).exists()


class FailAtEpochStart(L.Callback):
    def on_train_epoch_start(self, trainer, *args) -> None:
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


def test_interruption_before_the_epochs_first_batch_resumes_from_last_ckpt(tmp_path, fashion_dir):
    """Stopping before any batch of an epoch ran saves nothing new: the resume must not skip that epoch."""
    path = localised_config(ROOT / "configs/fashion_mnist/vanilla.yaml", tmp_path, fashion_dir)
    args = ["-c", str(path), "--trainer.max_epochs=3", "--data.batch_size=40", *QUIET]  # 2 steps per epoch
    cli = make_cli(args, run=False)
    cli.trainer.callbacks.append(FailAtEpochStart())
    with pytest.raises(SystemExit):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    checkpoints = tmp_path / "runs" / "vanilla" / "checkpoints"
    assert not (checkpoints / INTERRUPTED_NAME).exists()
    make_cli(["fit", *args, "--ckpt_path=last"])
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 6  # all 3 epochs trained


def test_wkd_exits_143_after_sigterm(monkeypatch):
    """Lightning ends a SIGTERM'd fit with status 0; `wkd` reports 143 so schedulers see the interruption."""

    def interrupted_run(**kwargs):
        raise SIGTERMException

    monkeypatch.setattr(cli_module, "make_cli", interrupted_run)
    for entry_point in (cli_module.main, cli_module.detection_main):  # `wkd` and `wkd-det`
        with pytest.raises(SystemExit) as info:
            entry_point()
        assert info.value.code == 143


def test_resuming_a_run_stopped_after_its_last_epoch_marks_it_complete(tmp_path, fashion_dir):
    """A run killed after its last epoch's last.ckpt but before fit ended: the resume trains nothing, and must still
    mark summary.json complete (scripts that skip finished runs would otherwise resume it forever)."""
    path = localised_config(ROOT / "configs/fashion_mnist/vanilla.yaml", tmp_path, fashion_dir)
    args = ["fit", "-c", str(path), "--trainer.max_epochs=1", "--data.batch_size=40", *QUIET]
    make_cli(args)
    summary_file = tmp_path / "runs" / "vanilla" / "summary.json"
    killed = {**json.loads(summary_file.read_text()), "complete": False}
    summary_file.write_text(json.dumps(killed))
    make_cli([*args, "--ckpt_path=last"])
    assert json.loads(summary_file.read_text()) == {**killed, "complete": True}
