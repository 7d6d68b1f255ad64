"""Multi-process training through the shipped ``wkd`` command (subprocesses, every callback the CLI installs), on the
CPU with gloo: fit, checkpoints, summary, resume, validate and test with 2 and 3 (an uneven split) processes; the same
student as one process; Ctrl-C and SIGTERM; a hung rank; ``ddp_spawn``; two "nodes" with torchrun.

Every command runs under a time limit (:mod:`tests.distributed.launch`) that kills its whole process group and fails,
so a hang fails the test instead of the suite; the negative control shows the limit catches the hang of the old
summary callback.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

from tests.commands.test_cli import ROOT, localised_config
from tests.distributed.launch import QUIET, CommandTimeout, run, run_ok, start, wait_all, wait_for

pytestmark = [
    pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed"),
    pytest.mark.timeout(600),
    pytest.mark.xdist_group("multiprocess"),  # one at a time: each starts several processes (scripts/test.sh)
]
VANILLA = ROOT / "configs/fashion_mnist/vanilla.yaml"


def ddp(devices: int, strategy: str = "ddp") -> list[str]:
    return ["--trainer.accelerator=cpu", f"--trainer.strategy={strategy}", f"--trainer.devices={devices}"]


def fit_args(config: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["wkd", "fit", "-c", str(config), f"--trainer.default_root_dir={run_dir}", *QUIET, *extra]


def evaluation_metrics(run_dir: Path, stage: str) -> Path:
    """The metrics.csv of the one ``wkd validate|test`` into ``run_dir`` (written to ``<run_dir>/<stage>/<time>/``)."""
    (evaluation,) = (run_dir / stage).iterdir()
    return evaluation / "metrics.csv"


def last_row(metrics: Path, key: str) -> float:
    with open(metrics, newline="") as file:
        return float([row for row in csv.DictReader(file) if row.get(key)][-1][key])


def config_with(tmp_path: Path, fashion_dir: Path, config: Path = VANILLA, **data) -> Path:
    path = localised_config(config, tmp_path, fashion_dir)
    content = yaml.safe_load(path.read_text())
    content["data"]["init_args"].update(data)
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.mark.slow
def test_ddp_fit_resume_validate_test(tmp_path, fashion_dir):
    """The README's DDP commands, with 3 processes (an uneven split; 2 processes run in the tests below): every file
    of a run, exact whole-set validation top-1, resume, validate, test."""
    devices = 3
    config = config_with(tmp_path, fashion_dir, batch_size=6)  # 80 training images: 9 steps an epoch
    run_dir = tmp_path / "run"
    run_ok(fit_args(config, run_dir, *ddp(devices), "--trainer.max_epochs=2"), tmp_path / "fit.log")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["epochs"] == 2
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    with open(run_dir / "metrics.csv", newline="") as file:
        assert {"val/top1", "train/top1"} <= set(next(csv.reader(file)))

    # One process over the whole validation set (40 images: 3 ranks get 14/13/13, nothing padded) gives the same top-1.
    single_dir = tmp_path / "single"
    run_ok(
        [
            "wkd",
            "validate",
            "-c",
            str(config),
            f"--trainer.default_root_dir={single_dir}",
            *QUIET,
            f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        ],
        tmp_path / "validate1.log",
    )
    assert last_row(evaluation_metrics(single_dir, "validate"), "val/top1") == pytest.approx(
        summary["last_val_top1"], abs=1e-7
    )

    run_ok(
        fit_args(config, run_dir, *ddp(devices), "--trainer.max_epochs=3", "--ckpt_path=last"), tmp_path / "resume.log"
    )
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["complete"] and resumed["epochs"] == 3
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2

    # validate and test under DDP: the uneven split is where padding would show
    checkpoint = f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    for stage, key in (("validate", "val/top1"), ("test", "test/top1")):
        values = []
        for name, extra in ((f"{stage}-ddp", ddp(devices)), (f"{stage}-single", [])):
            out = tmp_path / name
            args = ["wkd", stage, "-c", str(config), f"--trainer.default_root_dir={out}", *QUIET, checkpoint, *extra]
            run_ok(args, tmp_path / f"{name}.log")
            values.append(last_row(evaluation_metrics(out, stage), key))
        assert values[0] == pytest.approx(values[1], abs=1e-7)


@pytest.mark.slow
def test_negative_control_a_rank_zero_collective_hangs_and_the_time_limit_catches_it(tmp_path, fashion_dir):
    """The old summary bug, put back by a test callback: the run hangs; the runner kills every rank and fails."""
    config = config_with(tmp_path, fashion_dir, batch_size=8)
    args = fit_args(
        config,
        tmp_path / "run",
        *ddp(2),
        "--trainer.max_epochs=2",
        "--ddp_timeout=3600",
        "--trainer.callbacks+=tests.distributed.support.RankZeroLogDir",
    )
    with pytest.raises(CommandTimeout):
        run(args, tmp_path / "fit.log", timeout=45)  # the same fit without the bug ends in about 20 s


def long_fit(tmp_path: Path, fashion_dir: Path, *extra: str):
    """A DDP fit long enough to be interrupted in its second epoch (160 images, 40 steps an epoch)."""
    from tests.conftest import write_fashion_mnist

    data = write_fashion_mnist(tmp_path / "data160", n_train=160, n_test=40)
    config = config_with(tmp_path, data, batch_size=2)
    run_dir = tmp_path / "run"
    args = fit_args(config, run_dir, *ddp(2), "--trainer.max_epochs=30", *extra)
    log = tmp_path / "fit.log"
    process = start(args, log)
    wait_for(run_dir / "checkpoints" / "last.ckpt", process, timeout=180)
    return process, log, config, run_dir


@pytest.mark.slow
@pytest.mark.parametrize(
    "target, signum, status",
    [
        ("launcher", signal.SIGTERM, 143),
        ("rank1", signal.SIGTERM, 143),
        ("launcher", signal.SIGINT, 130),
        ("group", signal.SIGINT, 130),
    ],
    ids=["sigterm-launcher", "sigterm-one-rank", "ctrl-c-launcher", "ctrl-c-terminal"],
)
def test_signal_stops_every_rank_and_the_run_resumes(target, signum, status, tmp_path, fashion_dir):
    process, log, config, run_dir = long_fit(tmp_path, fashion_dir)
    import time

    time.sleep(1.0)  # into the second epoch
    if target == "group":
        os.killpg(process.pid, signum)  # a terminal's Ctrl-C reaches every process of the foreground group
    else:
        from tests.distributed.launch import ranks

        os.kill(process.pid if target == "launcher" else ranks(process)[0], signum)
    finished = wait_all(process, log, timeout=60)  # every rank ends within 60 s
    assert finished.returncode == status, finished.output[-4000:]
    assert "training stopped (RunInterrupted)" in finished.output
    saved = [torch.load(p, weights_only=True) for p in (run_dir / "checkpoints").glob("last*.ckpt")]
    assert max(c["global_step"] for c in saved) > 0
    if signum == signal.SIGINT and target == "launcher":
        return  # its checkpoint is written by the same callback as the other three stops', which are resumed
    epochs = max(c["epoch"] for c in saved) + 2  # at least one more epoch to train, wherever the stop came

    resume = fit_args(config, run_dir, *ddp(2), f"--trainer.max_epochs={epochs}", "--ckpt_path=last")
    run_ok(resume, tmp_path / "resume.log", timeout=240)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["epochs"] == epochs
    assert not (run_dir / "checkpoints" / "last-interrupted.ckpt").exists()


@pytest.mark.slow
def test_a_hung_rank_ends_the_run_after_the_process_group_timeout(tmp_path, fashion_dir):
    """A rank that stops answering (SIGSTOP) makes the others fail after --ddp_timeout with a message that says so,
    and the stopped rank is ended too."""
    process, log, _, _ = long_fit(tmp_path, fashion_dir, "--ddp_timeout=30")  # also the start-up rendezvous
    from tests.distributed.launch import ranks

    os.kill(ranks(process)[0], signal.SIGSTOP)
    finished = wait_all(process, log, timeout=90)
    assert finished.returncode != 0
    assert "a collective operation (all-reduce, broadcast or barrier) failed because another rank died, hung" in (
        finished.output
    )
    assert "--ddp_timeout" in finished.output


@pytest.mark.slow
def test_ddp_spawn_pickles_a_module_with_feature_hooks(tmp_path, fashion_dir):
    config = config_with(tmp_path, fashion_dir, ROOT / "configs/fashion_mnist/wkd_lf.yaml", batch_size=8)
    run_dir = tmp_path / "run"
    run_ok(fit_args(config, run_dir, *ddp(2, "ddp_spawn"), "--trainer.max_epochs=1"), tmp_path / "fit.log")
    assert json.loads((run_dir / "summary.json").read_text())["complete"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_with_torchrun_on_loopback(tmp_path, fashion_dir):
    """The README's multi-node command, with both "nodes" on this machine (loopback only)."""
    config = config_with(tmp_path, fashion_dir, batch_size=8)
    run_dir, port = tmp_path / "run", free_port()
    wkd = str(Path(sys.executable).parent / "wkd")
    launches = [
        start(
            [
                "torchrun",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={node}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                wkd,
                "fit",
                "-c",
                str(config),
                f"--trainer.default_root_dir={run_dir}",
                *QUIET,
                "--trainer.accelerator=cpu",
                "--trainer.strategy=ddp",
                "--trainer.devices=1",
                "--trainer.num_nodes=2",
                "--trainer.max_epochs=2",
            ],
            tmp_path / f"node{node}.log",
        )
        for node in (0, 1)
    ]
    results = [wait_all(p, tmp_path / f"node{n}.log", timeout=240) for n, p in enumerate(launches)]
    for result in results:
        assert result.returncode == 0, result.output[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["epochs"] == 2
    assert "MEMBER: 2/2" in results[1].output  # node 1 ran as the second member of one 2-process job


def test_process_group_timeout_reaches_lightning_strategies():
    """--ddp_timeout sets the timeout Lightning's DDP/FSDP strategies pass to init_process_group (a private field:
    this test fails loudly if a Lightning upgrade renames it)."""
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from wkd_lightning.run.distributed import set_process_group_timeout

    for strategy in (DDPStrategy(), FSDPStrategy()):
        set_process_group_timeout(strategy, 12.5)
        assert strategy._timeout == timedelta(seconds=12.5)
    with pytest.raises(ValueError, match="--ddp_timeout must be > 0"):
        set_process_group_timeout(DDPStrategy(), 0)


def equality_config(tmp_path: Path, fashion_dir: Path) -> Path:
    """KD + WKD-L + WKD-F (feature hooks) on a BatchNorm student, 2 epochs of 10 steps at a global batch of 8."""
    teacher_file = tmp_path / "teacher.pt"
    from wkd_lightning.models import mini_resnet14

    torch.manual_seed(1)
    torch.save(mini_resnet14().state_dict(), teacher_file)
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 2, "deterministic": True, "num_sanity_val_steps": 0},
        "model": {
            "student": {"class_path": "tests.distributed.support.BNNet"},
            "teacher": {"class_path": "wkd_lightning.models.mini_resnet14"},
            "teacher_weights": str(teacher_file),
            "losses": [
                {"class_path": "wkd_lightning.losses.KD", "init_args": {"temperature": 4.0, "weight": 0.9}},
                {"class_path": "wkd_lightning.losses.WKDLogit", "init_args": {"cost": "uniform", "weight": 5.0}},
                {
                    "class_path": "wkd_lightning.losses.WKDFeature",
                    "init_args": {"student_path": "features.6", "teacher_path": "layer2", "weight": 0.5},
                },
            ],
            "optimizer": {"class_path": "wkd_lightning.run.optim.PaperSGD", "init_args": {"lr": 0.05}},
        },
        "data": {
            "class_path": "wkd_lightning.data.FashionMNISTDataModule",
            "init_args": {"data_dir": str(fashion_dir), "num_workers": 0, "train_size": None},
        },
    }
    path = tmp_path / "equality.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_two_processes_train_the_same_student_as_one_with_the_same_global_batch(tmp_path, fashion_dir):
    """DDP = one process, to fp32 noise, for a BatchNorm student with KD, WKD-L and WKD-F.

    What differs with plain BatchNorm (SyncBatchNorm needs a GPU): each rank normalises with its own half-batch's
    statistics, and the running statistics are rank 0's. The one-process run reproduces exactly that with
    :class:`~tests.distributed.support.RankShardBatchNorm`; without it the two runs differ (checked below), so the
    comparison can fail.
    """
    config = equality_config(tmp_path, fashion_dir)
    runs = {
        "ddp": ["--data.batch_size=4", *ddp(2)],
        "single": [
            "--data.batch_size=8",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.callbacks+=tests.distributed.support.RankShardBatchNorm",
        ],
        "single_plain_bn": ["--data.batch_size=8", "--trainer.accelerator=cpu", "--trainer.devices=1"],
    }
    states = {}
    for name, extra in runs.items():
        run_dir = tmp_path / name
        run_ok(fit_args(config, run_dir, *extra), tmp_path / f"{name}.log")
        checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint["global_step"] == 20
        states[name] = checkpoint["state_dict"]
    assert states["ddp"].keys() == states["single"].keys()
    assert any(k.startswith("losses.") for k in states["ddp"])  # the WKD-F projector (trained with the student)
    for key, value in states["single"].items():
        torch.testing.assert_close(states["ddp"][key].float(), value.float(), rtol=1e-4, atol=1e-5, msg=key)
    differs = [
        k
        for k, v in states["single_plain_bn"].items()
        if not torch.allclose(v.float(), states["ddp"][k].float(), rtol=1e-4, atol=1e-5)
    ]
    assert differs, "full-batch BatchNorm should not match per-rank statistics"


def test_collective_failures_are_explained_and_other_errors_left_alone():
    from wkd_lightning.run.distributed import explain_collective_failure

    timeout = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 15000ms for recv operation")
    assert "another rank died, hung or is unreachable" in explain_collective_failure(timeout)
    store = dist.DistStoreError("Timed out after 11 seconds waiting for clients. 1/2 clients joined.")
    assert "did not join it within the process-group timeout" in explain_collective_failure(store)
    assert explain_collective_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert explain_collective_failure(RuntimeError("the operation timed out")) is None  # not a distributed error
