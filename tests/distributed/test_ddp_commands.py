"""``wkd-ban``, ``wkd-det`` and ``wkd-ir`` with several processes, as shipped (subprocesses, every CLI callback).

Each runs under the time limit of :mod:`tests.distributed.launch` (a hang fails, it does not block the suite).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

from tests.commands.test_cli import ROOT
from tests.distributed.launch import QUIET, run_ok
from tests.distributed.test_ddp_cli import ddp, evaluation_metrics, last_row

pytestmark = [
    pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed"),
    pytest.mark.timeout(600),
    pytest.mark.xdist_group("multiprocess"),  # one at a time: each starts several processes (scripts/test.sh)
    pytest.mark.slow,
]


def test_wkd_ban_generations_with_ddp(tmp_path, fashion_dir):
    """Every rank runs the generations driver; rank 0 alone reports, and generation 1 distils from generation 0."""
    run_dir = tmp_path / "ban"
    args = [
        "wkd-ban",
        "-c",
        str(ROOT / "configs/fashion_mnist/ban_kd.yaml"),
        "--generations",
        "2",
        "--run_dir",
        str(run_dir),
        "--trainer.max_epochs=1",
        f"--data.data_dir={fashion_dir}",
        "--data.train_size=null",
        "--data.num_workers=0",
        "--data.batch_size=8",
        *QUIET,
        *ddp(2),
    ]
    finished = run_ok(args, tmp_path / "ban.log")
    assert finished.output.count("| generation | teacher |") == 1  # the table, printed by rank 0 only
    rows = json.loads((run_dir / "generations.json").read_text())
    assert [row["generation"] for row in rows] == [0, 1]
    assert rows[1]["teacher_weights"].startswith(str(run_dir / "gen0" / "checkpoints"))
    for gen in ("gen0", "gen1"):
        assert json.loads((run_dir / gen / "summary.json").read_text())["complete"]
    again = run_ok(args, tmp_path / "ban-again.log")  # re-run: both complete, nothing trained
    assert again.output.count("is complete, skipped") == 2


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    from tests.detection.fixtures import write_coco_fixture

    return write_coco_fixture(tmp_path_factory.mktemp("coco"))


def test_wkd_det_fit_resume_and_validate_with_ddp(tmp_path, coco_root):
    """Box mAP over both ranks' images equals one process's; the detection run resumes under DDP."""
    from tests.detection.test_detection import localised_coco_config

    config = localised_coco_config(ROOT / "configs/coco/wkd_lf/r101_r18.yaml", tmp_path, coco_root)
    run_dir = tmp_path / "run"
    fit = ["wkd-det", "fit", "-c", str(config), *QUIET, "--trainer.limit_train_batches=2", *ddp(2)]
    run_ok([*fit, "--trainer.max_epochs=1"], tmp_path / "fit.log")
    run_ok([*fit, "--trainer.max_epochs=2", "--ckpt_path=last"], tmp_path / "resume.log")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["metric"] == "val/map" and summary["complete"] and summary["epochs"] == 2
    values = []
    for name, extra in (("ddp", ddp(2)), ("single", [])):
        out = tmp_path / f"validate-{name}"
        run_ok(
            [
                "wkd-det",
                "validate",
                "-c",
                str(config),
                f"--trainer.default_root_dir={out}",
                *QUIET,
                f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                *extra,
            ],
            tmp_path / f"validate-{name}.log",
        )
        values.append(last_row(evaluation_metrics(out, "validate"), "val/map"))
    assert values[0] == pytest.approx(values[1], abs=1e-6)


def test_wkd_ir_under_torchrun_writes_whole_files(tmp_path, fashion_dir):
    """Under a launcher rank 0 builds the matrices and the other ranks exit (they would find its files there)."""
    from wkd_lightning.models import mini_resnet14

    teacher = tmp_path / "teacher.pt"
    torch.save(mini_resnet14().state_dict(), teacher)
    config = yaml.safe_load((ROOT / "configs/fashion_mnist/ir.yaml").read_text())
    config.update(teacher_weights=str(teacher), output_dir=str(tmp_path / "ir"), progress=False)
    config["data"]["init_args"].update(data_dir=str(fashion_dir), num_workers=0)
    path = tmp_path / "ir.yaml"
    path.write_text(yaml.safe_dump(config))
    wkd_ir = str(Path(sys.executable).parent / "wkd-ir")
    finished = run_ok(["torchrun", "--standalone", "--nproc-per-node=2", wkd_ir, "-c", str(path)], tmp_path / "ir.log")
    assert "rank 1 of 2 has nothing to do" in finished.output
    for method in config["methods"]:
        record = torch.load(tmp_path / "ir" / f"{method}.pt", weights_only=True)
        assert record["cost"].shape == (10, 10)
        assert (tmp_path / "ir" / f"{method}.png").stat().st_size > 0
    assert not list((tmp_path / "ir").glob(".*tmp*"))
