"""Old import paths and files of earlier versions keep loading (:mod:`wkd_lightning.legacy`).

The package was re-laid: the run machinery moved to ``wkd_lightning.run``, the entry points to
``wkd_lightning.commands``, and ``wkd_lightning.checks`` was split by job. Configs, the ``config.yaml`` of earlier runs
and the hyperparameters stored in checkpoints name classes by those old paths; ``tests/fixtures/v0_1`` holds two runs
written before the move (see its README), loaded here through Python and through the commands as shipped.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import write_fashion_mnist
from tests.distributed.launch import QUIET, run_ok
from wkd_lightning import DistillationModule
from wkd_lightning.legacy import MOVED, SPLIT

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v0_1"


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_moved_module_is_its_new_module(old: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(MOVED[old])


def test_old_class_paths_of_configs_resolve_to_the_new_classes() -> None:
    from wkd_lightning.run.distributed import TeacherShardedFSDP
    from wkd_lightning.run.optim import CosineAnnealingLR, MultiStepLR, PaperSGD

    wanted = {
        "wkd_lightning.schedules.MultiStepLR": MultiStepLR,
        "wkd_lightning.schedules.CosineAnnealingLR": CosineAnnealingLR,
        "wkd_lightning.module.PaperSGD": PaperSGD,
        "wkd_lightning.distributed.TeacherShardedFSDP": TeacherShardedFSDP,
    }
    for path, cls in wanted.items():
        module, _, name = path.rpartition(".")
        assert getattr(importlib.import_module(module), name) is cls, path


def test_the_split_checks_module_hands_on_the_names_of_its_parts() -> None:
    from wkd_lightning.losses.checks import check_number
    from wkd_lightning.losses.cost_checks import check_cost_meaning
    from wkd_lightning.run.watch import NonFiniteWatch

    checks = importlib.import_module("wkd_lightning.checks")
    assert (checks.check_number, checks.check_cost_meaning, checks.NonFiniteWatch) == (
        check_number,
        check_cost_meaning,
        NonFiniteWatch,
    )
    assert set(SPLIT["wkd_lightning.checks"]) == {
        "wkd_lightning.losses.checks",
        "wkd_lightning.losses.cost_checks",
        "wkd_lightning.run.watch",
    }
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        checks.nothing_here  # noqa: B018


def test_old_paths_import_in_a_fresh_interpreter() -> None:
    """The finder is installed by ``import wkd_lightning`` itself: an old path works as the first import."""
    code = "import wkd_lightning.schedules as s; import wkd_lightning.run.optim as o; assert s is o; print(s.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "wkd_lightning.run.optim"


@pytest.mark.parametrize("run", ["vanilla", "self_kd_online"])
def test_checkpoints_of_the_old_layout_load_from_their_hyperparameters(run: str) -> None:
    path = FIXTURES / run / "last.ckpt"
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    assert hparams["optimizer"]["class_path"] == "wkd_lightning.module.PaperSGD"
    assert hparams["lr_scheduler"]["class_path"] == "wkd_lightning.schedules.CosineAnnealingLR"
    module = DistillationModule.load_from_checkpoint(path)
    saved = torch.load(path, weights_only=True)["state_dict"]
    state = module.state_dict()
    assert set(state) == set(saved)
    for key, value in saved.items():
        assert torch.equal(state[key], value), key


def old_run_config(run: str, tmp_path: Path) -> Path:
    """The old run's ``config.yaml`` with its data folder and run directory moved into ``tmp_path``."""
    config = yaml.safe_load((FIXTURES / run / "config.yaml").read_text())
    config["data"]["init_args"]["data_dir"] = str(write_fashion_mnist(tmp_path / "fashion-mnist"))
    config["trainer"]["default_root_dir"] = str(tmp_path / "run")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_an_old_runs_config_and_checkpoint_validate_through_wkd(tmp_path: Path) -> None:
    config = old_run_config("vanilla", tmp_path)
    done = run_ok(
        ["wkd", "validate", "-c", str(config), "--ckpt_path", str(FIXTURES / "vanilla" / "last.ckpt"), *QUIET],
        tmp_path / "validate.log",
    )
    assert "val/top1" in done.output


def test_an_old_online_self_kd_run_resumes_through_wkd_fit(tmp_path: Path) -> None:
    """The EMA teacher's state (saved under ``online_teacher.``) and the old recipe resume one more epoch."""
    config = old_run_config("self_kd_online", tmp_path)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURES / "self_kd_online" / "last.ckpt", tmp_path / "run" / "checkpoints" / "last.ckpt")
    shutil.copy(config, tmp_path / "run" / "config.yaml")
    run_ok(
        ["wkd", "fit", "-c", str(config), "--ckpt_path", "last", "--trainer.max_epochs", "2", *QUIET],
        tmp_path / "fit.log",
    )
    resumed = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 1
    assert any(key.startswith("online_teacher.") for key in resumed["state_dict"])
