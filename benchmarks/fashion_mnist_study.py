"""The Fashion-MNIST study (issue 9): every method of the project, several seeds, one fixed epoch budget.

Run (from the repository root, in the project's virtual environment)::

    python benchmarks/fashion_mnist_study.py                          # the full study (about 2 hours on 2 CPU cores)
    python benchmarks/fashion_mnist_study.py --quick                  # a few minutes: tiny settings, checks only
    python benchmarks/fashion_mnist_study.py --seeds 0 1 2 --epochs 12 --out runs/study
    python benchmarks/fashion_mnist_study.py --methods vanilla kd     # a subset of the methods
    python benchmarks/fashion_mnist_study.py --report_only            # tables and plots from the finished runs

**What it does.**

1. Trains the teacher once (``configs/fashion_mnist/teacher.yaml``: mini_resnet14 on all 60,000 training images,
   seed 0) into ``<out>/teacher``, or uses ``--teacher CKPT``. One teacher serves every seed: the study samples the
   students' variability, not the teacher's.
2. Builds the teacher's category-interrelation cost matrices once with ``wkd-ir`` (``configs/fashion_mnist/ir.yaml``:
   ``cka_paired`` (released, row-paired), ``class_mean_cosine`` (pairing-free), ``cov_align``, ``uniform``,
   ``classifier_cosine``) into ``<out>/ir``, and records each matrix's semantic score.
3. For each seed, trains the student (mini_resnet8 on a fixed 6,000-image subset) with every method of
   :data:`METHODS`: vanilla, KD, DKD, FitNet, WKD-L with the ``cka_paired``, ``class_mean_cosine`` and ``uniform``
   costs, WKD-F, WKD-LF, Born-Again KD and Born-Again WKD-L (generation 1, distilled from generation 0), and online
   self-KD (EMA teacher + WKD-L). Validation is on the 10,000 test images every epoch.
4. Writes ``<out>/study.json`` (every run: config, seed, best and last top-1, time) and the report:
   ``benchmarks/results/fashion_mnist.{md,json}`` plus ``fashion_mnist_top1.png`` (mean ± std per method) and
   ``fashion_mnist_curves.png`` (validation top-1 per epoch, mean over seeds). With ``--quick`` the report goes to
   ``<out>/`` instead, so a quick check never overwrites the committed results.

**How each run is made.** Every run goes through the project's real commands, each in its own Python process
(``python -m wkd_lightning.cli fit``, ``-m wkd_lightning.ir.cli``, ``-m wkd_lightning.selfkd.ban``), so no state
(global RNG, torch settings, Lightning's globals, memory) leaks from one run into the next, and a crash in one run
does not end the study. The study derives one config per method from ``configs/fashion_mnist/<name>.yaml`` into
``<out>/configs/`` (teacher checkpoint and IR cost file filled in, schedules rescaled, see below) and calls::

    wkd fit -c <out>/configs/<method>.yaml --seed_everything <seed> --data.init_args.seed <seed>
        --trainer.default_root_dir <out>/<method>/seed<seed> --trainer.max_epochs <epochs>
        --trainer.enable_progress_bar false

``--data.init_args.seed`` makes the seed also draw the 6,000-image subset, the data order and the augmentation (the
data module's seed is separate from ``seed_everything``): a seed is then a full repetition of the experiment. All
methods of one seed share the subset and order, so per-seed differences between methods are paired comparisons.

**Schedules rescaled with the epoch budget.** The configs are written for 15 epochs. With ``--epochs E`` the study
sets ``trainer.max_epochs = E`` and rescales every epoch count that depends on the run length by ``E / 15``
(:func:`scale_schedules`): the cosine LR's ``T_max`` (= E, so the LR still reaches 0 at the end), WKD-L/WKD-F's
``CosineDecay.start_epoch`` (E0 = 9 of 15, i.e. full weight for the first 60%; the configs give it as the fraction
0.6, which follows the run length by itself), DKD's ``warmup_epochs`` (5 of 15)
and online self-KD's ``LinearWarmup.warmup_epochs`` (5 of 15), rounded half up, warm-ups at least 1.

**Born-Again generations.** ``wkd-ban`` runs generation 0 (the student alone, cross-entropy only, seed s) and
generation 1 (a fresh student, seed s + 1, distilled from generation 0's last checkpoint; for BAN-WKD-L with a
``class_mean_cosine`` cost rebuilt from generation 0). Generation 0 is exactly the vanilla run of the same seed: the
same student, optimizer, LR schedule, data, seeds and epochs, with no loss plug-in and no teacher (the derived
configs are checked to agree, :func:`ban_gen0_matches_vanilla`; a separate ``wkd-ban`` generation 0 of the
``--quick`` setting ended with weights bit-identical to the vanilla run's). So it is not trained twice:
``<out>/ban_*/seed<s>/gen0`` is a symbolic link to ``<out>/vanilla/seed<s>``, which ``wkd-ban`` finds complete and
skips. A BAN method therefore always brings the vanilla run of its seed with it. The table reports generation 1.

**Resume.** Run the same command again: a run whose ``summary.json`` says ``complete`` is skipped, an unfinished one
(with a ``checkpoints/last*.ckpt``) continues with ``--ckpt_path last`` (``wkd-ban`` does the same per generation),
the IR step is skipped when its five files exist for this teacher. ``<out>/study_settings.json`` keeps the settings
that define the runs (epochs, data sizes...); another invocation with different ones is refused (use another
``--out``), while adding seeds or methods is fine.

**Budget.** 12 student epochs (:data:`DEFAULT_EPOCHS`), chosen from measured epoch times so that the whole study (12
student runs per seed × 3 seeds, the teacher and the IR step) takes about 2 hours on 2 busy CPU cores. Each run uses
one torch thread (``--threads``; measured: two threads per run were many times slower once other jobs shared the
cores). The measurement and the arithmetic are in :data:`BUDGET_NOTE` (also printed by ``--help``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from wkd_lightning.losses.base import keyed_loss_configs
from wkd_lightning.summary import can_resume, is_complete

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "fashion_mnist"
RESULTS = ROOT / "benchmarks" / "results"
REPORT_NAME = "fashion_mnist"

#: Cost matrices built once from the teacher (all are scored; the WKD-L runs use three of them).
IR_METHODS = ("cka_paired", "class_mean_cosine", "cov_align", "uniform", "classifier_cosine")
#: The method every other one is compared with, seed by seed.
REFERENCE = "kd"
#: Epochs of the configs as written (the scale of every rescaled schedule).
CONFIG_EPOCHS = 15
#: Default student epoch budget of the full study (see BUDGET_NOTE).
DEFAULT_EPOCHS = 12
#: torch threads per run. One: on the shared 2-core machine a 2-thread run was up to 10x slower than a 1-thread one
#: as soon as other jobs ran (OpenMP threads waiting for each other), and only slightly faster on an idle machine.
DEFAULT_THREADS = 1
#: Best top-1 below this counts as a collapse to chance (10 classes: chance is 10%).
COLLAPSE_TOP1 = 0.2

BUDGET_NOTE = """\
Budget, measured on the 2-core development CPU while other jobs ran (load average 3.5-4), one `wkd fit` process per
run with 1 torch thread, 6,000 training images (47 steps of 128), validation on the 10,000 test images each epoch;
per-epoch times from the checkpoint written at every epoch end, epochs 2 and 3 of 3-epoch runs:
  - KD 14.3-14.7 s, DKD 14.7-14.9 s, WKD-L 14.4 s, WKD-F 13.6-14.0 s (mini_resnet14 teacher forward every step);
  - online self-KD 10.9 s; vanilla 8.6-9.1 s at load 2.5 (11 s assumed at load 4); BAN gen1 ~12-13 s (assumed:
    its teacher is the small mini_resnet8);
  - start-up of a run (process, data, models): about 5-7 s; with load 2-3 instead of 4, KD took 9.4-9.8 s per epoch;
  - with 2 torch threads, a KD epoch took 80-100 s under the same load (threads waiting for each other): hence 1;
  - teacher (mini_resnet14, batch 128): 100 steps + validation = 45 s, so 469 steps + validation = about 175 s.
Per seed and epoch: 8 runs with the mini_resnet14 teacher x 14.5 s + vanilla 11 + self-KD 11 + BAN-KD 12 + BAN-WKD-L
13 = 163 s; per seed fixed: 12 start-ups x 7 s + the BAN-WKD-L cost build 10 s = 94 s.
  3 seeds x (163 s x E + 94 s) + teacher 4 x 175 s + wkd-ir over 60k images 70 s  =  489 s x E + 1,052 s
  E = 12: 6,920 s = 1 h 55 min (under load 4; about 1 h 20 min with load 2-3, where epochs take 2/3 of the time)
  E = 15 (the configs' own length): 8,390 s = 2 h 20 min under load 4, over the budget. So E = 12 (DEFAULT_EPOCHS):
  the cosine LR's T_max = 12, WKD E0 = 7, DKD and self-KD warm-up 4 epochs."""


@dataclass(frozen=True)
class Method:
    """One row of the study.

    Attributes:
        name: key, run-directory name and row name.
        label: what the row means, for tables and plots.
        config: the source config in ``configs/fashion_mnist/``.
        cost: for WKD-L: the IR method whose cost file from ``<out>/ir`` the ``WKDLogit`` loss uses, or ``"uniform"``;
            ``None`` keeps the config's own cost (or there is no WKD-L loss).
        ban: a Born-Again run through ``wkd-ban`` (generations 0 and 1; generation 0 is the vanilla run).
    """

    name: str
    label: str
    config: str
    cost: str | None = None
    ban: bool = False

    @property
    def source(self) -> Path:
        return CONFIGS / self.config


METHODS: tuple[Method, ...] = (
    Method("vanilla", "student alone (CE only)", "vanilla.yaml"),
    Method("kd", "KD (T=4)", "kd.yaml"),
    Method("dkd", "DKD (α=1, β=8, T=4)", "dkd.yaml"),
    Method("fitnet", "FitNet (layer3 hint)", "fitnet.yaml"),
    Method("wkd_l_cka_paired", "WKD-L, cka_paired cost (released, row-paired)", "wkd_l.yaml", cost="cka_paired"),
    Method(
        "wkd_l_class_mean_cosine",
        "WKD-L, class_mean_cosine cost (pairing-free)",
        "wkd_l.yaml",
        cost="class_mean_cosine",
    ),
    Method("wkd_l_uniform", "WKD-L, uniform cost", "wkd_l.yaml", cost="uniform"),
    Method("wkd_f", "WKD-F (Gaussian W2, layer3)", "wkd_f.yaml"),
    Method("wkd_lf", "WKD-L + WKD-F (class_mean_cosine cost)", "wkd_lf.yaml", cost="class_mean_cosine"),
    Method("ban_kd", "Born-Again KD, generation 1", "ban_kd.yaml", ban=True),
    Method("ban_wkd_l", "Born-Again WKD-L, generation 1", "ban_wkd_l.yaml", ban=True),
    Method("self_kd_online", "online self-KD (EMA teacher + WKD-L)", "self_kd_online.yaml"),
)
METHOD_NAMES = tuple(m.name for m in METHODS)
BY_NAME = {m.name: m for m in METHODS}

#: Epoch counts rescaled with the run length: class name (last part of class_path) -> (init arg, minimum).
EPOCH_ARGUMENTS = {
    "CosineAnnealingLR": ("T_max", 1),
    "CosineDecay": ("start_epoch", 0),
    "LinearWarmup": ("warmup_epochs", 1),
    "DKD": ("warmup_epochs", 1),
}


# --------------------------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Settings:
    """What defines the runs of a study directory (kept in ``<out>/study_settings.json``)."""

    epochs: int
    teacher_epochs: int
    train_size: int
    teacher_train_size: int | None
    limit_val_batches: int | None
    ir_max_per_class: int | None
    data_dir: str | None
    teacher: str | None
    quick: bool

    def as_dict(self) -> dict:
        return dict(vars(self))


def quick_settings(**overrides) -> Settings:
    """The ``--quick`` setting, for checks only: 1,000 images and 3 epochs per student, a 1-epoch teacher on 6,000
    images, IR from 100 images per class, 10 validation batches (1,280 test images), seed 0. About 3 minutes."""
    values = dict(
        epochs=3,
        teacher_epochs=1,
        train_size=1000,
        teacher_train_size=6000,
        limit_val_batches=10,
        ir_max_per_class=100,
        data_dir=None,
        teacher=None,
        quick=True,
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)


def full_settings(**overrides) -> Settings:
    """The study's setting: the configs' data sizes, :data:`DEFAULT_EPOCHS` student epochs, the teacher's 4 epochs."""
    values = dict(
        epochs=DEFAULT_EPOCHS,
        teacher_epochs=int(load_yaml(CONFIGS / "teacher.yaml")["trainer"]["max_epochs"]),
        train_size=int(load_yaml(CONFIGS / "vanilla.yaml")["data"]["init_args"]["train_size"]),
        teacher_train_size=None,
        limit_val_batches=None,
        ir_max_per_class=None,
        data_dir=None,
        teacher=None,
        quick=False,
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)


def check_settings(out: Path, settings: Settings) -> None:
    """Record the settings of a new study directory, or refuse different ones for an existing study.

    Raises:
        SystemExit: ``out`` holds a study made with other settings (its runs would be mixed with the new ones).
    """
    path = out / "study_settings.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = {k: (previous.get(k), v) for k, v in settings.as_dict().items() if previous.get(k) != v}
        if changed:
            details = ", ".join(f"{k}: {a!r} before, {b!r} now" for k, (a, b) in changed.items())
            raise SystemExit(
                f"{out} holds a study made with other settings ({details}); its runs cannot be mixed with these. "
                "Use another --out, or the same settings to resume."
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings.as_dict(), indent=2) + "\n")


# --------------------------------------------------------------------------------------------------------------------
# Configs


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(Path(path).read_text()) or {}


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def scale_schedules(node, old_epochs: int, new_epochs: int):
    """Rescale, in place, every epoch count of :data:`EPOCH_ARGUMENTS` in a config tree from ``old`` to ``new``
    epochs (rounded half up, never below the argument's minimum, never above ``new_epochs``); returns ``node``.

    ``T_max`` equal to the old run length becomes the new run length exactly (the LR reaches its minimum at the end);
    ``T_max: max_epochs`` and a ``start_epoch`` given as a fraction of the run (the shipped configs) follow the run
    length by themselves and are left as they are.
    """
    if isinstance(node, list):
        for item in node:
            scale_schedules(item, old_epochs, new_epochs)
    elif isinstance(node, dict):
        name = str(node.get("class_path", "")).rsplit(".", 1)[-1]
        init_args = node.get("init_args")
        if name in EPOCH_ARGUMENTS and isinstance(init_args, dict) and EPOCH_ARGUMENTS[name][0] in init_args:
            key, minimum = EPOCH_ARGUMENTS[name]
            value = init_args[key]
            follows_run = isinstance(value, str) or (isinstance(value, float) and 0 < value < 1)
            if not follows_run:  # "max_epochs" and fractions of the run follow the run length by themselves
                scaled = new_epochs if value == old_epochs else round_half_up(value * new_epochs / old_epochs)
                init_args[key] = min(max(scaled, minimum), new_epochs)
        for value in node.values():
            scale_schedules(value, old_epochs, new_epochs)
    return node


def _set_wkd_logit_cost(model: dict, cost: str) -> int:
    """Point every ``WKDLogit`` loss of a config's model at ``cost``; returns how many there were."""
    count = 0
    for loss in keyed_loss_configs(model.get("losses")).values():
        if str(loss.get("class_path", "")).endswith("WKDLogit"):
            loss.setdefault("init_args", {})["cost"] = cost
            count += 1
    return count


def derive_fit_config(
    source: dict, settings: Settings, *, epochs: int, teacher_weights: str | None, cost_file: str | None
) -> dict:
    """The ``wkd fit`` config of a study run from a config of ``configs/fashion_mnist`` (a copy; ``source`` is kept).

    Sets ``max_epochs`` and rescales the schedules (:func:`scale_schedules`), turns the progress bar off, applies the
    data settings (training-set size, data folder, limited validation for ``--quick``), sets the teacher checkpoint
    when the config has a teacher, and the WKD-L cost file when ``cost_file`` is given. ``default_root_dir`` and the
    seeds are left to the command line.
    """
    config = copy.deepcopy(source)
    old_epochs = int(config.get("trainer", {}).get("max_epochs", CONFIG_EPOCHS))
    scale_schedules(config, old_epochs, epochs)
    trainer = config.setdefault("trainer", {})
    trainer.pop("default_root_dir", None)
    trainer["max_epochs"] = epochs
    trainer["enable_progress_bar"] = False
    if settings.limit_val_batches is not None:
        trainer["limit_val_batches"] = settings.limit_val_batches
    data_args = config.setdefault("data", {}).setdefault("init_args", {})
    if settings.data_dir is not None:
        data_args["data_dir"] = settings.data_dir
    model = config.setdefault("model", {})
    if model.get("teacher") is not None:
        if teacher_weights is None:
            raise ValueError("this config has a teacher: derive_fit_config needs teacher_weights.")
        model["teacher_weights"] = teacher_weights
    if cost_file is not None and not _set_wkd_logit_cost(model, cost_file):
        raise ValueError(f"a cost file was given ({cost_file}) but the config has no WKDLogit loss.")
    return config


def derive_student_config(method: Method, settings: Settings, teacher_weights: str | None, ir_dir: Path) -> dict:
    """The derived config of a student method (for BAN: the driver config with its ``fit:`` section derived)."""
    source = load_yaml(method.source)
    cost = None
    if method.cost == "uniform":
        cost = "uniform"
    elif method.cost is not None:
        cost = rel(ir_dir / f"{method.cost}.pt")
    if method.ban:
        fit = derive_fit_config(source["fit"], settings, epochs=settings.epochs, teacher_weights=None, cost_file=cost)
        fit["data"]["init_args"]["train_size"] = settings.train_size
        return {"ban": {**(source.get("ban") or {}), "generations": 2}, "fit": fit}
    config = derive_fit_config(
        source, settings, epochs=settings.epochs, teacher_weights=teacher_weights, cost_file=cost
    )
    config["data"]["init_args"]["train_size"] = settings.train_size
    return config


def derive_teacher_config(settings: Settings) -> dict:
    config = derive_fit_config(
        load_yaml(CONFIGS / "teacher.yaml"),
        settings,
        epochs=settings.teacher_epochs,
        teacher_weights=None,
        cost_file=None,
    )
    if settings.teacher_train_size is not None:
        config["data"]["init_args"]["train_size"] = settings.teacher_train_size
    return config


def derive_ir_config(settings: Settings, teacher_weights: str, ir_dir: Path) -> dict:
    """``configs/fashion_mnist/ir.yaml`` for the study's teacher: all :data:`IR_METHODS`, no progress bar."""
    config = load_yaml(CONFIGS / "ir.yaml")
    # overwrite: the study runs wkd-ir only when its files are missing or belong to another teacher
    config.update(teacher_weights=teacher_weights, output_dir=rel(ir_dir), methods=list(IR_METHODS), progress=False)
    config["overwrite"] = True
    data_args = config.setdefault("data", {}).setdefault("init_args", {})
    if settings.teacher_train_size is not None:
        data_args["train_size"] = settings.teacher_train_size
    if settings.data_dir is not None:
        data_args["data_dir"] = settings.data_dir
    if settings.ir_max_per_class is not None:
        config["max_per_class"] = settings.ir_max_per_class
    return config


def ban_gen0_matches_vanilla(vanilla: dict, ban_driver: dict, seed: int) -> bool:
    """Whether generation 0 of a derived BAN driver config is the derived vanilla config (so the run can be shared).

    ``wkd-ban`` trains generation 0 from the ``fit:`` section without its teacher and without the losses that need
    one; every BAN config of the study has only such losses, so generation 0 has none, like vanilla.
    """
    gen0 = copy.deepcopy(ban_driver["fit"])
    model = gen0.get("model", {})
    model.pop("teacher", None)
    model.pop("teacher_weights", None)
    model.pop("losses", None)
    other = copy.deepcopy(vanilla)
    other.get("model", {}).pop("losses", None)
    other["seed_everything"] = seed  # the vanilla run gets --seed_everything <seed>; generation 0 gets seed + 0
    return gen0 == other


# --------------------------------------------------------------------------------------------------------------------
# Runs and their state


def rel(path: Path | str) -> str:
    """``path`` relative to the repository root when it is inside it (portable records), else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def run_state(run_dir: Path) -> str:
    """``"complete"`` (skip it), ``"resume"`` (``--ckpt_path last``) or ``"fresh"``."""
    if is_complete(run_dir):
        return "complete"
    return "resume" if can_resume(run_dir) else "fresh"


def fit_command(config_file: Path, run_dir: Path, seed: int | None, epochs: int, resume: bool) -> list[str]:
    """The ``wkd fit`` command line of one run (as ``python -m wkd_lightning.cli``)."""
    command = [sys.executable, "-m", "wkd_lightning.cli", "fit", "-c", rel(config_file)]
    if seed is not None:
        command += ["--seed_everything", str(seed), "--data.init_args.seed", str(seed)]
    command += [
        "--trainer.default_root_dir",
        rel(run_dir),
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.enable_progress_bar",
        "false",
    ]
    if resume:
        command += ["--ckpt_path", "last"]
    return command


def ban_command(driver_file: Path, run_dir: Path, seed: int, epochs: int) -> list[str]:
    """The ``wkd-ban`` command line of one Born-Again run (resume is ``wkd-ban``'s own, per generation)."""
    return [
        sys.executable,
        "-m",
        "wkd_lightning.selfkd.ban",
        "-c",
        rel(driver_file),
        "--run_dir",
        rel(run_dir),
        # passed on to `wkd fit` in each generation; the `=` form keeps wkd-ban's parser from reading the values
        f"--data.init_args.seed={seed}",
        f"--trainer.max_epochs={epochs}",
        "--trainer.enable_progress_bar=false",
    ]


def execute(command: Sequence[str], log_file: Path, threads: int | None = DEFAULT_THREADS) -> int:
    """Run ``command`` from the repository root with its output in ``log_file``; returns the exit status.

    ``threads`` sets ``OMP_NUM_THREADS`` (torch's intra-op threads) of the process; ``None`` keeps the environment's.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    with open(log_file, "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        return subprocess.run(list(command), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def log_tail(log_file: Path, lines: int = 15) -> str:
    try:
        return "\n".join(Path(log_file).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


# --------------------------------------------------------------------------------------------------------------------
# The study


class Study:
    """Runs (or resumes) the study in ``out`` and records it; see the module docstring.

    Args:
        out: the study directory.
        settings: what defines the runs.
        seeds: the seeds to run.
        methods: the methods to run (names of :data:`METHODS`; vanilla is added for BAN methods).
        runner: ``runner(command, log_file) -> exit status``; default :func:`execute` (tests replace it).
        results_dir: where the report goes (``benchmarks/results`` for the full study, ``out`` for ``--quick``).
        threads: torch threads of each run's process (``None``: the environment's).
    """

    def __init__(
        self,
        out: Path,
        settings: Settings,
        seeds: Sequence[int],
        methods: Sequence[str] = METHOD_NAMES,
        *,
        runner: Callable[[Sequence[str], Path], int] | None = None,
        results_dir: Path | None = None,
        threads: int | None = DEFAULT_THREADS,
    ) -> None:
        self.out = Path(out)
        self.settings = settings
        self.seeds = list(dict.fromkeys(seeds))
        selected = set(methods)
        if any(BY_NAME[m].ban for m in selected) and "vanilla" not in selected:
            print("[study] Born-Again methods share generation 0 with the vanilla run: vanilla is added.")
            selected.add("vanilla")
        self.methods = [m for m in METHODS if m.name in selected]  # the order of METHODS: vanilla first
        self.runner = runner or (lambda command, log_file: execute(command, log_file, threads=threads))
        self.threads = threads
        self.results_dir = Path(results_dir) if results_dir is not None else RESULTS
        self.ir_dir = self.out / "ir"
        self.config_dir = self.out / "configs"
        self.log_dir = self.out / "logs"
        self.record_file = self.out / "study.json"
        previous = read_json(self.record_file) or {}
        self.records: dict[str, dict] = {r["key"]: r for r in previous.get("runs", []) if "key" in r}
        self.teacher_record: dict = previous.get("teacher") or {}
        self.ir_record: dict = previous.get("ir") or {}
        self.failures: list[str] = []
        self.count, self.total = 0, 0
        self.command = "python benchmarks/fashion_mnist_study.py " + " ".join(sys.argv[1:])  # for the report

    # -- steps -------------------------------------------------------------------------------------------------------

    def run(self) -> dict:
        """Run every missing step, then write the record and the report; returns the report's JSON content."""
        check_settings(self.out, self.settings)
        started = time.monotonic()
        needs_teacher = any(self._needs_teacher(m) for m in self.methods)
        needs_ir = any(m.cost not in (None, "uniform") for m in self.methods)
        self.total = len(self.seeds) * len(self.methods) + int(needs_teacher and not self.settings.teacher)
        self.total += int(needs_ir)
        teacher = self.ensure_teacher() if needs_teacher else None
        if needs_ir:
            self.ensure_ir(teacher)
        for seed in self.seeds:
            for method in self.methods:
                self.ensure_student(method, seed, teacher)
        print(f"[study] all steps done in {format_seconds(time.monotonic() - started)}.")
        report = self.report()
        if self.failures:
            print(f"[study] {len(self.failures)} step(s) failed: {', '.join(self.failures)}; see {rel(self.log_dir)}.")
        return report

    def _needs_teacher(self, method: Method) -> bool:
        return method.cost not in (None, "uniform") or load_yaml(method.source).get("model", {}).get("teacher")

    def _step(self, what: str) -> str:
        self.count += 1
        return f"[study] ({self.count}/{self.total}) {what}"

    def ensure_teacher(self) -> str:
        """Train the teacher into ``<out>/teacher`` (or take ``--teacher``); returns its checkpoint path."""
        if self.settings.teacher:
            path = Path(self.settings.teacher)
            if not path.is_file():
                raise SystemExit(f"--teacher {path}: no such checkpoint.")
            summary = read_json(path.parent.parent / "summary.json") or {}
            self.teacher_record = {"checkpoint": rel(path), "trained_here": False, **_top1(summary)}
            print(f"[study] teacher: {rel(path)} (given with --teacher)")
            self._save()
            return rel(path)
        run_dir = self.out / "teacher"
        config_file = write_yaml(self.config_dir / "teacher.yaml", derive_teacher_config(self.settings))
        state = run_state(run_dir)
        seconds = self.teacher_record.get("seconds")
        if state == "complete":
            print(self._step(f"teacher: finished earlier, skipped ({rel(run_dir)})"))
        else:
            print(self._step(f"teacher: training ({state}) into {rel(run_dir)} ..."), flush=True)
            command = fit_command(config_file, run_dir, None, self.settings.teacher_epochs, state == "resume")
            started = time.monotonic()
            status = self.runner(command, self.log_dir / "teacher.log")
            seconds = time.monotonic() - started
            if status != 0 or not is_complete(run_dir):
                raise SystemExit(
                    f"[study] the teacher run failed (exit status {status}); every distillation run needs it. "
                    f"Last lines of {rel(self.log_dir / 'teacher.log')}:\n{log_tail(self.log_dir / 'teacher.log')}"
                )
        summary = read_json(run_dir / "summary.json") or {}
        checkpoint = run_dir / "checkpoints" / "best.ckpt"
        self.teacher_record = {
            "checkpoint": rel(checkpoint),
            "trained_here": True,
            "config": rel(config_file),
            "source_config": rel(CONFIGS / "teacher.yaml"),
            "run_dir": rel(run_dir),
            "seconds": seconds,
            **_top1(summary),
        }
        print(
            f"[study] teacher: best top-1 {_pct(summary.get('best_val_top1'))}, last "
            f"{_pct(summary.get('last_val_top1'))}, {format_seconds(seconds)}"
        )
        self._save()
        return rel(checkpoint)

    def ensure_ir(self, teacher: str) -> None:
        """Build the teacher's cost matrices with ``wkd-ir`` unless all of them exist for this teacher."""
        files = {m: self.ir_dir / f"{m}.pt" for m in IR_METHODS}
        done = all(_ir_teacher(path) == teacher for path in files.values())
        seconds = self.ir_record.get("seconds")
        if done:
            print(self._step(f"IR cost matrices: built earlier, skipped ({rel(self.ir_dir)})"))
        else:
            print(self._step(f"IR cost matrices: wkd-ir {', '.join(IR_METHODS)} -> {rel(self.ir_dir)} ..."), flush=True)
            config_file = write_yaml(self.config_dir / "ir.yaml", derive_ir_config(self.settings, teacher, self.ir_dir))
            command = [sys.executable, "-m", "wkd_lightning.ir.cli", "-c", rel(config_file)]
            started = time.monotonic()
            status = self.runner(command, self.log_dir / "ir.log")
            seconds = time.monotonic() - started
            missing = [m for m, path in files.items() if not path.is_file()]
            if status != 0 or missing:
                raise SystemExit(
                    f"[study] wkd-ir failed (exit status {status}, missing {missing}); the WKD-L runs need its files. "
                    f"Last lines of {rel(self.log_dir / 'ir.log')}:\n{log_tail(self.log_dir / 'ir.log')}"
                )
        self.ir_record = {"dir": rel(self.ir_dir), "seconds": seconds, "matrices": read_ir_scores(self.ir_dir)}
        scores = ", ".join(
            f"{m} {v['score']:.3f}" for m, v in self.ir_record["matrices"].items() if v.get("score") is not None
        )
        print(f"[study] IR semantic scores (chance {_chance(self.ir_record['matrices'])}): {scores}")
        self._save()

    def student_dirs(self, method: Method, seed: int) -> tuple[Path, Path]:
        """``(directory of the command, directory of the reported run)``: equal, except gen1 for BAN."""
        run_dir = self.out / method.name / f"seed{seed}"
        return run_dir, (run_dir / "gen1" if method.ban else run_dir)

    def ensure_student(self, method: Method, seed: int, teacher: str | None) -> None:
        """Run (or skip, or resume) one method at one seed, and record it."""
        run_dir, result_dir = self.student_dirs(method, seed)
        key = f"{method.name}/seed{seed}"
        config = derive_student_config(method, self.settings, teacher, self.ir_dir)
        config_file = self.config_dir / (f"{method.name}_seed{seed}.yaml" if method.ban else f"{method.name}.yaml")
        if method.ban:
            config["fit"]["seed_everything"] = seed  # wkd-ban sets seed + k per generation; no --seed_everything
            vanilla_dir = self.out / "vanilla" / f"seed{seed}"
            vanilla_config = derive_student_config(BY_NAME["vanilla"], self.settings, teacher, self.ir_dir)
            if not ban_gen0_matches_vanilla(vanilla_config, config, seed):
                raise RuntimeError(f"{method.config}: generation 0 would differ from vanilla.yaml; cannot share it.")
        write_yaml(config_file, config)
        state = run_state(result_dir)
        record = self.records.get(key, {})
        seconds = record.get("seconds")
        status = "complete"
        if state == "complete":
            print(self._step(f"{key}: finished earlier, skipped ({rel(result_dir)})"))
        elif method.ban and not is_complete(vanilla_dir):
            status = "skipped: its generation 0 (the vanilla run of this seed) did not finish"
            print(self._step(f"{key}: {status}"))
            self.failures.append(key)
        else:
            verb = "resuming" if state == "resume" else "training"
            print(self._step(f"{key}: {verb} ({method.label}) in {rel(result_dir)} ..."), flush=True)
            if method.ban:
                self._link_gen0(run_dir, vanilla_dir)
                command = ban_command(config_file, run_dir, seed, self.settings.epochs)
            else:
                command = fit_command(config_file, run_dir, seed, self.settings.epochs, state == "resume")
            log_file = self.log_dir / f"{method.name}_seed{seed}.log"
            started = time.monotonic()
            exit_status = self.runner(command, log_file)
            seconds = time.monotonic() - started + ((seconds or 0.0) if state == "resume" else 0.0)
            if exit_status != 0 or not is_complete(result_dir):
                status = f"failed (exit status {exit_status})"
                self.failures.append(key)
                print(f"[study] {key}: FAILED after {format_seconds(seconds)}; last lines of {rel(log_file)}:")
                print(log_tail(log_file))
        summary = read_json(result_dir / "summary.json") or {}
        self.records[key] = {
            "key": key,
            "method": method.name,
            "label": method.label,
            "seed": seed,
            "config": rel(config_file),
            "source_config": rel(method.source),
            "run_dir": rel(result_dir),
            "status": status if summary.get("complete") or status != "complete" else "incomplete",
            "seconds": seconds,
            **_top1(summary),
        }
        if status == "complete" and summary:
            print(
                f"[study] {key}: best top-1 {_pct(summary.get('best_val_top1'))}, last "
                f"{_pct(summary.get('last_val_top1'))} ({format_seconds(seconds)})"
            )
        self._save()

    def _link_gen0(self, run_dir: Path, vanilla_dir: Path) -> None:
        """Make ``run_dir/gen0`` a relative symbolic link to the vanilla run of the same seed."""
        gen0 = run_dir / "gen0"
        target = os.path.relpath(vanilla_dir, run_dir)
        if gen0.is_symlink():
            if os.readlink(gen0) == target:
                return
            gen0.unlink()
        elif gen0.exists():
            raise SystemExit(f"{gen0} exists and is not the link to {vanilla_dir} the study makes; remove it.")
        run_dir.mkdir(parents=True, exist_ok=True)
        gen0.symlink_to(target, target_is_directory=True)

    # -- records and report -----------------------------------------------------------------------------------------

    def _save(self) -> None:
        data = {
            "settings": self.settings.as_dict(),
            "threads": self.threads,
            "seeds": self.seeds,
            "methods": [m.name for m in self.methods],
            "teacher": self.teacher_record,
            "ir": self.ir_record,
            "runs": sorted(self.records.values(), key=lambda r: (r["seed"], METHOD_NAMES.index(r["method"]))),
        }
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.record_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.record_file)

    def report(self) -> dict:
        """Aggregate the recorded runs and write the Markdown, JSON and PNG report to ``results_dir``."""
        records = [r for r in self.records.values() if r["method"] in BY_NAME]
        curves = {}
        for r in records:
            if r.get("status") == "complete":
                curves.setdefault(r["method"], {})[str(r["seed"])] = read_val_curve(ROOT / r["run_dir"] / "metrics.csv")
        rows = aggregate(records, reference=REFERENCE)
        report = {
            "generated": dt.datetime.now().isoformat(timespec="seconds"),
            "command": self.command.strip(),
            "settings": self.settings.as_dict(),
            "study_dir": rel(self.out),
            "reference": REFERENCE,
            "teacher": self.teacher_record,
            "ir": self.ir_record.get("matrices", {}),
            "methods": rows,
            "runs": sorted(records, key=lambda r: (r["seed"], METHOD_NAMES.index(r["method"]))),
            "curves": curves,
        }
        write_report(report, self.results_dir)
        return report


def _top1(summary: dict) -> dict:
    return {
        "best_top1": summary.get("best_val_top1"),
        "last_top1": summary.get("last_val_top1"),
        "epochs": summary.get("epochs"),
        "complete": bool(summary.get("complete")),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _ir_teacher(path: Path) -> str | None:
    """The teacher checkpoint a ``wkd-ir`` file was built from, or None when the file is missing or unreadable."""
    if not path.is_file():
        return None
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True).get("teacher_weights")
    except Exception:
        return None


def read_ir_scores(ir_dir: Path) -> dict[str, dict]:
    """``{method: {"score", "chance", "file"}}`` from the metadata of the ``wkd-ir`` files in ``ir_dir``."""
    import torch

    scores = {}
    for method in IR_METHODS:
        path = Path(ir_dir) / f"{method}.pt"
        if not path.is_file():
            continue
        record = torch.load(path, map_location="cpu", weights_only=True)
        score = record.get("semantic_score") or {}
        scores[method] = {"score": score.get("score"), "chance": score.get("chance"), "file": rel(path)}
    return scores


def _chance(matrices: dict) -> str:
    values = {v.get("chance") for v in matrices.values() if v.get("chance") is not None}
    return f"{values.pop():.3f}" if len(values) == 1 else "n/a"


# --------------------------------------------------------------------------------------------------------------------
# Aggregation (pure functions: tested on synthetic records)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1); ``std`` is None for fewer than 2 values, both for none."""
    values = list(values)
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(records: Iterable[dict], reference: str = REFERENCE) -> list[dict]:
    """Per method (in the order of :data:`METHODS`): mean ± std over seeds of best and last top-1 (in %), and the
    per-seed paired difference to ``reference`` (method − reference at the same seed, mean ± std over the seeds both
    finished). Only complete runs count.

    Args:
        records: run records with ``method``, ``seed``, ``best_top1`` and ``last_top1`` (fractions in [0, 1]) and
            ``complete``.
        reference: the method the differences are taken to.
    """
    done: dict[str, dict[int, dict]] = {}
    for r in records:
        if r.get("complete") and r.get("best_top1") is not None:
            done.setdefault(r["method"], {})[int(r["seed"])] = r
    rows = []
    ordered = [m for m in METHOD_NAMES if m in done] + sorted(m for m in done if m not in METHOD_NAMES)
    for name in ordered:
        runs = done[name]
        seeds = sorted(runs)
        row = {
            "method": name,
            "label": BY_NAME[name].label if name in BY_NAME else name,
            "config": rel(BY_NAME[name].source) if name in BY_NAME else None,
            "seeds": seeds,
            "n": len(seeds),
            "collapsed": [s for s in seeds if runs[s]["best_top1"] < COLLAPSE_TOP1],
            "seconds_mean": mean_std([runs[s]["seconds"] for s in seeds if runs[s].get("seconds")])[0],
        }
        for key in ("best", "last"):
            per_seed = {s: 100 * runs[s][f"{key}_top1"] for s in seeds}
            row[f"{key}_per_seed"] = {str(s): v for s, v in per_seed.items()}
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(per_seed.values())
            ref = done.get(reference, {})
            paired = {s: per_seed[s] - 100 * ref[s][f"{key}_top1"] for s in seeds if s in ref}
            if name == reference or not paired:
                row[f"{key}_vs_{reference}_mean"], row[f"{key}_vs_{reference}_std"] = None, None
                row[f"{key}_vs_{reference}_per_seed"] = {}
            else:
                row[f"{key}_vs_{reference}_per_seed"] = {str(s): v for s, v in paired.items()}
                row[f"{key}_vs_{reference}_mean"], row[f"{key}_vs_{reference}_std"] = mean_std(paired.values())
            row[f"{key}_vs_{reference}_n"] = len(paired) if name != reference else 0
        rows.append(row)
    return rows


def format_pm(mean: float | None, std: float | None, *, signed: bool = False) -> str:
    """``"84.50 ± 0.31"``; ``"84.50"`` without a spread (one seed); ``"–"`` without a value."""
    if mean is None:
        return "–"
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return f"{text} ± {std:.2f}" if std is not None else text


def markdown_table(rows: Sequence[dict], reference: str = REFERENCE) -> str:
    """The main table: one row per method, mean ± std over seeds and paired differences to ``reference``."""
    lines = [
        f"| method | what | seeds | best top-1 (%) | last top-1 (%) | best − {reference.upper()} (paired) "
        f"| last − {reference.upper()} (paired) | near chance | time per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        collapsed = ", ".join(f"seed {s}" for s in row["collapsed"]) or "–"
        lines.append(
            f"| {row['method']} | {row['label']} | {row['n']} | {format_pm(row['best_mean'], row['best_std'])} "
            f"| {format_pm(row['last_mean'], row['last_std'])} "
            f"| {format_pm(row[f'best_vs_{reference}_mean'], row[f'best_vs_{reference}_std'], signed=True)} "
            f"| {format_pm(row[f'last_vs_{reference}_mean'], row[f'last_vs_{reference}_std'], signed=True)} "
            f"| {collapsed} | {format_seconds(row.get('seconds_mean'))} |"
        )
    return "\n".join(lines)


def per_seed_table(rows: Sequence[dict]) -> str:
    """Best / last top-1 (%) of every run, one column per seed."""
    seeds = sorted({int(s) for row in rows for s in row["best_per_seed"]})
    lines = [
        "| method | " + " | ".join(f"seed {s} best / last" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for row in rows:
        cells = []
        for s in seeds:
            best, last = row["best_per_seed"].get(str(s)), row["last_per_seed"].get(str(s))
            cells.append("–" if best is None else f"{best:.2f} / {last:.2f}")
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ir_table(matrices: dict[str, dict]) -> str:
    """Semantic score of each IR matrix beside its chance level, and which runs use it."""
    users = {}
    for m in METHODS:
        if m.cost is not None:
            users.setdefault(m.cost, []).append(m.name)
    users.setdefault("class_mean_cosine", []).append("ban_wkd_l (rebuilt from generation 0)")
    lines = ["| IR matrix | semantic score | chance | used by |", "|---|---|---|---|"]
    for method, value in matrices.items():
        score = "n/a" if value.get("score") is None else f"{value['score']:.3f}"
        chance = "n/a" if value.get("chance") is None else f"{value['chance']:.3f}"
        lines.append(f"| {method} | {score} | {chance} | {', '.join(users.get(method, [])) or '–'} |")
    return "\n".join(lines)


def markdown_report(report: dict, image_names: dict[str, str] | None = None) -> str:
    """The whole Markdown report (settings, main table, per-seed table, IR scores, plots)."""
    settings = report["settings"]
    rows = report["methods"]
    reference = report.get("reference", REFERENCE)
    teacher = report.get("teacher") or {}
    seeds = sorted({s for row in rows for s in row["seeds"]})
    val = (
        "all 10,000 test images"
        if settings.get("limit_val_batches") is None
        else (f"the first {settings['limit_val_batches']} batches of the test set")
    )
    total = sum(r.get("seconds") or 0 for r in report.get("runs", []))
    teacher_images = "60,000" if settings.get("teacher_train_size") is None else f"{settings['teacher_train_size']:,}"
    parts = [
        "# Fashion-MNIST study" + (" (--quick check, not a result)" if settings.get("quick") else ""),
        "",
        f"Generated {report['generated']} by `{report['command'].strip()}` (study directory `{report['study_dir']}`).",
        "",
        f"- Student mini_resnet8 on {settings['train_size']:,} training images for {settings['epochs']} epochs, "
        f"seeds {seeds} (a seed draws the initialisation, the training subset, the data order and the augmentation);"
        f" validation on {val} after every epoch.",
        f"- Teacher mini_resnet14 ({teacher.get('checkpoint', 'n/a')}): best top-1 {_pct(teacher.get('best_top1'))}"
        f", last {_pct(teacher.get('last_top1'))}, {teacher.get('epochs', 'n/a')} epoch(s) on {teacher_images} images.",
        f"- Mean ± sample std over seeds. Paired difference: method − {reference.upper()} at the same seed, "
        "mean ± std over the seeds both finished. 'near chance': best top-1 below "
        f"{100 * COLLAPSE_TOP1:.0f}% (chance is 10%). Training time of all runs: {format_seconds(total)}.",
        "",
        markdown_table(rows, reference),
        "",
        "## Per seed (best / last top-1, %)",
        "",
        per_seed_table(rows),
        "",
        "## Cost matrices of the teacher (wkd-ir)",
        "",
        "Semantic score: share of classes whose nearest class under the cost is in the same group (tops, footwear).",
        "",
        ir_table(report.get("ir") or {}),
        "",
    ]
    if image_names:
        parts += ["## Plots", ""] + [f"![{title}]({name})" for title, name in image_names.items()] + [""]
    return "\n".join(parts)


def read_val_curve(metrics_csv: Path) -> list[float | None]:
    """Validation top-1 (%) per epoch from a run's ``metrics.csv`` (index = epoch; the last value of an epoch wins,
    so rows written again after a resume do not duplicate it); ``[]`` when the file is missing."""
    path = Path(metrics_csv)
    if not path.is_file():
        return []
    by_epoch: dict[int, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            value = row.get("val/top1")
            if value not in (None, "") and row.get("epoch") not in (None, ""):
                by_epoch[int(float(row["epoch"]))] = 100 * float(value)
    if not by_epoch:
        return []
    return [by_epoch.get(e) for e in range(max(by_epoch) + 1)]


# --------------------------------------------------------------------------------------------------------------------
# Report files and plots


def write_report(report: dict, results_dir: Path) -> dict[str, Path]:
    """Write ``fashion_mnist.json``, ``fashion_mnist.md`` and the two PNG plots to ``results_dir``."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": results_dir / f"{REPORT_NAME}.json",
        "md": results_dir / f"{REPORT_NAME}.md",
        "bars": results_dir / f"{REPORT_NAME}_top1.png",
        "curves": results_dir / f"{REPORT_NAME}_curves.png",
    }
    images = {}
    if report["methods"]:
        plot_bars(report["methods"], paths["bars"], title=_plot_title(report))
        images["top-1 per method"] = paths["bars"].name
    if any(report["curves"].values()):
        plot_curves(report["curves"], paths["curves"], title=_plot_title(report))
        images["validation top-1 per epoch"] = paths["curves"].name
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(markdown_report(report, images))
    print(
        f"[study] report: {rel(paths['md'])}, {rel(paths['json'])}"
        + "".join(f", {rel(results_dir / n)}" for n in images.values())
    )
    print()
    print(markdown_table(report["methods"], report.get("reference", REFERENCE)))
    return paths


def _plot_title(report: dict) -> str:
    s = report["settings"]
    seeds = sorted({x for row in report["methods"] for x in row["seeds"]})
    return f"Fashion-MNIST, mini_resnet8 on {s['train_size']:,} images, {s['epochs']} epochs, seeds {seeds}" + (
        " (--quick)" if s.get("quick") else ""
    )


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def plot_bars(rows: Sequence[dict], path: Path, *, title: str = "") -> None:
    """Bars of mean best and last top-1 per method with ± std error bars, the seeds as dots, and KD's mean line."""
    import numpy as np

    figure = _figure(max(8.0, 0.8 * len(rows) + 3), 5.5)
    axes = figure.add_subplot()
    x = np.arange(len(rows))
    width = 0.38
    values = []
    for offset, key, colour in ((-width / 2, "best", "tab:blue"), (width / 2, "last", "tab:orange")):
        means = [row[f"{key}_mean"] for row in rows]
        errors = [row[f"{key}_std"] or 0.0 for row in rows]
        axes.bar(x + offset, means, width, yerr=errors, capsize=3, color=colour, alpha=0.8, label=f"{key} top-1")
        for i, row in enumerate(rows):
            seeds = list(row[f"{key}_per_seed"].values())
            axes.plot([x[i] + offset] * len(seeds), seeds, "k.", markersize=4)
            values += seeds
    reference = next((row for row in rows if row["method"] == REFERENCE), None)
    if reference is not None:
        axes.axhline(reference["best_mean"], color="grey", linestyle="--", linewidth=1, label="KD mean best")
    low, high = min(values), max(values)
    axes.set_ylim(max(0.0, low - 0.15 * (high - low) - 0.5), min(100.0, high + 0.15 * (high - low) + 0.5))
    axes.set_xticks(x, [row["method"] for row in rows], rotation=35, ha="right")
    axes.set_ylabel("validation top-1 (%)")
    axes.set_title(title + "\nmean ± std over seeds (dots: seeds)", fontsize=10)
    axes.legend(fontsize=8, loc="best")
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def plot_curves(curves: dict[str, dict[str, list]], path: Path, *, title: str = "") -> None:
    """Validation top-1 per epoch, mean over seeds, one line per method; the right panel zooms on the second half of
    training (from the middle epoch on), where the methods separate."""
    import numpy as np
    from matplotlib import colormaps

    figure = _figure(15, 5.8)
    full, zoom = figure.subplots(1, 2)
    colours = colormaps["tab10"]
    styles = (("-", "o"), ("--", "s"), (":", "^"))
    zoom_values, lines = [], []
    for i, (method, per_seed) in enumerate(curves.items()):
        series = [c for c in per_seed.values() if c]
        if not series:
            continue
        length = max(len(c) for c in series)
        table = np.full((len(series), length), np.nan)
        for row, curve in enumerate(series):
            table[row, : len(curve)] = [np.nan if v is None else v for v in curve]
        mean = np.nanmean(table, axis=0)
        epochs = np.arange(1, length + 1)
        linestyle, marker = styles[(i // 10) % len(styles)]
        style = dict(color=colours(i % 10), linestyle=linestyle, marker=marker, markersize=3, linewidth=1.3)
        lines += full.plot(epochs, mean, label=f"{method} ({len(series)})", **style)
        start = max(0, (length - 1) // 2)
        zoom.plot(epochs[start:], mean[start:], **style)
        zoom_values += [v for v in mean[start:] if np.isfinite(v)]
    for axes in (full, zoom):
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    full.set_ylabel("validation top-1 (%), mean over seeds")
    full.set_title(title, fontsize=9)
    zoom.set_title("second half of training (zoom)", fontsize=9)
    if zoom_values:
        high = max(zoom_values)
        zoom.set_ylim(max(min(zoom_values), high - 8) - 0.3, high + 0.3)
    figure.legend(handles=lines, fontsize=7, loc="center right", title="method (seeds)", title_fontsize=7)
    figure.tight_layout(rect=(0, 0, 0.84, 1))
    figure.savefig(path, dpi=110)


# --------------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fashion_mnist_study.py",
        description="The Fashion-MNIST study: teacher, IR cost matrices, then every method for several seeds; "
        "resumable; writes <out>/study.json and the report (benchmarks/results/fashion_mnist.*, or <out>/ with "
        "--quick).",
        epilog=BUDGET_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, help="study directory (default runs/study, runs/study_quick with --quick).")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2; 0 with --quick).")
    parser.add_argument("--epochs", type=int, help=f"student epochs (default {DEFAULT_EPOCHS}; 3 with --quick).")
    parser.add_argument("--quick", action="store_true", help="tiny setting for checks (a few minutes); see --help.")
    parser.add_argument("--methods", nargs="+", choices=METHOD_NAMES, metavar="METHOD", help=", ".join(METHOD_NAMES))
    parser.add_argument("--teacher", help="use this teacher checkpoint instead of training one into <out>/teacher.")
    parser.add_argument(
        "--teacher_epochs", type=int, help="teacher epochs (default: teacher.yaml's 4; 1 with --quick)."
    )
    parser.add_argument("--train_size", type=int, help="student training images (default 6000; 1000 with --quick).")
    parser.add_argument("--data_dir", help="Fashion-MNIST folder (default: the data module's, Debian's package).")
    parser.add_argument("--results_dir", type=Path, help="where the report goes (default: see above).")
    parser.add_argument(
        "--threads", type=int, default=DEFAULT_THREADS, help=f"torch threads per run (default {DEFAULT_THREADS})."
    )
    parser.add_argument("--report_only", action="store_true", help="no training: the report of the recorded runs.")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Entry point; returns the report's JSON content."""
    args = build_parser().parse_args(argv)
    overrides = dict(
        epochs=args.epochs,
        teacher_epochs=args.teacher_epochs,
        train_size=args.train_size,
        data_dir=args.data_dir,
        teacher=rel(args.teacher) if args.teacher else None,
    )
    for name in ("epochs", "teacher_epochs", "train_size"):
        if overrides[name] is not None and overrides[name] < 1:
            raise SystemExit(f"--{name} must be >= 1, got {overrides[name]}.")
    settings = quick_settings(**overrides) if args.quick else full_settings(**overrides)
    out = args.out or ROOT / ("runs/study_quick" if args.quick else "runs/study")
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    results_dir = args.results_dir or (out if args.quick else RESULTS)
    study = Study(out, settings, seeds, args.methods or METHOD_NAMES, results_dir=results_dir, threads=args.threads)
    study.command = " ".join(["python benchmarks/fashion_mnist_study.py", *(sys.argv[1:] if argv is None else argv)])
    print(
        f"[study] {rel(out)}: {len(study.methods)} methods x seeds {study.seeds}, {settings.epochs} epochs on "
        f"{settings.train_size:,} images{' (--quick)' if settings.quick else ''}; report -> {rel(results_dir)}"
    )
    if args.report_only:
        return study.report()
    report = study.run()
    if study.failures:
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
