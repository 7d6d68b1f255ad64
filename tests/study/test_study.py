"""``wkd-study`` and its components (``wkd_lightning/study/``): study files and their errors, the shipped studies'
derived configs, statistics, the report, execution (order, needs, failures, ``--jobs``, resume) against a fast
stand-in command, the SLURM array, and end-to-end runs of the real command on the tiny Fashion-MNIST fixture."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.distributed.launch import run, run_ok, start, wait_all, wait_for
from wkd_lightning.study import execute as execute_module
from wkd_lightning.study import plan as plan_module
from wkd_lightning.study import report as report_module
from wkd_lightning.study import slurm, stats
from wkd_lightning.study.plan import read_task_record
from wkd_lightning.study.spec import COMMANDS, StudyFileError, load_study

ROOT = Path(__file__).resolve().parents[2]
FASHION = ROOT / "configs" / "studies" / "fashion_mnist.yaml"
CIFAR = ROOT / "configs" / "studies" / "cifar100.yaml"
BAN_BUDGET = ROOT / "configs" / "studies" / "fashion_mnist_ban_budget.yaml"
VANILLA = str(ROOT / "configs" / "fashion_mnist" / "vanilla.yaml")
STUDY = [sys.executable, "-m", "wkd_lightning.commands.study"]
#: The 16 methods of the Fashion-MNIST study, in its order.
METHODS = ["vanilla", "kd", "kd_ce01", "dkd", "dkd_beta2", "fitnet", "wkd_l_cka_paired", "wkd_l_class_mean_cosine",
           "wkd_l_iters50", "wkd_l_iters500", "wkd_l_uniform", "wkd_f", "wkd_lf", "ban_kd", "ban_wkd_l",
           "self_kd_online"]  # fmt: skip
#: Student t quantiles t(0.975, dof), from a printed table (independent of scipy).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}


@pytest.fixture(autouse=True)
def in_repository(monkeypatch):
    monkeypatch.chdir(ROOT)  # study files name configs relative to the directory wkd-study runs in


def write_study(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny(tmp_path: Path, **study) -> dict:
    return {
        "study": {"name": "tiny", "dir": str(tmp_path / "out"), "seeds": [0, 1], "baseline": "a", **study},
        "runs": [{"name": "a", "config": VANILLA}, {"name": "b", "config": VANILLA}],
    }


# -- study files -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda d: d["study"].update(sedes=[0]), StudyFileError, "unknown key 'sedes'; a key is one of name, dir"),
        (lambda d: d["runs"][0].update(confg="x"), StudyFileError, "run 'a': unknown key 'confg'"),
        (lambda d: d["runs"][1].update(name="a"), StudyFileError, "the name 'a' is used twice"),
        (lambda d: d["study"].update(baseline="kd"), StudyFileError, "study.baseline is 'kd', which is not a run"),
        (lambda d: d["runs"][0].update(config="nope.yaml"), FileNotFoundError, "config file nope.yaml does not exist"),
        (lambda d: d["runs"][0].update(needs=["teacher"]), StudyFileError, "'a' needs 'teacher', which is not one"),
        (lambda d: d["runs"][0].update(command="wkd-ir"), StudyFileError, "command 'wkd-ir' is not one of wkd fit"),
        (lambda d: d["runs"][0].update(args=["trainer.max_epochs=1"]), StudyFileError, "write each as '--key=value'"),
        (lambda d: d["study"].update(seeds=[0, 0]), StudyFileError, "repeats a seed"),
        (lambda d: d["runs"][0].update(set={"model.losses": [{"class_path": "KD"}], "model.losses.3.weight": 1}),
         StudyFileError, "model.losses is a list of 1; '3' is not an index of it"),
        (lambda d: d["runs"][0].update(set={"trainer.max_epochs.x": 1}), StudyFileError, "not a mapping or a list"),
        (lambda d: d.update(extra=1), StudyFileError, "unknown key 'extra'; a section is one of"),
        (lambda d: [d["runs"][0].update(needs=["b"]), d["runs"][1].update(needs=["a"])], StudyFileError,
         "in a circle (a -> b -> a)"),
    ],
)  # fmt: skip
def test_a_bad_study_file_is_one_message_with_the_fix(tmp_path, change, error, message):
    data = tiny(tmp_path)
    change(data)
    with pytest.raises(error) as caught:
        load_study(write_study(tmp_path / "s.yaml", data))
    assert message in str(caught.value)


def test_the_quick_overlay_appends_args_merges_set_and_replaces_study_keys(tmp_path):
    data = tiny(tmp_path)
    data["defaults"] = {"args": ["--trainer.max_epochs=5"]}
    data["runs"][0]["set"] = {"trainer.max_epochs": 5, "model.ce_weight": 0.5}
    data["quick"] = {"study": {"seeds": [0]}, "defaults": {"args": ["--trainer.max_epochs=1"]},
                     "runs": {"a": {"set": {"trainer.max_epochs": 1}}}}  # fmt: skip
    spec = load_study(write_study(tmp_path / "s.yaml", data), quick=True)
    assert spec.seeds == (0,) and spec.quick
    assert spec.run("a").args == ("--trainer.max_epochs=5", "--trainer.max_epochs=1")
    assert spec.run("a").set == {"trainer.max_epochs": 1, "model.ce_weight": 0.5}
    data["quick"]["runs"] = {"zz": {}}
    with pytest.raises(StudyFileError, match=r"quick\.runs names 'zz'"):
        load_study(write_study(tmp_path / "s.yaml", data), quick=True)
    del data["quick"]
    with pytest.raises(StudyFileError, match="has no `quick:` section"):
        load_study(write_study(tmp_path / "s.yaml", data), quick=True)


def test_the_command_table_matches_the_console_scripts():
    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
    scripts = dict(re.findall(r'^([\w-]+) = "([^"]+)"', section, re.MULTILINE))  # tomllib is Python >= 3.11
    assert scripts["wkd-study"].split(":")[0] == slurm.MODULE == "wkd_lightning.commands.study"
    for name, (module, _) in COMMANDS.items():
        assert scripts[name.split()[0]].split(":")[0] == module, name


def test_components_do_not_import_commands():
    for path in (ROOT / "wkd_lightning").rglob("*.py"):
        if "commands" not in path.relative_to(ROOT / "wkd_lightning").parts:
            imports = [x.strip() for x in path.read_text().splitlines() if x.strip().startswith(("from ", "import "))]
            assert not [x for x in imports if "wkd_lightning.commands" in x], path


# -- the shipped studies ---------------------------------------------------------------------------------------------


def losses_of(config: dict) -> dict[str, dict]:
    losses = config["model"]["losses"]
    return {loss["class_path"].rsplit(".", 1)[-1]: loss.get("init_args", {}) for loss in losses.values()}


def derived(spec, name: str, seed: int = 0) -> tuple[dict, list[str]]:
    task = next(t for t in plan_module.plan(spec) if t.entry.name == name and t.seed in (seed, None))
    return plan_module.derive_config(spec, task), plan_module.command_line(spec, task)


@pytest.mark.parametrize(("quick", "epochs", "start_epoch", "warmup"), [(False, 12, 7, 4), (True, 3, 2, 1)])
def test_fashion_mnist_study_runs_its_methods_with_rescaled_schedules(quick, epochs, start_epoch, warmup):
    spec = load_study(FASHION, quick=quick)
    assert [r.name for r in spec.runs] == METHODS and [s.name for s in spec.steps] == ["teacher", "ir"]
    assert spec.seeds == ((0,) if quick else (0, 1, 2, 3, 4)) and spec.baseline == "kd" and spec.threads == 1
    assert str(spec.reports) == ("runs/study_quick" if quick else "benchmarks/results")
    for name in METHODS:
        config, command = derived(spec, name)
        final = [a for a in command if a.startswith("--trainer.max_epochs=")][-1]
        assert final == f"--trainer.max_epochs={epochs}", name
        assert "--trainer.enable_progress_bar=false" in command
        if name.startswith("ban"):
            assert config["ban"]["generations"] == 2 and config["fit"]["seed_everything"] == 0
            assert spec.run(name).result == "gen1" and spec.run(name).link == {"gen0": "vanilla"}
            assert "--data.init_args.seed=0" in command
        else:
            assert "--seed_everything=0" in command and "--data.init_args.seed=0" in command
    # E0 is a fraction of the run in the configs, which `wkd fit` resolves against the run's max_epochs
    ban_wkd_l = derived(spec, "ban_wkd_l")[0]["fit"]
    for name in ("wkd_l_cka_paired", "wkd_l_class_mean_cosine", "wkd_l_uniform", "wkd_f", "wkd_lf", "ban_wkd_l"):
        config = ban_wkd_l if name == "ban_wkd_l" else derived(spec, name)[0]
        for loss in losses_of(config).values():
            assert round(loss["schedule"]["init_args"]["start_epoch"] * epochs) == start_epoch, name
    assert losses_of(derived(spec, "dkd")[0])["DKD"]["warmup_epochs"] == warmup
    assert losses_of(derived(spec, "dkd_beta2")[0])["DKD"] == {**losses_of(derived(spec, "dkd")[0])["DKD"], "beta": 2.0}
    assert derived(spec, "kd_ce01")[0]["model"]["ce_weight"] == 0.1
    iterations = [losses_of(derived(spec, f"wkd_l_iters{n}")[0])["WKDLogit"]["sinkhorn_iters"] for n in (50, 500)]
    assert iterations == [50, 500]
    assert losses_of(derived(spec, "self_kd_online")[0])["WKDLogit"]["schedule"]["init_args"]["warmup_epochs"] == warmup

    study = str(spec.dir)
    assert losses_of(derived(spec, "wkd_l_cka_paired")[0])["WKDLogit"]["cost"] == f"{study}/ir/cka_paired.pt"
    assert losses_of(derived(spec, "wkd_lf")[0])["WKDLogit"]["cost"] == f"{study}/ir/class_mean_cosine.pt"
    assert losses_of(derived(spec, "wkd_l_uniform")[0])["WKDLogit"]["cost"] == "uniform"
    assert f"--model.teacher_weights={study}/teacher/checkpoints/best.ckpt" in derived(spec, "kd")[1]
    ir = derived(spec, "ir")[1]
    assert f"--teacher_weights={study}/teacher/checkpoints/best.ckpt" in ir and "--progress=false" in ir
    assert spec.entries["ir"].needs == ("teacher",) and set(spec.entries["wkd_lf"].needs) == {"teacher", "ir"}
    if quick:
        teacher = derived(spec, "teacher")[1]
        assert "--trainer.max_epochs=1" in teacher and "--data.train_size=6000" in teacher
        assert "--max_per_class=100" in ir and "--data.train_size=1000" in derived(spec, "vanilla")[1]


@pytest.mark.parametrize(("study", "name"), [(FASHION, "ban_kd"), (FASHION, "ban_wkd_l"), (BAN_BUDGET, "ban_kd")])
@pytest.mark.parametrize("seed", [0, 2])
def test_born_again_generation_0_is_the_vanilla_run_it_links(study, name, seed):
    """wkd-ban trains generation 0 from `fit:` without its teacher and the losses that need one, seed + 0: that must
    be the vanilla run of the same seed, with the same command-line arguments, for the link to be right."""
    spec = load_study(study)
    vanilla, vanilla_command = derived(spec, "vanilla", seed)
    driver, ban_command = derived(spec, name, seed)
    gen0 = copy.deepcopy(driver["fit"])
    gen0["model"].pop("losses")
    vanilla = copy.deepcopy(vanilla)
    vanilla["model"].pop("losses", None)
    vanilla["seed_everything"] = seed  # vanilla gets --seed_everything=<seed>, generation 0 seed + 0
    for config in (gen0, vanilla):  # set on the command line: --trainer.default_root_dir / wkd-ban's --run_dir
        config["trainer"].pop("default_root_dir")
    assert gen0 == vanilla

    def passed_on(command):  # the arguments both give `wkd fit`, without the ones each command sets itself
        own = ("--trainer.default_root_dir=", "--run_dir=", "--seed_everything=", "-c")
        return [a for a in command[command.index("-c") + 2 :] if not a.startswith(own)]

    assert sorted(passed_on(ban_command)) == sorted(passed_on(vanilla_command))


@pytest.mark.parametrize(("quick", "epochs"), [(False, 36), (True, 2)])
def test_born_again_budget_study_compares_generation_1_with_its_generation_0(quick, epochs):
    spec = load_study(BAN_BUDGET, quick=quick)
    assert [r.name for r in spec.runs] == ["vanilla", "ban_kd"] and spec.baseline == "vanilla" and not spec.steps
    assert spec.seeds == ((0,) if quick else (0, 1, 2))
    for name in ("vanilla", "ban_kd"):
        final = [a for a in derived(spec, name)[1] if a.startswith("--trainer.max_epochs=")][-1]
        assert final == f"--trainer.max_epochs={epochs}", name
    assert spec.run("ban_kd").result == "gen1" and spec.run("ban_kd").link == {"gen0": "vanilla"}


def test_cifar100_study_is_the_paper_table_with_five_seeds():
    spec = load_study(CIFAR)
    assert spec.seeds == (0, 1, 2, 3, 4) and len(spec.runs) == 10
    assert {spec.baseline_of(r) for r in spec.runs if "shufflev1" in r.name} == {"kd_shufflev1", None}
    assert {spec.baseline_of(r) for r in spec.runs if "resnet8x4" in r.name} == {"kd_resnet8x4", None}
    config, _ = derived(spec, "wkd_l_resnet8x4")
    assert config["model"]["teacher_weights"] == "weights/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth"
    assert losses_of(config)["WKDLogit"]["cost"] == "runs/study_cifar100/ir_resnet32x4/cka_paired.pt"
    assert config["trainer"]["max_epochs"] == 240
    ir = derived(spec, "ir_wrn_40_2")[1]
    assert "-c" not in ir and "--layer=block3" in ir and "--output_dir=runs/study_cifar100/ir_wrn_40_2" in ir


# -- statistics and report -------------------------------------------------------------------------------------------


def test_paired_interval_uses_the_t_quantile():
    assert stats.mean_std([]) == (None, None) and stats.mean_std([2.0]) == (2.0, None)
    differences = [1.0, 2.0, 4.0]
    low, high = stats.paired_interval(differences)
    half = T975[2] * statistics.stdev(differences) / math.sqrt(3)
    assert low == pytest.approx(7 / 3 - half, abs=2e-3) and high == pytest.approx(7 / 3 + half, abs=2e-3)
    assert stats.paired_interval([1.0]) == (None, None)
    row = stats.compare({0: 80.0, 1: 82.0, 2: 81.0}, {0: 79.0, 1: 80.0, 3: 70.0})
    assert row["n"] == 2 and row["per_seed"] == {"0": 1.0, "1": 2.0}  # only the seeds both finished
    assert row["ci_low"] < 0 < row["ci_high"] and row["crosses_zero"] is True
    assert stats.compare({0: 90.0, 1: 91.0, 2: 92.0}, {0: 80.0, 1: 80.5, 2: 81.0})["crosses_zero"] is False


def fake_summary(folder: Path, best: float, last: float, complete: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    summary = {"best_val_top1": best, "last_val_top1": last, "best_val_top5": 0.99, "last_val_top5": 0.98,
               "epochs": 2, "complete": complete}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))


def test_report_rows_markdown_and_files(tmp_path):
    spec = load_study(write_study(tmp_path / "s.yaml", tiny(tmp_path, chance=0.1, seeds=[0, 1, 2])))
    values = {"a": (0.85, 0.86, 0.84), "b": (0.855, 0.87, 0.15)}
    for run_name, per_seed in values.items():
        for seed, best in enumerate(per_seed):
            fake_summary(spec.dir / run_name / f"seed{seed}", best, best - 0.01, complete=(run_name, seed) != ("a", 2))
    (spec.dir / "b" / "seed0" / "metrics.csv").write_text("epoch,step,val/top1\n0,1,0.5\n0,1,0.6\n1,2,0.7\n")
    content = report_module.build_report(spec)
    rows = {r["run"]: r for r in content["runs"]}
    assert rows["a"]["n"] == 2 and rows["a"]["vs_baseline"] is None  # seed 2 of `a` is not complete
    b = rows["b"]
    assert b["best_top1"]["mean"] == pytest.approx(100 * statistics.fmean(values["b"]))
    assert b["near_chance"] == [2] and b["vs_baseline"]["best_top1"]["n"] == 2
    assert b["vs_baseline"]["best_top1"]["per_seed"] == {"0": pytest.approx(0.5), "1": pytest.approx(1.0)}
    assert content["curves"]["b"]["0"] == [pytest.approx(60.0), pytest.approx(70.0)]
    paths = report_module.write_report(content, report_module.report_paths(spec))
    assert sorted(p.name for p in paths.values()) == ["tiny.json", "tiny.md", "tiny_curves.png", "tiny_top1.png"]
    text = paths["md"].read_text()
    assert "Not complete (left out of the table): a/seed2." in text
    line = next(x for x in text.splitlines() if x.startswith("| b |"))
    assert "vs a: +0.75 ± 0.35" in line and "(holds 0)" in line and "| seed 2 |" in line
    assert "| b | 85.50 / 84.50 | 87.00 / 86.00 | 15.00 / 14.00 |" in text


def test_read_val_curve_keeps_one_value_per_epoch(tmp_path):
    path = tmp_path / "metrics.csv"
    assert report_module.read_val_curve(path) == []
    path.write_text("epoch,step,val/top1,train/loss\n0,5,0.5,\n0,5,,1.0\n1,10,0.6,\n1,10,0.65,\n3,20,0.7,\n")
    assert report_module.read_val_curve(path) == [pytest.approx(50.0), pytest.approx(65.0), None, pytest.approx(70.0)]


# -- execution against a fast stand-in command -----------------------------------------------------------------------


@pytest.fixture
def fake_commands(monkeypatch):
    """Every command of a study runs tests/study/study_fake_command.py instead (a fraction of a second each)."""
    monkeypatch.setenv("PYTHONPATH", f"{ROOT / 'tests' / 'study'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    for name, (_, head) in list(COMMANDS.items()):
        monkeypatch.setitem(plan_module.COMMANDS, name, ("study_fake_command", head))


def calls(folder: Path) -> list[dict]:
    path = folder / "calls.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def fake_study(tmp_path: Path, fake_a: dict | None = None) -> dict:
    config = tmp_path / "fake.yaml"
    config.write_text(yaml.safe_dump({"fake": {"best": 0.8}}))
    return {
        "study": {"name": "fake", "dir": str(tmp_path / "out"), "seeds": [0, 1], "baseline": "a"},
        "steps": [{"name": "teacher", "config": str(config)},
                  {"name": "ir", "command": "wkd-ir", "needs": ["teacher"], "args": ["--teacher_weights={study}/t"]}],
        "runs": [{"name": "a", "config": str(config), "needs": ["teacher"], "set": {"fake": fake_a or {"best": 0.7}}},
                 {"name": "b", "config": str(config), "needs": ["ir"], "args": ["--x={seed}"]},
                 {"name": "ban", "command": "wkd-ban", "config": str(config), "link": {"gen0": "a"},
                  "result": "gen1"}],
    }  # fmt: skip


def test_execution_order_skip_resume_and_links(tmp_path, fake_commands, capsys):
    spec = load_study(write_study(tmp_path / "s.yaml", fake_study(tmp_path)))
    outcome = execute_module.execute(spec, plan_module.plan(spec), jobs=1, threads=3)
    assert outcome.failed == [] and len(outcome.ran) == 8
    printed = capsys.readouterr().out
    assert "(1/8) teacher: starting" in printed and "(8/8) ban seed 1: done" in printed
    starts = {key: calls(spec.dir / key)[0]["start"] for key in ("teacher", "ir", "a/seed0", "b/seed0", "ban/seed1")}
    assert starts["teacher"] < starts["ir"] < starts["a/seed0"] < starts["b/seed0"] < starts["ban/seed1"]
    (b0,) = calls(spec.dir / "b" / "seed0")
    assert "--x=0" in b0["args"] and b0["threads"] == "3" and "--data.init_args.seed=0" in b0["args"]
    link = spec.dir / "ban" / "seed1" / "gen0"
    assert link.is_symlink() and link.resolve() == (spec.dir / "a" / "seed1").resolve()
    assert json.loads((spec.dir / "ir" / "study_task.json").read_text())["complete"] is True
    assert yaml.safe_load((spec.dir / "a" / "seed1" / "study.input.yaml").read_text())["fake"] == {"best": 0.7}

    # Everything complete: nothing runs. Then a cut-off run (summary not complete, last.ckpt there) resumes, and a
    # cut-off wkd-ir redoes its files with --overwrite=true.
    assert execute_module.execute(spec, plan_module.plan(spec)).ran == []
    summary = spec.dir / "a" / "seed1" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "complete": False}))
    (spec.dir / "ir" / "study_task.json").unlink()
    outcome = execute_module.execute(spec, plan_module.plan(spec))
    assert outcome.ran == ["ir", "a/seed1"]
    assert "--ckpt_path=last" in calls(spec.dir / "a" / "seed1")[-1]["args"]
    assert "--overwrite=true" in calls(spec.dir / "ir")[-1]["args"]


def test_ctrl_c_stops_the_running_tasks_and_the_next_run_goes_on(tmp_path, fake_commands):
    """Ctrl-C while tasks run: a task still running after the grace period gets SIGTERM (the fake command does not
    stop by itself), the exception reaches the caller, and running the study again redoes only what did not finish."""
    data = fake_study(tmp_path)
    data["runs"][1]["set"] = {"fake": {"sleep": 30}}  # b: still running at Ctrl-C
    spec = load_study(write_study(tmp_path / "s.yaml", data))
    said = [""]

    def say(text: str) -> None:
        said.append(text)
        if "b seed 0: starting" in said[-2]:  # Ctrl-C at the next message after b started
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        execute_module.execute(spec, plan_module.plan(spec), jobs=2, say=say, stop_grace=0.5)
    assert time.monotonic() - started < 20  # b was stopped, not waited for
    assert any("stopping: 1 running task(s)" in x for x in said), said
    assert not (spec.dir / "b" / "seed0" / "summary.json").exists()
    assert read_task_record(plan_module.all_tasks(spec)["b/seed0"])["seconds"] > 0  # its time so far is kept

    data["runs"][1]["set"] = {"fake": {"sleep": 0.1}}
    spec = load_study(write_study(tmp_path / "s.yaml", data))
    outcome = execute_module.execute(spec, plan_module.plan(spec), jobs=2)
    assert "a/seed0" in outcome.skipped and "b/seed0" in outcome.ran and not outcome.failed


def test_a_failed_run_is_reported_its_dependents_skipped_and_the_others_go_on(tmp_path, fake_commands, capsys):
    spec = load_study(write_study(tmp_path / "s.yaml", fake_study(tmp_path, fake_a={"fail": True})))
    outcome = execute_module.execute(spec, plan_module.plan(spec), jobs=2)
    assert sorted(outcome.failed) == ["a/seed0", "a/seed1", "ban/seed0", "ban/seed1"]
    assert sorted(outcome.ran) == ["b/seed0", "b/seed1", "ir", "teacher"]
    printed = capsys.readouterr().out
    assert "a seed 0: FAILED (exit status 3)" in printed and "the fake run broke on purpose" in printed
    assert "ban seed 0: skipped: needs a/seed0, which did not finish" in printed
    assert "4 failed" in printed


def test_jobs_run_in_parallel_with_the_threads_split(tmp_path, fake_commands):
    data = fake_study(tmp_path)
    data["steps"], data["runs"] = [], [{"name": n, "config": data["runs"][0]["config"], "set": {"fake": {"sleep": 2}}}
                                       for n in ("a", "b")]  # fmt: skip
    spec = load_study(write_study(tmp_path / "s.yaml", data))
    assert execute_module.execute(spec, plan_module.plan(spec), jobs=2).failed == []
    spans = sorted(
        (c["start"], c["end"]) for key in ("a", "b") for s in (0, 1) for c in calls(spec.dir / key / f"seed{s}")
    )
    overlapping = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert overlapping == 2
    expected = str(execute_module.default_threads(2))
    assert {c["threads"] for key in ("a", "b") for c in calls(spec.dir / key / "seed0")} == {expected}


def test_only_and_seed_select_tasks_and_refuse_missing_needs(tmp_path, fake_commands, capsys):
    spec = load_study(write_study(tmp_path / "s.yaml", fake_study(tmp_path)))
    tasks = plan_module.plan(spec, ["b"], [1])
    assert [t.key for t in tasks] == ["b/seed1"]
    outcome = execute_module.execute(spec, tasks)
    assert (
        outcome.failed == ["b/seed1"]
        and "needs ir, which is not complete and not part of this" in capsys.readouterr().out
    )
    with pytest.raises(ValueError, match="--only zz: no such step or run"):
        plan_module.plan(spec, ["zz"])
    with pytest.raises(ValueError, match="--seed 7"):
        plan_module.plan(spec, None, [7])


# -- SLURM -----------------------------------------------------------------------------------------------------------


def test_slurm_array_renders_one_task_per_run_and_seed(tmp_path):
    spec = load_study(FASHION)
    script_path = tmp_path / "study.sbatch"
    script, submit = slurm.render(spec, script_path=script_path, sbatch=["--gres=gpu:1"], python="/opt/py")
    script_path.write_text(script)
    (tmp_path / "submit.sh").write_text(submit)
    for name in ("study.sbatch", "submit.sh"):
        subprocess.run(["bash", "-n", str(tmp_path / name)], check=True)
    seeds = (0, 1, 2, 3, 4)
    expected = [(r, s) for s in seeds for r in METHODS if not r.startswith("ban")]
    first_wave = len(expected)  # 14 runs x 5 seeds
    expected += [(r, s) for s in seeds for r in ("ban_kd", "ban_wkd_l")]
    last = len(expected) - 1  # 16 runs x 5 seeds = 80 tasks
    assert f"#SBATCH --array=0-{last}" in script and "#SBATCH --gres=gpu:1" in script
    # The Born-Again runs need the vanilla run of their seed: they come in a second wave, after the first.
    assert f"--array=0-{first_wave - 1} --dependency=afterok:$steps" in submit
    assert f"--array={first_wave}-{last} --dependency=afterany:$wave0" in submit
    echo = tmp_path / "python"
    echo.write_text('#!/bin/bash\necho "$@"\n')
    echo.chmod(0o755)
    for i in (0, 7, 11, first_wave - 1, first_wave, last):
        env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(i), PYTHON=str(echo))
        out = subprocess.run(["bash", str(script_path)], env=env, capture_output=True, text=True, check=True).stdout
        run_name, seed = expected[i]
        assert out.split() == ["-m", "wkd_lightning.commands.study", "run", "-c", str(FASHION), "--threads", "1",
                               "--only", run_name, "--seed", str(seed)], (i, out)  # fmt: skip
    env = dict(os.environ, WKD_STUDY_PART="steps", PYTHON=str(echo))
    out = subprocess.run(["bash", str(script_path)], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[-3:] == ["--only", "teacher", "ir"]
    bad = subprocess.run(["bash", str(script_path)], env=dict(os.environ, SLURM_ARRAY_TASK_ID=str(last + 1),
                         PYTHON=str(echo)), capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and f"the array has {last + 1} tasks" in bad.stderr


# -- the real command, end to end ------------------------------------------------------------------------------------


def real_study(tmp_path: Path, fashion_dir: Path) -> Path:
    """2 runs x 2 seeds of `wkd fit` on the fixture: 1 epoch of 2 batches, 2 validation batches."""
    data = {
        "study": {"name": "tiny", "dir": str(tmp_path / "out"), "seeds": [0, 1], "baseline": "vanilla",
                  "chance": 0.1},
        "defaults": {"args": [f"--data.data_dir={fashion_dir}", "--data.train_size=null", "--data.num_workers=0",
                              "--data.batch_size=16", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                              "--trainer.limit_val_batches=2", "--trainer.enable_model_summary=false"]},
        "runs": [{"name": "vanilla", "config": VANILLA},
                 {"name": "fast", "label": "higher lr", "config": VANILLA,
                  "set": {"model.optimizer.init_args.lr": 0.5}}],
    }  # fmt: skip
    return write_study(tmp_path / "study.yaml", data)


@pytest.mark.slow
def test_wkd_study_runs_skips_resumes_and_reports(tmp_path, fashion_dir):
    study_file = real_study(tmp_path, fashion_dir)
    out = tmp_path / "out"
    first = run_ok([*STUDY, "run", "-c", str(study_file), "--jobs", "2"], tmp_path / "run1.log", timeout=600)
    assert "(4/4)" in first.output and "4 ran, 0 complete before, 0 failed" in first.output
    assert "OMP_NUM_THREADS=1 " in (out / "logs" / "fast_seed1.log").read_text()  # 2 cores / 2 jobs

    again = run_ok([*STUDY, "run", "-c", str(study_file)], tmp_path / "run2.log", timeout=120)
    assert "0 ran, 4 complete before" in again.output

    # A run cut off after its checkpoint: it resumes from last.ckpt (here: nothing left to train) and completes.
    summary_file = out / "fast" / "seed1" / "summary.json"
    summary_file.write_text(json.dumps({**json.loads(summary_file.read_text()), "complete": False}))
    resumed = run_ok([*STUDY, "run", "-c", str(study_file)], tmp_path / "run3.log", timeout=300)
    assert "fast seed 1: resuming" in resumed.output and "1 ran, 3 complete before" in resumed.output
    assert "--ckpt_path=last" in (out / "logs" / "fast_seed1.log").read_text()
    assert json.loads(summary_file.read_text())["complete"] is True

    report = run_ok([*STUDY, "report", "-c", str(study_file)], tmp_path / "report.log", timeout=120)
    content = json.loads((out / "report" / "tiny.json").read_text())
    assert (out / "report" / "tiny_top1.png").is_file() and (out / "report" / "tiny_curves.png").is_file()

    # The numbers, computed here from each run's summary.json (no code shared with the report).
    summaries = {(r, s): json.loads((out / r / f"seed{s}" / "summary.json").read_text())
                 for r in ("vanilla", "fast") for s in (0, 1)}  # fmt: skip
    rows = {row["run"]: row for row in content["runs"]}
    for name in ("vanilla", "fast"):
        for key in ("best_val_top1", "last_val_top1", "best_val_top5", "last_val_top5"):
            values = [100 * summaries[name, s][key] for s in (0, 1)]
            ours = rows[name][key.replace("_val", "")]
            assert ours["mean"] == pytest.approx(sum(values) / 2)
            assert ours["std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    differences = [100 * (summaries["fast", s]["best_val_top1"] - summaries["vanilla", s]["best_val_top1"])
                   for s in (0, 1)]  # fmt: skip
    mean, std = sum(differences) / 2, abs(differences[0] - differences[1]) / math.sqrt(2)
    versus = rows["fast"]["vs_baseline"]["best_top1"]
    assert versus["mean"] == pytest.approx(mean) and versus["std"] == pytest.approx(std)
    assert versus["ci_low"] == pytest.approx(mean - T975[1] * std / math.sqrt(2), abs=1e-2)
    assert versus["ci_high"] == pytest.approx(mean + T975[1] * std / math.sqrt(2), abs=1e-2)
    assert versus["crosses_zero"] == (versus["ci_low"] <= 0 <= versus["ci_high"])
    near = [s for s in (0, 1) if summaries["fast", s]["best_val_top1"] < 0.2]
    assert rows["fast"]["near_chance"] == near
    line = next(x for x in report.output.splitlines() if x.startswith("| fast |"))
    assert f"vs vanilla: {mean:+.2f} ± {std:.2f}" in line
    assert "95 % paired t interval" in (out / "report" / "tiny.md").read_text()


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_stops_wkd_study_run_cleanly_and_it_resumes(tmp_path, fashion_dir):
    """Ctrl-C reaches the whole process group: the training run stops by itself at its next step, with one signal
    (a second would stop it inside the step), wkd-study exits 130 with one line and no traceback, and the same
    command then resumes the run from its checkpoint to the end."""
    study_file = real_study(tmp_path, fashion_dir)
    data = yaml.safe_load(study_file.read_text())
    data["runs"] = data["runs"][:1]
    data["study"]["seeds"] = [0]
    data["defaults"]["args"] = [a for a in data["defaults"]["args"] if "max_epochs" not in a] + [
        "--trainer.max_epochs=30"
    ]
    write_study(study_file, data)
    runner = start([*STUDY, "run", "-c", str(study_file)], tmp_path / "run1.log")
    wait_for(tmp_path / "out" / "vanilla" / "seed0" / "checkpoints" / "last.ckpt", runner, timeout=300)
    os.killpg(runner.pid, signal.SIGINT)
    stopped = wait_all(runner, tmp_path / "run1.log", timeout=180)
    assert stopped.returncode == 130 and "Traceback" not in stopped.output, stopped.output[-3000:]
    assert "[study] stopped (SIGINT). Run the same command again to go on" in stopped.output
    run_log = (tmp_path / "out" / "logs" / "vanilla_seed0.log").read_text()
    assert "training stopped (RunInterrupted)" in run_log and "KeyboardInterrupt" not in run_log

    resumed = run_ok([*STUDY, "run", "-c", str(study_file)], tmp_path / "run2.log", timeout=300)
    assert "vanilla seed 0: resuming" in resumed.output and "1 ran, 0 complete before, 0 failed" in resumed.output
    summary = json.loads((tmp_path / "out" / "vanilla" / "seed0" / "summary.json").read_text())
    assert summary["complete"] is True and summary["epochs"] == 30


@pytest.mark.slow
def test_wkd_study_errors_and_slurm_through_the_command(tmp_path):
    data = tiny(tmp_path)
    data["study"]["baseline"] = "kd"
    bad = run([*STUDY, "run", "-c", str(write_study(tmp_path / "bad.yaml", data))], tmp_path / "bad.log", timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.output
    assert "wkd-study: error: " in bad.output and "study.baseline is 'kd', which is not a run" in bad.output
    assert "name one of a, b" in bad.output
    script = tmp_path / "array.sbatch"
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the study's paths are relative to where it runs
    slurm_command = [*STUDY, "slurm", "-c", str(FASHION), "--quick", "--out", str(script)]
    made = run_ok(slurm_command, tmp_path / "s.log", 120, cwd=tmp_path)
    assert (tmp_path / "runs" / "study_quick" / "logs").is_dir()  # SLURM does not create its --output folder
    assert f"{len(METHODS)} array tasks: {len(METHODS)} runs x 1 seeds" in made.output
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert "--quick" in script.read_text() and (tmp_path / "submit.sh").is_file()
