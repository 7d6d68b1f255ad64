"""The Fashion-MNIST study script (``benchmarks/fashion_mnist_study.py``): aggregation, report, derived configs and
resume logic on synthetic run directories (a fake runner stands in for training), plus one tiny real run."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from study_module import load_study

from wkd_lightning.losses.base import keyed_loss_configs
from wkd_lightning.schedules import cosine_length, epoch_of

ROOT = Path(__file__).resolve().parents[1]


study = load_study()


def record(method: str, seed: int, best: float, last: float | None = None, complete: bool = True) -> dict:
    return {
        "method": method,
        "seed": seed,
        "best_top1": best,
        "last_top1": best if last is None else last,
        "complete": complete,
        "seconds": 10.0,
    }


def write_summary(run_dir: Path, best: float, last: float, complete: bool = True, epochs: int = 2) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {"best_val_top1": best, "last_val_top1": last, "epochs": epochs, "complete": complete, "losses": []}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def write_metrics(run_dir: Path, values: list[float]) -> None:
    lines = ["epoch,step,train/loss,val/top1"]
    for epoch, value in enumerate(values):
        lines += [f"{epoch},{epoch},,{value}", f"{epoch},{epoch},0.5,"]
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")


# -- aggregation ---------------------------------------------------------------------------------------------------


def test_mean_std_over_seeds_and_paired_differences_to_kd():
    kd = {0: 0.850, 1: 0.860, 2: 0.840}
    wkd = {0: 0.855, 1: 0.870, 2: 0.842}
    records = [record("kd", s, v, v - 0.01) for s, v in kd.items()]
    records += [record("wkd_l_class_mean_cosine", s, v, v - 0.02) for s, v in wkd.items()]
    records += [record("vanilla", 0, 0.80), record("vanilla", 1, 0.81, complete=False)]  # incomplete: ignored
    rows = {row["method"]: row for row in study.aggregate(records)}

    assert list(rows) == ["vanilla", "kd", "wkd_l_class_mean_cosine"]  # the order of METHODS
    row = rows["wkd_l_class_mean_cosine"]
    assert row["n"] == 3 and row["seeds"] == [0, 1, 2]
    assert row["best_mean"] == pytest.approx(100 * statistics.fmean(wkd.values()))
    assert row["best_std"] == pytest.approx(100 * statistics.stdev(wkd.values()))
    assert row["last_mean"] == pytest.approx(100 * statistics.fmean(wkd.values()) - 2)
    differences = [100 * (wkd[s] - kd[s]) for s in kd]  # paired per seed, not a difference of means' spreads
    assert row["best_vs_kd_mean"] == pytest.approx(statistics.fmean(differences))
    assert row["best_vs_kd_std"] == pytest.approx(statistics.stdev(differences))
    assert row["last_vs_kd_mean"] == pytest.approx(statistics.fmean(differences) - 1)
    assert row["best_vs_kd_per_seed"]["1"] == pytest.approx(1.0)

    assert rows["kd"]["best_vs_kd_mean"] is None and rows["kd"]["best_vs_kd_n"] == 0
    vanilla = rows["vanilla"]
    assert vanilla["n"] == 1 and vanilla["best_std"] is None  # one seed: no spread
    assert vanilla["best_vs_kd_n"] == 1 and vanilla["best_vs_kd_mean"] == pytest.approx(-5.0)
    assert vanilla["best_vs_kd_std"] is None


def test_paired_differences_use_only_seeds_both_finished_and_collapses_are_flagged():
    records = [record("kd", 0, 0.85), record("kd", 1, 0.86)]
    records += [record("wkd_l_uniform", 1, 0.10), record("wkd_l_uniform", 2, 0.84)]
    row = {r["method"]: r for r in study.aggregate(records)}["wkd_l_uniform"]
    assert row["best_vs_kd_n"] == 1 and row["best_vs_kd_per_seed"] == {"1": pytest.approx(-76.0)}
    assert row["collapsed"] == [1]


def test_mean_std_edge_cases():
    assert study.mean_std([]) == (None, None)
    assert study.mean_std([2.0]) == (2.0, None)
    mean, std = study.mean_std([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0)


def test_markdown_table_and_report():
    records = [record("kd", s, v) for s, v in ((0, 0.85), (1, 0.87))]
    records += [record("dkd", s, v) for s, v in ((0, 0.86), (1, 0.89))]
    rows = study.aggregate(records)
    table = study.markdown_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| method | what | seeds | best top-1 (%) | last top-1 (%) | best − KD (paired)")
    kd_line = next(line for line in lines if line.startswith("| kd "))
    dkd_line = next(line for line in lines if line.startswith("| dkd "))
    assert "86.00 ± 1.41" in kd_line and "| – | – |" in kd_line  # no difference of KD to itself
    assert "87.50 ± 2.12" in dkd_line and "+1.50 ± 0.71" in dkd_line
    assert all(line.count("|") == lines[0].count("|") for line in lines)

    report = {
        "generated": "now",
        "command": "python benchmarks/fashion_mnist_study.py --quick",
        "settings": study.quick_settings().as_dict(),
        "study_dir": "runs/study_quick",
        "reference": "kd",
        "teacher": {"checkpoint": "t.ckpt", "best_top1": 0.9, "last_top1": 0.9, "epochs": 1},
        "ir": {"cka_paired": {"score": 0.286, "chance": 0.286}, "class_mean_cosine": {"score": 1.0, "chance": 0.286}},
        "methods": rows,
        "runs": records,
    }
    text = study.markdown_report(report, {"bars": "fashion_mnist_top1.png"})
    assert "--quick check, not a result" in text and table in text
    assert "| class_mean_cosine | 1.000 | 0.286 | wkd_l_class_mean_cosine, wkd_lf, ban_wkd_l" in text
    assert "| dkd | 86.00 / 86.00 | 89.00 / 89.00 |" in text  # the per-seed table
    assert "![bars](fashion_mnist_top1.png)" in text


def test_read_val_curve_keeps_one_value_per_epoch(tmp_path):
    path = tmp_path / "metrics.csv"
    assert study.read_val_curve(path) == []
    path.write_text("epoch,step,val/top1,train/loss\n0,5,0.5,\n0,5,,1.0\n1,10,0.6,\n1,10,0.65,\n3,20,0.7,\n")
    assert study.read_val_curve(path) == [pytest.approx(50.0), pytest.approx(65.0), None, pytest.approx(70.0)]


# -- derived configs -----------------------------------------------------------------------------------------------


def losses_of(config: dict) -> dict[str, dict]:
    losses = keyed_loss_configs(config["model"]["losses"]).values()
    return {loss["class_path"].rsplit(".", 1)[-1]: loss.get("init_args", {}) for loss in losses}


@pytest.mark.parametrize(("epochs", "start_epoch", "warmup"), [(15, 9, 5), (12, 7, 4), (10, 6, 3), (2, 1, 1)])
def test_schedules_are_rescaled_with_the_epoch_budget(tmp_path, epochs, start_epoch, warmup):
    settings = study.full_settings(epochs=epochs)
    ir_dir = tmp_path / "ir"
    derived = {m.name: study.derive_student_config(m, settings, "teacher.ckpt", ir_dir) for m in study.METHODS}
    for name, config in derived.items():
        fit = config["fit"] if study.BY_NAME[name].ban else config
        assert fit["trainer"]["max_epochs"] == epochs and fit["trainer"]["enable_progress_bar"] is False
        assert cosine_length(fit["model"]["lr_scheduler"]["init_args"]["T_max"], epochs) == epochs  # ends at the end
        assert "default_root_dir" not in fit["trainer"]
        assert fit["data"]["init_args"]["train_size"] == 6000
    for name in ("wkd_l_cka_paired", "wkd_f", "wkd_lf"):
        for loss in losses_of(derived[name]).values():
            assert epoch_of(loss["schedule"]["init_args"]["start_epoch"], epochs, "E0") == start_epoch
    assert losses_of(derived["dkd"])["DKD"]["warmup_epochs"] == warmup
    assert losses_of(derived["self_kd_online"])["WKDLogit"]["schedule"]["init_args"]["warmup_epochs"] == warmup
    ban_start = losses_of(derived["ban_wkd_l"]["fit"])["WKDLogit"]["schedule"]["init_args"]["start_epoch"]
    assert epoch_of(ban_start, epochs, "E0") == start_epoch

    # The teacher and the WKD-L costs are filled in.
    assert derived["kd"]["model"]["teacher_weights"] == "teacher.ckpt"
    assert losses_of(derived["wkd_l_cka_paired"])["WKDLogit"]["cost"] == str(ir_dir / "cka_paired.pt")
    assert losses_of(derived["wkd_l_class_mean_cosine"])["WKDLogit"]["cost"] == str(ir_dir / "class_mean_cosine.pt")
    assert losses_of(derived["wkd_l_uniform"])["WKDLogit"]["cost"] == "uniform"
    assert losses_of(derived["wkd_lf"])["WKDLogit"]["cost"] == str(ir_dir / "class_mean_cosine.pt")
    assert "teacher_weights" not in derived["self_kd_online"]["model"]
    assert derived["ban_kd"]["ban"]["generations"] == 2


def test_quick_settings_limit_validation_and_data():
    settings = study.quick_settings(data_dir="/data")
    config = study.derive_student_config(study.BY_NAME["kd"], settings, "t.ckpt", Path("ir"))
    assert config["trainer"]["limit_val_batches"] == 10 and config["trainer"]["max_epochs"] == 3
    assert config["data"]["init_args"] == {**config["data"]["init_args"], "train_size": 1000, "data_dir": "/data"}
    teacher = study.derive_teacher_config(settings)
    assert teacher["trainer"]["max_epochs"] == 1 and teacher["data"]["init_args"]["train_size"] == 6000
    assert cosine_length(teacher["model"]["lr_scheduler"]["init_args"]["T_max"], 1) == 1
    ir = study.derive_ir_config(settings, "t.ckpt", Path("/x/ir"))
    assert ir["methods"] == list(study.IR_METHODS) and ir["max_per_class"] == 100 and ir["progress"] is False


@pytest.mark.parametrize("name", ["ban_kd", "ban_wkd_l"])
@pytest.mark.parametrize("seed", [0, 2])
def test_ban_generation_0_is_the_vanilla_run(name, seed):
    settings = study.full_settings()
    vanilla = study.derive_student_config(study.BY_NAME["vanilla"], settings, None, Path("ir"))
    driver = study.derive_student_config(study.BY_NAME[name], settings, None, Path("ir"))
    driver["fit"]["seed_everything"] = seed
    assert study.ban_gen0_matches_vanilla(vanilla, driver, seed)
    driver["fit"]["model"]["optimizer"]["init_args"]["lr"] = 0.1  # any real difference is caught
    assert not study.ban_gen0_matches_vanilla(vanilla, driver, seed)


# -- running and resuming (fake runner) ----------------------------------------------------------------------------


class FakeRunner:
    """Stands in for the subprocesses: records each command and writes what the real one would leave behind."""

    def __init__(self, accuracy: dict[str, float] | None = None) -> None:
        self.commands: list[list[str]] = []
        self.accuracy = accuracy or {}

    @staticmethod
    def option(command: list[str], name: str) -> str:
        for i, arg in enumerate(command):
            if arg == name:
                return command[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
        raise KeyError(name)

    def __call__(self, command, log_file):
        command = list(command)
        self.commands.append(command)
        module = command[2]
        if module == "wkd_lightning.ir.cli":
            config = yaml.safe_load(Path(command[-1]).read_text())
            out = Path(config["output_dir"])
            out.mkdir(parents=True, exist_ok=True)
            for method in config["methods"]:
                score = {"score": 1.0 if method == "class_mean_cosine" else 0.286, "chance": 0.286}
                record = {"cost": torch.zeros(10, 10), "teacher_weights": config["teacher_weights"]}
                torch.save({**record, "semantic_score": score}, out / f"{method}.pt")
            return 0
        if module == "wkd_lightning.selfkd.ban":
            run_dir = Path(self.option(command, "--run_dir"))
            assert (run_dir / "gen0" / "summary.json").is_file()  # generation 0 is the vanilla run, linked
            run_dir = run_dir / "gen1"
        else:
            run_dir = Path(self.option(command, "--trainer.default_root_dir"))
        accuracy = self.accuracy.get(run_dir.parent.name if run_dir.name.startswith("seed") else "", 0.85)
        write_summary(run_dir, accuracy, accuracy - 0.01)
        write_metrics(run_dir, [0.5, accuracy])
        return 0


def ran(runner: FakeRunner) -> list[str]:
    """What the fake runner was asked to do, as short names (``kd/seed0``, ``teacher``, ``ir``...)."""
    names = []
    for command in runner.commands:
        if command[2] == "wkd_lightning.ir.cli":
            names.append("ir")
        elif command[2] == "wkd_lightning.selfkd.ban":
            path = Path(FakeRunner.option(command, "--run_dir"))
            names.append(f"{path.parent.name}/{path.name}")
        else:
            path = Path(FakeRunner.option(command, "--trainer.default_root_dir"))
            names.append("teacher" if path.name == "teacher" else f"{path.parent.name}/{path.name}")
    return names


def test_complete_runs_are_skipped_and_unfinished_ones_resumed(tmp_path):
    out, results = tmp_path / "study", tmp_path / "results"
    teacher = tmp_path / "teacher" / "checkpoints" / "best.ckpt"
    teacher.parent.mkdir(parents=True)
    teacher.write_bytes(b"not read by the fake runner")
    write_summary(out / "kd" / "seed0", 0.86, 0.85, complete=True)  # finished earlier
    write_summary(out / "vanilla" / "seed0", 0.70, 0.70, complete=False, epochs=1)  # interrupted after one epoch
    (out / "vanilla" / "seed0" / "checkpoints").mkdir(parents=True)
    (out / "vanilla" / "seed0" / "checkpoints" / "last.ckpt").write_bytes(b"")
    settings = study.quick_settings(teacher=str(teacher))
    runner = FakeRunner()

    report = study.Study(out, settings, [0], ["vanilla", "kd"], runner=runner, results_dir=results).run()
    assert ran(runner) == ["vanilla/seed0"]  # no teacher training (given), no IR (no WKD-L), kd skipped
    (command,) = runner.commands
    assert command[-2:] == ["--ckpt_path", "last"]
    assert FakeRunner.option(command, "--seed_everything") == "0"
    assert FakeRunner.option(command, "--data.init_args.seed") == "0"
    assert FakeRunner.option(command, "--trainer.max_epochs") == "3"

    recorded = json.loads((out / "study.json").read_text())
    runs = {r["key"]: r for r in recorded["runs"]}
    assert runs["kd/seed0"]["best_top1"] == 0.86 and runs["kd/seed0"]["status"] == "complete"
    assert runs["vanilla/seed0"]["best_top1"] == 0.85 and runs["vanilla/seed0"]["seconds"] is not None
    assert runs["kd/seed0"]["source_config"] == "configs/fashion_mnist/kd.yaml"
    assert Path(runs["kd/seed0"]["config"]).is_file()
    assert recorded["teacher"]["trained_here"] is False
    assert [row["method"] for row in report["methods"]] == ["vanilla", "kd"]
    assert report["curves"]["vanilla"]["0"] == [pytest.approx(50.0), pytest.approx(85.0)]
    for name in ("fashion_mnist.md", "fashion_mnist.json", "fashion_mnist_top1.png", "fashion_mnist_curves.png"):
        assert (results / name).is_file()

    runner.commands.clear()  # everything is complete now: a second invocation trains nothing
    study.Study(out, settings, [0], ["vanilla", "kd"], runner=runner, results_dir=results).run()
    assert runner.commands == []


def test_teacher_ir_students_and_born_again_runs(tmp_path):
    out, results = tmp_path / "study", tmp_path / "results"
    runner = FakeRunner(accuracy={"kd": 0.86, "wkd_l_class_mean_cosine": 0.87})
    methods = ["kd", "wkd_l_class_mean_cosine", "ban_wkd_l"]
    study.Study(out, study.quick_settings(), [0, 1], methods, runner=runner, results_dir=results).run()

    # Teacher and IR once, vanilla added for the Born-Again run (its generation 0), per seed in METHODS order.
    assert ran(runner) == ["teacher", "ir"] + [
        f"{m}/seed{s}" for s in (0, 1) for m in ("vanilla", "kd", "wkd_l_class_mean_cosine", "ban_wkd_l")
    ]
    gen0 = out / "ban_wkd_l" / "seed1" / "gen0"
    assert gen0.is_symlink() and gen0.resolve() == (out / "vanilla" / "seed1").resolve()
    ban = next(c for c in runner.commands if c[2] == "wkd_lightning.selfkd.ban" and "seed1" in c[c.index("-c") + 1])
    assert "--seed_everything" not in ban and "--data.init_args.seed=1" in ban
    driver = yaml.safe_load(Path(ban[ban.index("-c") + 1]).read_text())
    assert driver["fit"]["seed_everything"] == 1 and driver["ban"]["generations"] == 2
    wkd = yaml.safe_load((out / "configs" / "wkd_l_class_mean_cosine.yaml").read_text())
    assert wkd["model"]["teacher_weights"] == str(out / "teacher" / "checkpoints" / "best.ckpt")
    assert losses_of(wkd)["WKDLogit"]["cost"] == str(out / "ir" / "class_mean_cosine.pt")

    recorded = json.loads((out / "study.json").read_text())
    assert recorded["ir"]["matrices"]["class_mean_cosine"]["score"] == 1.0
    assert {r["key"]: r["run_dir"] for r in recorded["runs"]}["ban_wkd_l/seed0"].endswith("ban_wkd_l/seed0/gen1")
    report = json.loads((results / "fashion_mnist.json").read_text())
    row = {r["method"]: r for r in report["methods"]}["wkd_l_class_mean_cosine"]
    assert row["n"] == 2 and row["best_vs_kd_mean"] == pytest.approx(1.0) and row["best_vs_kd_std"] == 0.0

    runner.commands.clear()
    study.Study(out, study.quick_settings(), [0, 1], methods, runner=runner, results_dir=results).run()
    assert runner.commands == []  # teacher, IR and every run were complete


def test_a_failed_run_is_reported_and_the_study_goes_on(tmp_path, capsys):
    out = tmp_path / "study"

    def runner(command, log_file):
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text("Traceback: something broke\n")
        return 1

    s = study.Study(out, study.quick_settings(), [0], ["vanilla", "ban_kd"], runner=runner, results_dir=tmp_path)
    s.run()
    assert s.failures == ["vanilla/seed0", "ban_kd/seed0"]  # BAN is not tried without its generation 0
    printed = capsys.readouterr().out
    assert "vanilla/seed0: FAILED" in printed and "something broke" in printed
    runs = {r["key"]: r for r in json.loads((out / "study.json").read_text())["runs"]}
    assert runs["vanilla/seed0"]["status"].startswith("failed")
    assert runs["ban_kd/seed0"]["status"].startswith("skipped")


def test_other_settings_in_the_same_directory_are_refused(tmp_path):
    study.check_settings(tmp_path, study.quick_settings())
    study.check_settings(tmp_path, study.quick_settings())  # the same: fine (resume)
    with pytest.raises(SystemExit, match="epochs: 3 before, 5 now"):
        study.check_settings(tmp_path, study.quick_settings(epochs=5))


# -- one real run --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_real_run_goes_through_the_wkd_cli(tmp_path, fashion_dir):
    """The real subprocess path: ``wkd fit`` accepts the study's derived config and arguments (fixture data)."""
    out = tmp_path / "study"
    argv = ["--quick", "--methods", "vanilla", "--out", str(out), "--data_dir", str(fashion_dir)]
    argv += ["--train_size", "40", "--epochs", "1"]
    report = study.main(argv)
    (row,) = report["methods"]
    assert row["method"] == "vanilla" and row["n"] == 1 and 0.0 <= row["best_mean"] <= 100.0
    assert (out / "vanilla" / "seed0" / "checkpoints" / "best.ckpt").is_file()
    assert (out / "fashion_mnist.md").is_file() and (out / "fashion_mnist_curves.png").is_file()
    config = yaml.safe_load((out / "vanilla" / "seed0" / "config.yaml").read_text())
    assert config["trainer"]["max_epochs"] == 1 and config["data"]["init_args"]["train_size"] == 40
