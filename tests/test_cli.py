"""The `wkd` command: every shipped config instantiates, a real Fashion-MNIST fit runs end to end, errors are clear."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from wkd_lightning.cli import make_cli
from wkd_lightning.data.fashion_mnist import DEFAULT_DIR
from wkd_lightning.models import mini_resnet14

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))
EXPERIMENT_CONFIGS = [c for c in EXPERIMENT_CONFIGS if "model" in yaml.safe_load(c.read_text())]  # `wkd fit` configs
TEACHER_FILE = "runs/fashion_mnist/teacher/checkpoints/best.ckpt"
COST_FILE = "runs/fashion_mnist/ir/class_mean_cosine.pt"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def localised_config(config: Path, tmp_path: Path, data_dir: Path) -> Path:
    """A copy of ``config`` whose input files (teacher weights, cost matrix, data) point into ``tmp_path``."""
    text = config.read_text()
    teacher, cost = tmp_path / "teacher.pt", tmp_path / "cost.pt"
    if not teacher.exists():
        torch.save(mini_resnet14().state_dict(), teacher)
        cost_matrix = 1 - torch.eye(10)
        torch.save({"cost": cost_matrix, "method": "uniform", "kappa_applied": False}, cost)
    text = text.replace(TEACHER_FILE, str(teacher)).replace(COST_FILE, str(cost))
    data = yaml.safe_load(text)
    if data.get("data", {}).get("class_path", "").endswith("FashionMNISTDataModule"):
        data["data"]["init_args"].update(data_dir=str(data_dir), num_workers=0, train_size=None)
    data["trainer"]["default_root_dir"] = str(tmp_path / "runs" / config.stem)
    path = tmp_path / f"{config.parent.name}_{config.name}"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_config_instantiates_and_runs_one_step(config, tmp_path, fashion_dir):
    path = localised_config(config, tmp_path, fashion_dir)
    make_cli(["fit", "-c", str(path), "--trainer.fast_dev_run=true", *QUIET])


def test_configs_point_at_the_files_the_quickstart_writes():
    """The distillation configs read the teacher and cost files at the paths the README's main job writes."""
    for config in EXPERIMENT_CONFIGS:
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
