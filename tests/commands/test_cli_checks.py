"""What ``wkd fit`` reports, and the inputs it refuses, as a user types the commands (a subprocess of ``wkd``).

Reports: every loss term as an epoch mean, weighted and unweighted, with its weight; the learning rate every epoch; the
teacher's own validation accuracy, measured once per teacher file and read from its cache afterwards. Refusals: WKD-L
costs that are no distances or were made for other classes, WKD-F grids of single-pixel cells, NaN input pixels
(named as such, not as a diverged student); a custom data module over a plain ``TensorDataset`` trains.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

from tests.commands.test_cli_runs import assert_one_message
from tests.distributed.launch import QUIET, run, run_ok
from wkd_lightning.data import ClassificationDataModule
from wkd_lightning.data.fashion_mnist import CLASS_NAMES
from wkd_lightning.models import mini_resnet14

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs/fashion_mnist"
SMALL = ["--data.num_workers=0", "--data.batch_size=16", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
         "--trainer.limit_val_batches=1", *QUIET]  # fmt: skip


class TensorData(ClassificationDataModule):
    """A custom data module as a user writes one: plain ``TensorDataset`` s of random 28×28 images, 10 classes.

    Args:
        batch_size: images per batch.
        nan_sample: give this training sample a NaN pixel.
        return_index: training batches carry their samples' indices.
    """

    num_classes = 10
    input_size = (1, 28, 28)

    def __init__(self, batch_size: int = 8, nan_sample: int | None = None, return_index: bool = False) -> None:
        super().__init__(batch_size=batch_size, num_workers=0, seed=0, pin_memory=False, return_index=return_index)
        self.nan_sample = nan_sample

    def setup(self, stage: str | None = None) -> None:
        x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        y = torch.arange(32) % 10
        if self.nan_sample is not None:
            x[self.nan_sample, 0, 3, 4] = float("nan")
        self.train_set = TensorDataset(x, y)
        self.val_set = self.test_set = TensorDataset(x[:16], y[:16])


def config_with(tmp_path: Path, name: str, loss_args: dict | None = None, data: dict | None = None) -> Path:
    """``configs/fashion_mnist/<name>.yaml`` with the init args of its (one kind of) loss updated, and another data
    section if given, written to ``tmp_path`` (the loss is found by its class, in a list or a keyed mapping)."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    losses = config["model"].get("losses") or []
    for loss in losses.values() if isinstance(losses, dict) else losses:
        loss.setdefault("init_args", {}).update(loss_args or {})
    if data is not None:
        config["data"] = data
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def teacher_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    torch.save(mini_resnet14().state_dict(), path)
    return path


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]


def test_fit_logs_terms_weights_lr_and_the_teachers_accuracy_measured_once(tmp_path, fashion_dir):
    teacher = teacher_file(tmp_path)
    args = ["wkd", "fit", "-c", str(CONFIGS / "kd.yaml"), f"--data.data_dir={fashion_dir}", "--data.train_size=null",
            f"--model.teacher_weights={teacher}", *SMALL]  # fmt: skip
    first = run_ok([*args, f"--trainer.default_root_dir={tmp_path / 'first'}"], tmp_path / "first.log")
    cache = Path(f"{teacher}.val_accuracy.json")
    assert "teacher SmallResNet: val top-1 " in first.output
    assert f"(16 images; measured now, cached in {cache})" in first.output, first.output[-3000:]
    assert cache.is_file()

    rows = metrics(tmp_path / "first")
    (epoch,) = [row for row in rows if "train/loss" in row]
    weight, kl, kl_raw = (float(epoch[k]) for k in ("train/weight/kd", "train/loss/kd/kl", "train/loss/kd/kl_raw"))
    assert weight == pytest.approx(0.9) and kl == pytest.approx(weight * kl_raw, rel=1e-5)
    assert float(epoch["train/loss"]) == pytest.approx(float(epoch["train/loss/ce"]) + kl, rel=1e-5)
    assert float(epoch["train/loss/ce_raw"]) == float(epoch["train/loss/ce"]) and epoch["train/weight/ce"] == "1.0"
    assert 0 <= float(epoch["teacher/val_top1"]) <= float(epoch["teacher/val_top5"]) <= 1
    assert [row["lr-PaperSGD"] for row in rows if "lr-PaperSGD" in row] == ["0.05"]  # once per epoch

    second = run_ok([*args, f"--trainer.default_root_dir={tmp_path / 'second'}"], tmp_path / "second.log")
    assert f"(16 images; from the cache {cache})" in second.output and "measured now" not in second.output
    (again,) = [row for row in metrics(tmp_path / "second") if "train/loss" in row]
    assert again["teacher/val_top1"] == epoch["teacher/val_top1"]


def test_a_custom_data_module_over_a_tensor_dataset_trains_and_nan_pixels_are_named(tmp_path):
    data = {"class_path": "tests.commands.test_cli_checks.TensorData", "init_args": {"batch_size": 32}}
    config = config_with(tmp_path, "vanilla", data=data)
    args = ["wkd", "fit", "-c", str(config), *SMALL[2:]]
    finished = run_ok([*args, f"--trainer.default_root_dir={tmp_path / 'run'}"], tmp_path / "fit.log")
    assert "IndexError" not in finished.output and "teacher " not in finished.output  # teacher-free: nothing measured

    nan = [*args, f"--trainer.default_root_dir={tmp_path / 'nan'}", "--data.init_args.nan_sample=13",
           "--data.init_args.return_index=true"]  # fmt: skip
    failed = run(nan, tmp_path / "nan.log")
    assert failed.returncode == 1
    assert_one_message(failed.output, "input batch contains NaN/inf pixels at epoch 1, step 0 (1 sample(s): sample "
                       "indices [13] of the training set)")  # fmt: skip
    assert "diverged" not in failed.output


@pytest.mark.parametrize(
    ("cost", "message"),
    [
        ("negative", "cost has negative entries (the smallest is D[0, 1] = -0.5)"),
        ("similarity", "cost looks like a similarity matrix, not a cost: its diagonal is not 0 (up to 1.1)"),
        ("other classes", "was computed for the same classes in another order than the data module "
         "FashionMNISTDataModule (10 vs 10 names; first difference at class 0: 'Trouser' vs 'T-shirt/top')"),
    ],
)  # fmt: skip
def test_wkd_l_costs_that_are_no_distances_or_for_other_classes_are_refused(tmp_path, fashion_dir, cost, message):
    distance = 1 - torch.eye(10)
    matrix = {"negative": distance - 1.5 * (torch.arange(100).view(10, 10) == 1), "similarity": torch.eye(10) + 0.1,
              "other classes": distance}[cost]  # fmt: skip
    names = [*CLASS_NAMES[1:], CLASS_NAMES[0]] if cost == "other classes" else list(CLASS_NAMES)
    path = tmp_path / "cost.pt"
    torch.save({"cost": matrix, "class_names": names, "kappa_applied": False}, path)
    config = config_with(tmp_path, "wkd_l", {"cost": str(path)})
    args = ["wkd", "fit", "-c", str(config), f"--data.data_dir={fashion_dir}", "--data.train_size=null",
            f"--model.teacher_weights="
            f"{teacher_file(tmp_path)}", f"--trainer.default_root_dir={tmp_path / 'run'}", *SMALL]  # fmt: skip
    failed = run(args, tmp_path / "fit.log")
    assert failed.returncode == 1
    if cost == "other classes":  # at set-up, against the data module
        assert_one_message(failed.output, f"wkd_l: the WKD-L cost file {str(path)!r} {message}")
    else:  # when the loss is built, inside jsonargparse: its error names the types it tried, ours is its cause
        assert_one_message(failed.output, f"WKD-L cost file {str(path)!r}: {message}")
        assert "Union subtypes" not in failed.output


def test_a_wkd_f_grid_of_single_pixel_cells_is_refused(tmp_path, fashion_dir):
    config = config_with(tmp_path, "wkd_f", {"grid": 7})
    args = ["wkd", "fit", "-c", str(config), f"--data.data_dir={fashion_dir}", "--data.train_size=null",
            f"--model.teacher_weights="
            f"{teacher_file(tmp_path)}", f"--trainer.default_root_dir={tmp_path / 'run'}", *SMALL]  # fmt: skip
    failed = run(args, tmp_path / "fit.log")
    assert failed.returncode == 1
    assert_one_message(failed.output, "WKDFeature (teacher_path 'layer3'): grid=7 splits the teacher feature maps of "
                       "shape C×H×W = (64, 7, 7) (7×7 positions) into cells of a single pixel, whose std term is "
                       "exactly 0 (no spatial variance): use grid <= 6")  # fmt: skip


def test_a_truncated_fashion_mnist_file_is_named(tmp_path, fashion_dir):
    images = fashion_dir / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:200])
    args = ["wkd", "fit", "-c", str(CONFIGS / "vanilla.yaml"), f"--data.data_dir={fashion_dir}",
            f"--trainer.default_root_dir={tmp_path / 'run'}", *SMALL]  # fmt: skip
    failed = run(args, tmp_path / "fit.log")
    assert failed.returncode == 1
    assert_one_message(failed.output, f"Fashion-MNIST file '{images}' is truncated or corrupt (EOFError: ")
    assert "apt-get install --reinstall dataset-fashion-mnist" in failed.output


def test_a_missing_imagenet_teacher_is_advised_as_a_released_file(tmp_path, imagenet_dir):
    missing = tmp_path / "weights/resnet34-b627a593.pth"
    config = ROOT / "configs/imagenet/kd/resnet34_resnet18.yaml"
    args = ["wkd", "fit", "-c", str(config), f"--data.data_dir={imagenet_dir}", f"--model.teacher_weights={missing}",
            f"--trainer.default_root_dir={tmp_path / 'run'}", *SMALL]  # fmt: skip
    failed = run(args, tmp_path / "fit.log")
    assert failed.returncode == 1
    assert_one_message(failed.output, f"teacher weights file '{missing}' does not exist. ImageNet teachers (ResNet) "
                       "are released pretrained weights, not trained here")  # fmt: skip
    assert "https://download.pytorch.org/models/resnet34-b627a593.pth" in failed.output
    assert "fashion_mnist" not in failed.output
