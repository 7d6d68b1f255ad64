"""The commands as a user types them (a subprocess of the installed ``wkd``): run directories are never clobbered,
evaluations write beside the run, bad inputs end with one message and no advice that cannot help."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.distributed.launch import QUIET, run, run_ok

ROOT = Path(__file__).resolve().parents[2]
VANILLA = str(ROOT / "configs/fashion_mnist/vanilla.yaml")


def fit_args(fashion_dir: Path, run_dir: Path, *extra: str, command: str = "fit") -> list[str]:
    """``wkd <command> -c vanilla.yaml`` on the tiny fixture: one epoch of two batches, one validation batch."""
    return ["wkd", command, "-c", VANILLA, f"--data.data_dir={fashion_dir}", "--data.train_size=null",
            "--data.num_workers=0", "--data.batch_size=16", f"--trainer.default_root_dir={run_dir}",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
            *QUIET, *extra]  # fmt: skip


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative path → hex)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def assert_one_message(output: str, start: str) -> None:
    """The command ended with ``wkd: error: <start>…`` and no traceback."""
    assert f"wkd: error: {start}" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]


def test_used_run_dir_is_refused_then_new_version_and_evaluation_write_beside_it(tmp_path, fashion_dir):
    run_dir = tmp_path / "run"
    first = run_ok(fit_args(fashion_dir, run_dir), tmp_path / "fit1.log")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_val_top5"] >= summary["last_val_top5"] is not None
    assert f"best top-1 {100 * summary['best_val_top1']:.2f} %" in first.output and "last top-5" in first.output
    before = digests(run_dir)
    assert {"checkpoints/best.ckpt", "checkpoints/last.ckpt", "summary.json", "config.yaml"} <= set(before)
    assert yaml_config(run_dir / "config.yaml")["model"]["lr_scheduler"]["init_args"]["T_max"] == 1  # max_epochs

    again = run(fit_args(fashion_dir, run_dir), tmp_path / "fit2.log")
    assert again.returncode == 1
    assert_one_message(again.output, f"the run directory '{run_dir}' already holds an earlier fit")
    assert "--ckpt_path last" in again.output and "--new_version true" in again.output
    assert digests(run_dir) == before  # nothing touched, metrics.csv included

    run_ok(fit_args(fashion_dir, run_dir, "--new_version=true"), tmp_path / "fit3.log")
    version = run_dir / "version_0"
    assert (version / "checkpoints/last.ckpt").is_file() and (version / "summary.json").is_file()
    assert yaml_config(version / "config.yaml")["trainer"]["default_root_dir"] == str(version)  # where it wrote
    assert {k: v for k, v in digests(run_dir).items() if not k.startswith("version_0/")} == before

    best = run_dir / "checkpoints/best.ckpt"
    validate = fit_args(fashion_dir, run_dir, f"--ckpt_path={best}", "--model.label_smoothing=0.1", command="validate")
    validated = run_ok(validate, tmp_path / "val.log")
    assert (
        f"--ckpt_path {best}: model.label_smoothing is 0.1 in this command but 0.0 in the checkpoint; the "
        "command's value is used" in validated.output.replace("\n", " ")
    )
    (evaluation,) = (run_dir / "validate").iterdir()
    assert (evaluation / "config.yaml").is_file() and (evaluation / "metrics.csv").is_file()
    assert {k: v for k, v in digests(run_dir).items() if k.split("/")[0] not in ("version_0", "validate")} == before


def yaml_config(config: Path) -> dict:
    return yaml.safe_load(config.read_text())


def test_resume_with_another_recipe_is_refused_and_a_truncated_checkpoint_named(tmp_path, fashion_dir):
    run_dir = tmp_path / "run"
    run_ok(fit_args(fashion_dir, run_dir), tmp_path / "fit.log")
    changed = fit_args(
        fashion_dir, run_dir, "--trainer.max_epochs=2", "--ckpt_path=last", "--model.label_smoothing=0.1"
    )
    refused = run(changed, tmp_path / "changed.log")
    assert refused.returncode == 1
    assert_one_message(refused.output, "the checkpoint was trained with another recipe than this command's: "
                       "model.label_smoothing: 0.0 in the checkpoint, 0.1 now")  # fmt: skip
    assert "--allow_changed_recipe true" in refused.output
    allowed = run_ok([*changed, "--allow_changed_recipe=true"], tmp_path / "allowed.log")
    assert "resuming a checkpoint trained with another recipe" in allowed.output

    last = run_dir / "checkpoints/last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])  # a save cut short
    resume = run(fit_args(fashion_dir, run_dir, "--trainer.max_epochs=3", "--ckpt_path=last"), tmp_path / "r.log")
    assert resume.returncode == 1
    assert_one_message(resume.output, f"checkpoint '{last}' is truncated")
    assert "Errno 22" not in resume.output and "best.ckpt" in resume.output
    debug = run(fit_args(fashion_dir, run_dir, "--trainer.max_epochs=3", "--ckpt_path=last", "--debug"),
                tmp_path / "d.log")  # fmt: skip
    assert debug.returncode == 1 and "Traceback" in debug.output and "is truncated" in debug.output


def test_config_error_gives_no_resume_advice(tmp_path, fashion_dir):
    finished = run(fit_args(fashion_dir, tmp_path / "run", "--model.num_classes=5"), tmp_path / "fit.log")
    assert finished.returncode == 1
    assert_one_message(finished.output, "the data module has 10 classes but the model is configured for 5")
    assert "ckpt_path" not in finished.output


def test_diverged_weights_are_not_saved_and_no_resume_is_advised(tmp_path, fashion_dir):
    run_dir = tmp_path / "run"
    finished = run(fit_args(fashion_dir, run_dir, "--model.optimizer.init_args.lr=1e30"), tmp_path / "fit.log")
    assert finished.returncode == 1
    assert_one_message(finished.output, "non-finite loss at epoch")
    assert "nothing saved: the weights hold NaN or inf" in finished.output
    assert "--ckpt_path last" not in finished.output
    assert not list((run_dir / "checkpoints").glob("last*.ckpt"))


def test_wkd_ir_keeps_existing_cost_files(tmp_path):
    out = tmp_path / "ir"
    out.mkdir()
    (out / "uniform.pt").write_bytes(b"an earlier cost")
    args = ["wkd-ir", "--teacher=wkd_lightning.models.mini_resnet14", f"--teacher_weights={tmp_path}/t.ckpt",
            "--data=wkd_lightning.data.FashionMNISTDataModule", "--methods=[uniform]",
            f"--output_dir={out}"]  # fmt: skip
    finished = run(args, tmp_path / "ir.log")
    assert finished.returncode == 1
    assert f"wkd-ir: error: cost file(s) {out}/uniform.pt exist already" in finished.output
    assert "--overwrite true" in finished.output and "Traceback" not in finished.output
    assert (out / "uniform.pt").read_bytes() == b"an earlier cost"
    finished = run([*args, "--overwrite=true"], tmp_path / "ir2.log")  # goes on, to the missing teacher file
    assert finished.returncode == 1 and "does not exist" in finished.output  # the teacher file, checked next


pytestmark = pytest.mark.filterwarnings("ignore")


def printed_scheduler(*args: str, tmp_path: Path) -> dict:
    finished = run_ok(["wkd", "fit", *args, "--print_config"], tmp_path / "print.log")
    return yaml.safe_load(finished.output[finished.output.index("# lightning") :])["model"]["lr_scheduler"]


def test_lr_schedule_follows_the_run_length_unless_pinned(tmp_path):
    cosine = printed_scheduler("-c", VANILLA, "--trainer.max_epochs=30", tmp_path=tmp_path)
    assert cosine["init_args"]["T_max"] == 30  # the config says `T_max: max_epochs`
    pinned = printed_scheduler("-c", VANILLA, "--trainer.max_epochs=30", "--model.lr_scheduler.init_args.T_max=12",
                               tmp_path=tmp_path)  # fmt: skip
    assert pinned["init_args"]["T_max"] == 12
    cifar = str(ROOT / "configs/cifar100/kd/resnet32x4_resnet8x4.yaml")
    assert printed_scheduler("-c", cifar, tmp_path=tmp_path)["init_args"]["milestones"] == [150, 180, 210]
    halved = printed_scheduler("-c", cifar, "--trainer.max_epochs=120", tmp_path=tmp_path)
    assert halved["init_args"]["milestones"] == [75, 90, 105]


def test_a_batch_limit_typed_as_1_means_one_batch_with_a_warning(tmp_path, fashion_dir):
    run_dir = tmp_path / "run"
    args = fit_args(fashion_dir, run_dir, "--data.batch_size=8", "--trainer.limit_train_batches", "1")
    finished = run_ok(args, tmp_path / "fit.log")
    assert "--trainer.limit_train_batches 1: the CLI reads limits as floats" in finished.output
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 1  # not 10 batches
