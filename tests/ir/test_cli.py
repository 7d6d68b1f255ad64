"""``wkd-ir`` end to end: a tiny teacher checkpoint and a tiny Fashion-MNIST in the real IDX format."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml

from wkd_lightning.commands.ir import main
from wkd_lightning.data.fashion_mnist import CLASS_NAMES
from wkd_lightning.losses import load_cost, sharpen_cost
from wkd_lightning.models import mini_resnet14

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def setup(tmp_path: Path, fashion_dir: Path) -> dict[str, str]:
    data_dir = fashion_dir  # 8 training images per class (tests/conftest.py)
    torch.manual_seed(0)
    weights = tmp_path / "teacher.pt"
    torch.save(mini_resnet14().state_dict(), weights)
    return {"data_dir": str(data_dir), "weights": str(weights), "out": str(tmp_path / "ir")}


def _args(setup, *extra):
    return [
        "--teacher", "wkd_lightning.models.mini_resnet14",
        "--teacher_weights", setup["weights"],
        "--data", "wkd_lightning.data.FashionMNISTDataModule",
        "--data.data_dir", setup["data_dir"],
        "--data.batch_size", "16",
        "--data.num_workers", "0",
        "--output_dir", setup["out"],
        "--progress", "false",
        *extra,
    ]  # fmt: skip


def test_writes_loadable_cost_files_and_heatmaps_from_a_yaml_config(setup, tmp_path, capsys):
    config = {
        "teacher": {"class_path": "wkd_lightning.models.mini_resnet14", "init_args": {"num_classes": 10}},
        "teacher_weights": setup["weights"],
        "data": {
            "class_path": "wkd_lightning.data.FashionMNISTDataModule",
            "init_args": {"data_dir": setup["data_dir"], "batch_size": 16, "num_workers": 0},
        },
        "layer": "pool",
        "methods": ["cka_paired", "cov_align", "class_mean_cosine", "uniform", "classifier_cosine"],
        "output_dir": setup["out"],
        "progress": False,
    }
    path = tmp_path / "ir.yaml"
    path.write_text(yaml.safe_dump(config))
    with warnings.catch_warnings():  # features come from the un-augmented training images
        warnings.filterwarnings("error", message=".*offers no evaluation transform")
        results = main(["-c", str(path)])
    printed = capsys.readouterr().out
    for method in config["methods"]:
        pt, png = Path(setup["out"]) / f"{method}.pt", Path(setup["out"]) / f"{method}.png"
        assert png.read_bytes()[:8] == PNG
        record = torch.load(pt, weights_only=True)
        cost = record["cost"]
        assert cost.shape == (10, 10) and cost.dtype == torch.float32
        assert torch.equal(cost, cost.T) and torch.equal(cost.diagonal(), torch.zeros(10))
        assert record["method"] == method and record["kappa_applied"] is False
        assert record["teacher"] == "wkd_lightning.models.mini_resnet14"
        assert record["teacher_weights"] == setup["weights"]
        assert record["dataset"] == "wkd_lightning.data.FashionMNISTDataModule"
        assert record["class_names"] == list(CLASS_NAMES)
        assert record["layer"] == ("fc" if method == "classifier_cosine" else "pool")
        assert record["samples_per_class"] == [8] * 10
        score = record["semantic_score"]
        assert record["groups"] == "fashion_mnist" and 0 <= score["score"] <= 1
        assert score["chance"] == pytest.approx((4 * 3 / 9 + 3 * 2 / 9) / 7)
        assert score["score"] == pytest.approx(results[method]["score"].score)
        torch.testing.assert_close(load_cost(pt, kappa=1.0), sharpen_cost(cost, 1.0))
        assert f"{method}: semantic score" in printed and "chance 0.286" in printed


def test_logits_layer_with_a_cap_per_class(setup):
    results = main(_args(setup, "--methods", "[cka_paired, cov_align]", "--max_per_class", "3"))
    record = torch.load(results["cov_align"]["pt"], weights_only=True)
    assert record["layer"] == "logits" and record["samples_per_class"] == [3] * 10 and record["max_per_class"] == 3
    assert set(results) == {"cka_paired", "cov_align"}


def test_command_errors(setup, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(_args(setup, "--teacher_weights", str(tmp_path / "missing.ckpt")))
    with pytest.raises(SystemExit):
        main(_args(setup, "--methods", "[cka]"))
    with pytest.raises(ValueError, match="no module at path 'layer9'"):
        main(_args(setup, "--layer", "layer9"))


def test_groups_option(tmp_path):
    from wkd_lightning.commands.ir import _groups

    names = list(CLASS_NAMES)
    assert _groups("none", names) is None
    assert _groups("auto", names)[0] == "fashion_mnist"
    assert _groups("fashion_mnist", names)[0] == "fashion_mnist"
    assert _groups("auto", ["a", "b"]) is None
    path = tmp_path / "mine.json"
    path.write_text('{"bottoms": ["Trouser", "Dress"]}')
    name, labels = _groups(str(path), names)
    assert name == "mine" and labels[1] == labels[3] and len(set(labels)) == 9
    with pytest.raises(FileNotFoundError, match="not 'auto', 'none'"):
        _groups(str(tmp_path / "nope.json"), names)
