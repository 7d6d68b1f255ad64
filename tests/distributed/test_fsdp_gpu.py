"""FSDP with the teacher sharded apart from the student (:class:`wkd_lightning.run.distributed.TeacherShardedFSDP`).

GPU only: FSDP needs CUDA (NCCL). Skipped on the CPU development machines; run on a GPU machine with
``python -m pytest tests/distributed/test_fsdp_gpu.py``.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.commands.test_cli import ROOT
from tests.distributed.launch import QUIET, run_ok
from tests.distributed.test_ddp_cli import config_with

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP needs a GPU (CUDA); none here"),
    pytest.mark.timeout(600),
    pytest.mark.xdist_group("multiprocess"),  # one at a time: each starts several processes (scripts/test.sh)
]


def test_wkd_fit_with_a_sharded_teacher_saves_no_teacher(tmp_path, fashion_dir):
    config = config_with(tmp_path, fashion_dir, ROOT / "configs/fashion_mnist/wkd_lf.yaml", batch_size=8)
    run_dir = tmp_path / "run"
    run_ok(
        [
            "wkd",
            "fit",
            "-c",
            str(config),
            f"--trainer.default_root_dir={run_dir}",
            *QUIET,
            "--trainer.max_epochs=1",
            "--trainer.accelerator=gpu",
            f"--trainer.devices={torch.cuda.device_count()}",
            "--trainer.strategy=wkd_lightning.run.distributed.TeacherShardedFSDP",
            "--trainer.strategy.teacher_min_params=5000",
            "--trainer.callbacks+=tests.distributed.support.AssertTeacherSharded",
        ],
        tmp_path / "fit.log",
    )
    assert json.loads((run_dir / "summary.json").read_text())["complete"]
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state and not [key for key in state if "teacher" in key]
