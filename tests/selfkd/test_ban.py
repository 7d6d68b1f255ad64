"""``wkd-ban``: Born-Again generations on the tiny Fashion-MNIST fixture, their teachers, resume, and bad inputs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from wkd_lightning.checkpoints import read_state_dict
from wkd_lightning.commands import ban
from wkd_lightning.losses import WKDLogit, load_cost
from wkd_lightning.module import DistillationModule

ROOT = Path(__file__).resolve().parents[2]
BAN_KD = ROOT / "configs/fashion_mnist/ban_kd.yaml"
BAN_WKD_L = ROOT / "configs/fashion_mnist/ban_wkd_l.yaml"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def small(fashion_dir: Path, epochs: int = 1) -> list[str]:
    """`wkd fit` overrides for a few steps on the fixture data."""
    return [f"--data.data_dir={fashion_dir}", "--data.num_workers=0", "--data.train_size=null",
            "--data.batch_size=16", f"--trainer.max_epochs={epochs}", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1", *QUIET]  # fmt: skip


def test_each_generation_distils_from_the_previous_ones_last_frozen_weights(tmp_path, fashion_dir):
    run_dir = tmp_path / "ban"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generations = ban.run(
            ["-c", str(BAN_WKD_L), "--generations", "2", "--run_dir", str(run_dir), *small(fashion_dir)]
        )
    assert not [w for w in caught if "teacher_checkpoint" in str(w.message)]  # the default does not warn
    gen0, gen1 = generations
    assert gen0.summary["losses"] == [] and gen0.module.teacher is None  # generation 0: CE only, no teacher
    assert gen1.summary["losses"] == ["WKDLogit"]

    last0 = run_dir / "gen0" / "checkpoints" / "last.ckpt"  # the teacher of generation 1, as in BAN
    teacher = gen1.module.teacher
    assert gen1.module.hparams.teacher_weights == str(last0)
    expected = read_state_dict(last0)  # generation 0's student at its last epoch, BN statistics included
    after_training = teacher.model.state_dict()
    assert after_training.keys() == expected.keys()
    assert all(torch.equal(after_training[k], v) for k, v in expected.items())  # equal, and unchanged by gen 1
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(m.training for m in teacher.modules())
    assert type(teacher.model) is type(gen1.module.student)

    # WKD-L's cost was built from generation 0 by wkd-ir and is the one generation 1 trained with.
    cost_file = run_dir / "gen1" / "ir" / "class_mean_cosine.pt"
    record = torch.load(cost_file, weights_only=True)
    assert record["teacher_weights"] == str(last0) and record["layer"] == "pool"
    config = yaml.safe_load((run_dir / "gen1" / "config.input.yaml").read_text())
    assert config["model"]["losses"]["wkd_l"]["init_args"]["cost"] == str(cost_file)
    assert [config["seed_everything"], yaml.safe_load((run_dir / "gen0" / "config.input.yaml").read_text())[
        "seed_everything"]] == [1, 0]  # fmt: skip
    (loss,) = gen1.module.losses
    torch.testing.assert_close(loss.cost_matrix, WKDLogit(cost=load_cost(cost_file), kappa=0).cost_matrix)

    rows = json.loads((run_dir / "generations.json").read_text())
    assert [row["generation"] for row in rows] == [0, 1]
    assert rows[1]["best_val_top1"] == gen1.summary["best_val_top1"]
    table = (run_dir / "generations.md").read_text()
    assert "| gen0 | none | CE only |" in table and "| gen1 | gen0 | WKDLogit |" in table


def test_an_interrupted_run_resumes_in_the_generation_it_stopped_in(tmp_path, fashion_dir, monkeypatch):
    run_dir = tmp_path / "ban"
    args = ["-c", str(BAN_WKD_L), "--generations", "2", "--run_dir", str(run_dir), *small(fashion_dir, epochs=2)]
    original = DistillationModule.training_step

    def crash_in_gen1_epoch2(self, batch, batch_idx):
        if self.trainer.default_root_dir.endswith("gen1") and self.current_epoch == 1 and batch_idx == 1:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DistillationModule, "training_step", crash_in_gen1_epoch2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ban.run(args)
    monkeypatch.setattr(DistillationModule, "training_step", original)
    kept = [run_dir / "gen0" / "summary.json", run_dir / "gen0" / "checkpoints" / "best.ckpt"]
    kept.append(run_dir / "gen1" / "ir" / "class_mean_cosine.pt")  # gen 1 resumes with the cost it started with
    mtimes = [f.stat().st_mtime_ns for f in kept]
    interrupted = json.loads((run_dir / "gen1" / "summary.json").read_text())
    assert not interrupted["complete"] and interrupted["epochs"] == 1

    calls, make_cli = [], ban.make_cli
    monkeypatch.setattr(ban, "make_cli", lambda cli_args: calls.append(cli_args) or make_cli(cli_args))
    generations = ban.run(args)
    assert len(calls) == 1  # generation 0 was not trained again
    assert calls[0][2] == str(run_dir / "gen1" / "config.input.yaml")
    assert calls[0][-2:] == ["--ckpt_path", "last"]
    assert [f.stat().st_mtime_ns for f in kept] == mtimes
    assert (
        generations[0].module is None and generations[1].summary["complete"] and generations[1].summary["epochs"] == 2
    )
    assert len(json.loads((run_dir / "generations.json").read_text())) == 2


def test_best_checkpoint_teachers_are_an_opt_in_that_warns(tmp_path, fashion_dir):
    """``--teacher_checkpoint best`` takes generation k-1's best.ckpt and warns about test-set selection."""
    run_dir = tmp_path / "ban"
    args = ["-c", str(BAN_KD), "--generations", "2", "--run_dir", str(run_dir), *small(fashion_dir)]
    with pytest.warns(UserWarning, match=r"--teacher_checkpoint best: .* test-set selection"):
        generations = ban.run([*args, "--teacher_checkpoint", "best"])
    best0 = run_dir / "gen0" / "checkpoints" / "best.ckpt"
    assert generations[1].module.hparams.teacher_weights == str(best0)
    expected = read_state_dict(best0)
    assert all(torch.equal(generations[1].module.teacher.model.state_dict()[k], v) for k, v in expected.items())


def test_an_unknown_teacher_checkpoint_is_an_error(capsys):
    with pytest.raises(SystemExit):
        ban.run(["-c", str(BAN_KD), "--teacher_checkpoint", "median"])
    assert "--teacher_checkpoint must be one of last, best, got 'median'" in capsys.readouterr().err


@pytest.mark.parametrize("generations", ["0", "-1"])
def test_fewer_than_one_generation_is_an_error(generations, capsys):
    with pytest.raises(SystemExit):
        ban.run(["-c", str(BAN_KD), "--generations", generations])
    assert f"--generations must be an integer >= 1 (generation 0 is the student alone), got {generations}" in (
        capsys.readouterr().err
    )


def test_config_errors_are_clear(tmp_path):
    config = yaml.safe_load(BAN_KD.read_text())
    del config["fit"]["model"]["student"]
    no_student = tmp_path / "no_student.yaml"
    no_student.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"sets no model\.student"):
        ban.run(["-c", str(no_student)])
    with pytest.raises(ValueError, match=r"builds WKD-L costs, but .* has no WKDLogit loss"):
        ban.run(["-c", str(BAN_KD), "--ir_method", "class_mean_cosine"])
    config = yaml.safe_load(BAN_KD.read_text())
    config["fit"]["model"]["online_teacher"] = {"class_path": "wkd_lightning.selfkd.EMATeacher"}
    online = tmp_path / "online.yaml"
    online.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"sets model\.online_teacher"):
        ban.run(["-c", str(online)])
