"""A fit interrupted after epoch k and resumed with ``--ckpt_path last`` ends exactly where the uninterrupted fit does.

Same seed, deterministic CPU settings: student weights, optimizer state, LR schedule, loss-weight schedule and
validation metrics must all match. This holds because the data order and augmentation are functions of
(seed, epoch, index) (``wkd_lightning.data.sampling``) and the teacher is reloaded from its file.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
import yaml

from tests.commands.test_cli import QUIET, ROOT, localised_config
from wkd_lightning.commands.wkd import make_cli


def epoch_rows(run_dir: Path) -> dict[str, dict[str, str]]:
    """The epoch-level rows of ``metrics.csv`` (validation metrics and epoch means), keyed by epoch."""
    rows: dict[str, dict[str, str]] = {}
    with open(run_dir / "metrics.csv", newline="") as file:
        for row in csv.DictReader(file):
            if row.get("val/top1") or row.get("train/top1"):
                rows.setdefault(row["epoch"], {}).update({k: v for k, v in row.items() if v and k != "step"})
    return rows


def test_interrupted_then_resumed_fit_equals_uninterrupted_fit(tmp_path, fashion_dir):
    path = localised_config(ROOT / "configs/fashion_mnist/wkd_lf.yaml", tmp_path, fashion_dir)
    config = yaml.safe_load(path.read_text())
    for loss in config["model"]["losses"].values():  # the weight decays from epoch 2 on: a wrong schedule epoch shows
        loss["init_args"]["schedule"]["init_args"]["start_epoch"] = 1
    config["model"]["lr_scheduler"]["init_args"]["T_max"] = 3
    config["data"]["init_args"].update(batch_size=16, num_workers=1)  # a worker process, as in real runs
    path.write_text(yaml.safe_dump(config))

    def fit(run_dir: Path, *extra: str) -> None:
        make_cli(["fit", "-c", str(path), f"--trainer.default_root_dir={run_dir}", *QUIET, *extra])

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    fit(whole, "--trainer.max_epochs=3")
    fit(resumed, "--trainer.max_epochs=1")
    fit(resumed, "--trainer.max_epochs=3", "--ckpt_path=last")

    a = torch.load(whole / "checkpoints/last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 15
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    for state_a, state_b in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(state_b["momentum_buffer"], state_a["momentum_buffer"], rtol=0, atol=0)

    rows_a, rows_b = epoch_rows(whole), epoch_rows(resumed)
    assert set(rows_a) == set(rows_b) == {"0", "1", "2"}
    for epoch in rows_a:  # includes the epoch means of every loss term, so the weight schedule is checked per epoch
        assert rows_a[epoch] == rows_b[epoch], epoch
