"""The `wkd` command: every shipped config instantiates, a real Fashion-MNIST fit runs end to end, errors are clear."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from wkd_lightning.commands.wkd import make_cli
from wkd_lightning.data.fashion_mnist import DEFAULT_DIR
from wkd_lightning.losses.base import keyed_loss_configs

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"
EXPERIMENT_CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
# `wkd fit` configs; the detection configs (`wkd-det`) are run by tests/detection/test_detection.py.
EXPERIMENT_CONFIGS = [
    c for c in EXPERIMENT_CONFIGS if "model" in yaml.safe_load(c.read_text()) and CONFIG_DIR / "coco" not in c.parents
]
QUICKSTART_CONFIGS = [c for c in EXPERIMENT_CONFIGS if c.parent == CONFIG_DIR / "fashion_mnist"]
TEACHER_FILE = "runs/fashion_mnist/teacher/checkpoints/best.ckpt"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
#: The data module of a config → the fixture (tests/conftest.py) that writes a tiny copy of its data set on disk.
DATA_FIXTURES = {
    "FashionMNISTDataModule": "fashion_dir",
    "CIFAR100DataModule": "cifar100_dir",
    "ImageNetDataModule": "imagenet_dir",
}
#: Per data module: options that make one CPU step on the fixture fast (the paper configs' batch 64/256 and 4/8
#: workers would be slow or larger than the fixture; ImageNet keeps its 224×224 crops, at batch 2).
FAST_DATA = {
    "FashionMNISTDataModule": {"num_workers": 0, "train_size": None},
    "CIFAR100DataModule": {"num_workers": 0, "batch_size": 4},
    "ImageNetDataModule": {"num_workers": 0, "batch_size": 2},
}


def config_id(config: Path) -> str:
    """``cifar100/wkd_l/resnet32x4_resnet8x4`` for ``configs/cifar100/wkd_l/resnet32x4_resnet8x4.yaml``."""
    return config.relative_to(CONFIG_DIR).with_suffix("").as_posix()


def data_module_name(config: Path) -> str:
    """The class name of the config's data module (``CIFAR100DataModule``), or ``""`` when it sets none."""
    data = yaml.safe_load(config.read_text()).get("data") or {}
    return data.get("class_path", "").rpartition(".")[2] if isinstance(data, dict) else ""


def _build(spec: dict) -> torch.nn.Module:
    """The network of a ``{"class_path": ..., "init_args": {...}}`` entry, built as the CLI builds it."""
    module_name, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module_name), name)(**(spec.get("init_args") or {}))


def localised_config(config: Path, tmp_path: Path, data_dir: Path) -> Path:
    """A copy of ``config`` whose input files (teacher weights, cost matrix, data) point into ``tmp_path``, made fast.

    * data: ``data_dir`` (a fixture's tiny data set in the real on-disk format) with the :data:`FAST_DATA` options;
      ImageNet configs also get the fixture's class count, in the data module, the module (where the config sets
      ``model.num_classes``) and the student's and teacher's ``num_classes``;
    * ``model.teacher_weights``: the state dict of the config's teacher architecture (random weights);
    * a WKD-L ``cost`` file: a C×C stand-in (1 off the diagonal) for the data's C classes;
    * ``trainer.precision``: 32-bit (the paper configs ask for bf16 mixed precision, meant for GPUs);
    * ``trainer.default_root_dir``: under ``tmp_path``.
    """
    data = yaml.safe_load(config.read_text())
    model, datamodule = data["model"], data.get("data") or {}
    kind = datamodule.get("class_path", "").rpartition(".")[2]
    init_args = datamodule.setdefault("init_args", {}) if kind else {}
    if kind:
        init_args.update(data_dir=str(data_dir), **FAST_DATA.get(kind, {}))
    num_classes = None
    if kind == "ImageNetDataModule":  # the fixture's few class folders: data and networks must use as many classes
        num_classes = init_args["num_classes"] = sum(1 for d in (data_dir / "train").iterdir() if d.is_dir())
        for role in ("student", "teacher"):
            if isinstance(model.get(role), dict):
                model[role].setdefault("init_args", {})["num_classes"] = num_classes
        if "num_classes" in model:
            model["num_classes"] = num_classes
    elif kind:
        num_classes = getattr(importlib.import_module("wkd_lightning.data"), kind).num_classes
    if isinstance(model.get("teacher"), dict) and model.get("teacher_weights"):
        teacher = tmp_path / "teacher.pt"
        if not teacher.exists():
            torch.save(_build(model["teacher"]).state_dict(), teacher)
        model["teacher_weights"] = str(teacher)
    for loss in keyed_loss_configs(model.get("losses")).values():
        loss_args = loss.get("init_args") or {}
        if isinstance(loss_args.get("cost"), str) and loss_args["cost"] != "uniform":
            cost = tmp_path / "cost.pt"
            if not cost.exists():
                torch.save({"cost": 1 - torch.eye(num_classes), "method": "uniform", "kappa_applied": False}, cost)
            loss_args["cost"] = str(cost)
    if "precision" in data["trainer"]:
        data["trainer"]["precision"] = "32-true"
    data["trainer"]["default_root_dir"] = str(tmp_path / "runs" / config.stem)
    path = tmp_path / f"{config.parent.name}_{config.name}"
    path.write_text(yaml.safe_dump(data))
    return path


def config_case(config: Path):
    """A test case per config; the ImageNet ones (224×224 inputs, ResNet-50 teachers: ~1.5 s each on an idle CPU,
    8-19 s on two busy cores) are marked slow, so they can be deselected with ``-m "not slow"``."""
    slow = data_module_name(config) == "ImageNetDataModule"
    return pytest.param(config, id=config_id(config), marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("config", [config_case(c) for c in EXPERIMENT_CONFIGS])
def test_every_config_instantiates_and_runs_one_step(config, tmp_path, request):
    """Every ``wkd fit`` config under configs/ (recursively) builds and runs one training and one validation step on
    its data module's fixture, with random teacher weights and a stand-in cost file."""
    kind = data_module_name(config)
    assert kind in DATA_FIXTURES, f"{config_id(config)}: no test fixture for data module {kind!r}; add one."
    path = localised_config(config, tmp_path, request.getfixturevalue(DATA_FIXTURES[kind]))
    make_cli(["fit", "-c", str(path), "--trainer.fast_dev_run=true", *QUIET])


def test_configs_point_at_the_files_the_quickstart_writes():
    """The Fashion-MNIST distillation configs read the teacher and cost files at the paths the README's main job
    writes (the paper configs' files are checked by tests/test_paper_configs.py)."""
    for config in QUICKSTART_CONFIGS:
        model = yaml.safe_load(config.read_text())["model"]
        if model.get("teacher"):
            assert model["teacher_weights"] == TEACHER_FILE, config


def test_teacher_without_weights_is_refused(tmp_path, fashion_dir):
    path = localised_config(ROOT / "configs/fashion_mnist/kd.yaml", tmp_path, fashion_dir)
    with pytest.raises(ValueError, match="never used with random weights"):
        make_cli(["fit", "-c", str(path), "--model.teacher_weights=null", "--trainer.fast_dev_run=true"])


def test_missing_teacher_file_is_an_error(tmp_path, fashion_dir):
    path = localised_config(ROOT / "configs/fashion_mnist/kd.yaml", tmp_path, fashion_dir)
    with pytest.raises(FileNotFoundError, match=r"does not exist\. Train a teacher first"):
        make_cli(
            ["fit", "-c", str(path), f"--model.teacher_weights={tmp_path}/none.ckpt", "--trainer.fast_dev_run=true"]
        )


def test_unknown_config_key_is_an_error(tmp_path, fashion_dir, capsys):
    path = localised_config(ROOT / "configs/fashion_mnist/vanilla.yaml", tmp_path, fashion_dir)
    with pytest.raises(SystemExit):
        make_cli(["fit", "-c", str(path), "--model.no_such_option=1"])
    assert "no_such_option" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not Path(DEFAULT_DIR).is_dir(), reason="real Fashion-MNIST not installed (scripts/install.sh does)")
def test_real_fashion_mnist_teacher_then_kd_then_resume(tmp_path):
    """Train a (tiny-budget) teacher on real Fashion-MNIST, distil a student from its checkpoint, resume the student."""
    small = ["--data.train_size=3000", "--data.num_workers=0", "--trainer.limit_val_batches=10", *QUIET]
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "kd"
    make_cli(["fit", "-c", str(ROOT / "configs/fashion_mnist/teacher.yaml"), "--trainer.max_epochs=1",
              f"--trainer.default_root_dir={teacher_dir}", *small])  # fmt: skip
    teacher_summary = json.loads((teacher_dir / "summary.json").read_text())
    # 24 steps of a real teacher: far from trained, but clearly above chance (0.10; its std over 1,280 images ≈ 0.008)
    assert teacher_summary["complete"] and teacher_summary["best_val_top1"] > 0.15

    kd = ["fit", "-c", str(ROOT / "configs/fashion_mnist/kd.yaml"), f"--trainer.default_root_dir={student_dir}",
          f"--model.teacher_weights={teacher_dir}/checkpoints/best.ckpt", *small]  # fmt: skip
    make_cli([*kd, "--trainer.max_epochs=1"])
    first = json.loads((student_dir / "summary.json").read_text())
    assert first["epochs"] == 1 and first["losses"] == ["KD"]
    checkpoint = torch.load(student_dir / "checkpoints/last.ckpt", weights_only=True)
    assert not [k for k in checkpoint["state_dict"] if k.startswith("teacher.")]

    make_cli([*kd, "--trainer.max_epochs=2", "--ckpt_path=last"])  # resume in the same run directory
    second = json.loads((student_dir / "summary.json").read_text())
    assert second["complete"] and second["epochs"] == 2
    assert torch.load(student_dir / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 1
    assert os.path.isfile(student_dir / "checkpoints/best.ckpt")


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_wandb_configs_work_without_network(mode, tmp_path, fashion_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # W&B offline files go to ./runs/wandb
    monkeypatch.setenv("WANDB_SILENT", "true")
    path = localised_config(ROOT / "configs/fashion_mnist/vanilla.yaml", tmp_path, fashion_dir)
    run_dir = tmp_path / "runs" / "vanilla"
    make_cli(["fit", "-c", str(path), "-c", str(ROOT / f"configs/logging/wandb_{mode}.yaml"), "--trainer.max_epochs=1",
              "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", *QUIET])  # fmt: skip
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    offline_runs = list((tmp_path / "runs" / "wandb").glob("wandb/offline-run-*"))
    assert len(offline_runs) == (1 if mode == "offline" else 0)


def test_wandb_online_without_network_suggests_offline_mode(tmp_path, fashion_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    path = localised_config(ROOT / "configs/fashion_mnist/vanilla.yaml", tmp_path, fashion_dir)
    with pytest.raises(ConnectionError, match=r"cannot be reached.*configs/logging/wandb_offline\.yaml"):
        make_cli(["fit", "-c", str(path), "-c", str(ROOT / "configs/logging/wandb_online.yaml"), *QUIET])
    assert not (tmp_path / "runs" / "vanilla" / "checkpoints").exists()  # stopped before anything was written
