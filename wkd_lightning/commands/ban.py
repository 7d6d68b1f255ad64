"""``wkd-ban``: Born-Again Networks (Furlanello et al., 2018) with KD or WKD-L, generation after generation (SPEC §7).

Usage::

    wkd-ban -c configs/fashion_mnist/ban_kd.yaml
    wkd-ban -c configs/fashion_mnist/ban_wkd_l.yaml --generations 3 --run_dir runs/fashion_mnist/ban_wkd_l
    wkd-ban -c configs/fashion_mnist/kd.yaml --generations 3 --run_dir runs/ban_kd --trainer.max_epochs=5

(``python -m wkd_lightning.commands.ban`` is the same command.) Every argument that is not an option of ``wkd-ban``
(``--trainer.max_epochs=5``, ``--data.data_dir DIR``...) is passed on to ``wkd fit`` in every generation.

* **Generation 0** trains the config's student alone with cross-entropy: the config's teacher is removed and the
  losses that need a teacher (KD, WKD-L, ...) are dropped.
* **Generation k ≥ 1** trains a fresh student of the same architecture (seed ``seed_everything + k``, so each
  generation starts from a new random initialisation) with the config's distillation losses, distilled from generation
  k−1's **last** checkpoint (``checkpoints/last.ckpt``, the weights at the end of its training, as Born-Again Networks
  do) as a frozen teacher: ``model.teacher`` is set to generation k−1's student architecture and
  ``model.teacher_weights`` to that checkpoint. ``--teacher_checkpoint best`` takes ``checkpoints/best.ckpt`` (best
  validation top-1) instead, with a warning: the data modules validate on the test split, so picking teachers by it is
  test-set selection.
* **WKD-L cost**: with ``--ir_method M`` each generation k ≥ 1 first builds its cost from generation k−1's
  checkpoint with the IR tool (``wkd-ir``: method ``M`` of :data:`~wkd_lightning.commands.ir.CLI_METHODS`, features at
  ``--ir_layer``, over generation k−1's training data) and points every ``WKDLogit`` at it; a resumed generation
  keeps the cost file it started with. Without ``--ir_method``, ``WKDLogit`` keeps the config's ``cost`` (a file or
  ``uniform``) in every generation.

Files: ``<run_dir>/gen<k>/`` holds what ``wkd fit`` writes (``config.yaml``, ``metrics.csv``, ``summary.json``,
``checkpoints/{best,last}.ckpt``) plus ``config.input.yaml`` (the config this driver wrote for the generation) and
``ir/`` (the cost files); ``<run_dir>/generations.md`` and ``generations.json`` hold the table of all generations
(best and last validation top-1), which is also printed.

**Resume**: run the same command again. Generations whose ``summary.json`` says ``complete`` are skipped; an
unfinished one resumes with ``--ckpt_path last`` when it has a ``checkpoints/last*.ckpt`` (the newest of
``last.ckpt`` and ``last-interrupted.ckpt``).

**Config file**: either a ``wkd fit`` config, or a driver config with two sections: ``ban:`` (defaults of this
command's options: ``generations``, ``run_dir``, ``ir_method``, ``ir_layer``, ``teacher_checkpoint``; the command line
wins) and ``fit:``
(the ``wkd fit`` config of every generation). ``run_dir`` defaults to the fit config's ``trainer.default_root_dir``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from lightning.pytorch.utilities import rank_zero_only

from wkd_lightning.commands import ir as ir_cli
from wkd_lightning.commands.wkd import make_cli
from wkd_lightning.losses import WKDLogit
from wkd_lightning.losses.base import keyed_loss_configs
from wkd_lightning.module import DistillationModule
from wkd_lightning.run.distributed import say
from wkd_lightning.run.errors import run_command
from wkd_lightning.run.files import write_text_atomically
from wkd_lightning.run.summary import can_resume, is_complete, read_summary

#: Options of this command that a driver config's ``ban:`` section may set.
BAN_OPTIONS = ("generations", "run_dir", "ir_method", "ir_layer", "teacher_checkpoint")
#: Which checkpoint of generation k-1 teaches generation k: ``last`` (Born-Again Networks) or ``best`` (opt-in).
TEACHER_CHECKPOINTS = ("last", "best")
#: The warning of ``--teacher_checkpoint best``.
BEST_TEACHER_WARNING = (
    "wkd-ban --teacher_checkpoint best: each generation's teacher is the checkpoint with the best validation top-1, "
    "and validation runs on the test split (the data modules' default val_size 0), so this is test-set selection and "
    "its results are optimistic. Born-Again Networks use the last checkpoint (the default, --teacher_checkpoint last)."
)
#: ``wkd fit`` arguments that the driver sets itself in every generation.
DRIVER_ARGUMENTS = (
    "--trainer.default_root_dir",
    "--ckpt_path",
    "--model.teacher",
    "--model.teacher_weights",
    "--seed_everything",
)


@dataclass
class Generation:
    """One generation of a run: where it lives, its ``summary.json``, and its module when it was (re)trained here."""

    index: int
    run_dir: Path
    summary: dict
    module: DistillationModule | None


def build_parser() -> argparse.ArgumentParser:
    """The ``wkd-ban`` options; every other argument goes on to ``wkd fit``."""
    parser = argparse.ArgumentParser(
        prog="wkd-ban",
        description="Born-Again Networks: train generation 0 alone, then generation k distilled from generation k-1. "
        "Arguments that are not listed here (e.g. --trainer.max_epochs=5) are passed on to `wkd fit`.",
        allow_abbrev=False,  # a `wkd fit` argument must never be taken for an abbreviation of one of these
    )
    parser.add_argument("-c", "--config", required=True, help="a `wkd fit` config, or a driver config (ban: + fit:).")
    parser.add_argument("--generations", type=int, help="number of generations, counting generation 0 (>= 1).")
    parser.add_argument("--run_dir", help="where gen<k>/ go (default: the config's trainer.default_root_dir).")
    parser.add_argument(
        "--ir_method",
        help=f"build each WKD-L cost from the previous generation's checkpoint with wkd-ir; one of "
        f"{', '.join(ir_cli.CLI_METHODS)}.",
    )
    parser.add_argument("--ir_layer", help="teacher layer for feature-based IR methods (default 'logits').")
    parser.add_argument(
        "--teacher_checkpoint",
        help="which checkpoint of generation k-1 teaches generation k: 'last' (default, as Born-Again Networks) or "
        "'best' (by validation top-1: validation is the test split, so this is test-set selection; it warns).",
    )
    return parser


def run(args: Sequence[str] | None = None) -> list[Generation]:
    """Run (or resume) all generations; returns them in order. See the module docstring."""
    parser = build_parser()
    options, fit_args = parser.parse_known_args(args)
    config_path = Path(options.config)
    if not config_path.is_file():
        parser.error(f"config file {config_path} does not exist.")
    fit_config, defaults = split_config(yaml.safe_load(config_path.read_text()) or {}, config_path)
    settings = {
        name: getattr(options, name) if getattr(options, name) is not None else defaults.get(name)
        for name in BAN_OPTIONS
    }
    generations, ir_method = settings["generations"], settings["ir_method"]
    which = settings["teacher_checkpoint"] or "last"
    if which not in TEACHER_CHECKPOINTS:
        parser.error(f"--teacher_checkpoint must be one of {', '.join(TEACHER_CHECKPOINTS)}, got {which!r}.")
    if not isinstance(generations, int) or isinstance(generations, bool) or generations < 1:
        parser.error(f"--generations must be an integer >= 1 (generation 0 is the student alone), got {generations!r}.")
    if which == "best" and generations > 1:
        warnings.warn(BEST_TEACHER_WARNING, UserWarning, stacklevel=2)
    if ir_method is not None and ir_method not in ir_cli.CLI_METHODS:
        parser.error(f"--ir_method {ir_method!r} is unknown; choose one of {', '.join(ir_cli.CLI_METHODS)}.")
    clashing = [arg for arg in fit_args if arg.split("=", 1)[0] in DRIVER_ARGUMENTS]
    if clashing:
        parser.error(
            f"{clashing}: wkd-ban sets these in every generation (run directory, resume checkpoint, teacher, seed = "
            "the config's seed_everything + k); use --run_dir, or change the seed in the config."
        )
    run_dir = settings["run_dir"] or fit_config.get("trainer", {}).get("default_root_dir")
    if not run_dir:
        parser.error("no run directory: pass --run_dir DIR or set trainer.default_root_dir in the config.")
    check_fit_config(fit_config, config_path, ir_method)

    run_dir = Path(run_dir)
    results = []
    for index in range(generations):
        gen_dir, module = run_dir / f"gen{index}", None
        if is_complete(gen_dir):
            say(f"wkd-ban: generation {index} is complete, skipped ({gen_dir}).")
        else:
            config = generation_config(fit_config, index, run_dir, settings["ir_layer"], ir_method, which)
            module = train_generation(config, gen_dir, fit_args)
        results.append(Generation(index, gen_dir, read_summary(gen_dir), module))
    if rank_zero_only.rank == 0:  # the table's files too
        say(write_table(results, run_dir))
    return results


def train_generation(config: dict, gen_dir: Path, fit_args: Sequence[str]) -> DistillationModule:
    """``wkd fit`` one generation's config (resuming from its last checkpoint if it has one); returns the module."""
    gen_dir.mkdir(parents=True, exist_ok=True)
    input_file = gen_dir / "config.input.yaml"
    write_text_atomically(input_file, yaml.safe_dump(config, sort_keys=False))
    cli_args = ["fit", "-c", str(input_file), *fit_args]
    if can_resume(gen_dir):
        say(f"wkd-ban: {gen_dir.name} resumes from its last checkpoint in {gen_dir / 'checkpoints'}.")
        cli_args += ["--ckpt_path", "last"]
    with warnings.catch_warnings():  # wkd-ban's own argv is not meant for `wkd fit`: nothing to warn about
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
        cli = make_cli(cli_args)
    # Under DDP every rank runs this driver; rank 0 writes summary.json at the very end of fit, so only it checks.
    if rank_zero_only.rank == 0 and not is_complete(gen_dir):
        raise RuntimeError(
            f"{gen_dir.name} ended without a complete {gen_dir / 'summary.json'} (a fast_dev_run, or a run without "
            "validation?); wkd-ban needs full runs, each ending with its checkpoints and summary."
        )
    return cli.model


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``wkd-ban`` console script. It ends as ``wkd`` does
    (:func:`~wkd_lightning.run.errors.run_command`): a bad input with one ``wkd-ban: error: ...`` message and exit
    status 1 (``--debug``: the traceback), a stop by SIGTERM or Ctrl-C with 143 or 130, a lost DDP peer with one
    explanation."""
    run_command(lambda: run(args), "wkd-ban")


def split_config(data: dict, path: Path) -> tuple[dict, dict]:
    """``(wkd fit config, ban: defaults)`` from a driver config (``ban:`` + ``fit:``) or a plain ``wkd fit`` config."""
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a YAML mapping (a `wkd fit` config or `ban:` + `fit:` sections).")
    if "fit" not in data and "ban" not in data:
        return data, {}
    unknown = set(data) - {"ban", "fit"} or set(data.get("ban") or {}) - set(BAN_OPTIONS)
    if unknown or not isinstance(data.get("fit"), dict):
        raise ValueError(
            f"{path}: a wkd-ban driver config holds `ban:` (any of {', '.join(BAN_OPTIONS)}) and `fit:` (a `wkd fit` "
            f"config); {'unknown keys ' + str(sorted(unknown)) if unknown else '`fit:` is missing'}."
        )
    return data["fit"], data.get("ban") or {}


def check_fit_config(config: dict, path: Path, ir_method: str | None) -> None:
    """Reject configs that Born-Again training cannot use, before any generation starts."""
    model = config.get("model") or {}
    if not model.get("student"):
        raise ValueError(
            f"{path} sets no model.student: wkd-ban trains that architecture in every generation (e.g. "
            "model.student.class_path: wkd_lightning.models.mini_resnet8)."
        )
    if model.get("online_teacher"):
        raise ValueError(
            f"{path} sets model.online_teacher: Born-Again generations distil from the previous generation's "
            "checkpoint; remove the online teacher (or run the config with `wkd fit`)."
        )
    if ir_method is not None and not any(
        issubclass(_loss_class(x), WKDLogit) for x in keyed_loss_configs(model.get("losses")).values()
    ):
        raise ValueError(f"--ir_method {ir_method} builds WKD-L costs, but {path} has no WKDLogit loss.")


def generation_config(
    fit_config: dict,
    index: int,
    run_dir: Path,
    ir_layer: str | None,
    ir_method: str | None,
    teacher_checkpoint: str = "last",
) -> dict:
    """The ``wkd fit`` config of generation ``index`` (building its WKD-L cost first when ``ir_method`` is set); its
    teacher is generation ``index - 1``'s ``checkpoints/<teacher_checkpoint>.ckpt``."""
    config = copy.deepcopy(fit_config)
    gen_dir = run_dir / f"gen{index}"
    seed = config.get("seed_everything", 0)
    if isinstance(seed, int) and not isinstance(seed, bool):
        config["seed_everything"] = seed + index
    config.setdefault("trainer", {})["default_root_dir"] = str(gen_dir)
    model = config["model"]
    if index == 0:
        model.pop("teacher", None)
        model.pop("teacher_weights", None)
        losses = keyed_loss_configs(model.get("losses"))
        model["losses"] = {key: loss for key, loss in losses.items() if not _loss_class(loss).requires_teacher}
        return config
    previous = run_dir / f"gen{index - 1}"
    weights = previous / "checkpoints" / f"{teacher_checkpoint}.ckpt"
    if not weights.is_file():
        raise FileNotFoundError(
            f"generation {index - 1} is complete but has no {weights}: was it trained without the checkpoint callbacks "
            "of `wkd fit` (checkpoint / last_checkpoint)?"
        )
    resolved = yaml.safe_load((previous / "config.yaml").read_text())  # what generation k-1 really ran with
    model["teacher"] = resolved["model"]["student"]
    model["teacher_weights"] = str(weights)
    if ir_method is not None:
        cost_file = gen_dir / "ir" / f"{ir_method}.pt"
        if not (cost_file.is_file() and can_resume(gen_dir)):
            cost_file = build_cost(resolved, weights, gen_dir / "ir", ir_method, ir_layer)
        # else: a resumed generation keeps the cost it started with (it trained on it)
        for loss in keyed_loss_configs(model["losses"]).values():  # the same entries: set in place
            if issubclass(_loss_class(loss), WKDLogit):
                loss.setdefault("init_args", {})["cost"] = str(cost_file)
    return config


def build_cost(resolved: dict, weights: Path, output_dir: Path, method: str, layer: str | None) -> Path:
    """Run ``wkd-ir`` on a generation's checkpoint (its student as teacher, over its training data)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    ir_config = {
        "teacher": resolved["model"]["student"],
        "teacher_weights": str(weights),
        "data": resolved["data"],
        "layer": layer or "logits",
        "methods": [method],
        "output_dir": str(output_dir),
        "overwrite": True,  # only when the generation has not trained on a cost yet (a stale one is redone)
        "progress": False,
    }
    config_file = output_dir / "ir.yaml"
    write_text_atomically(config_file, yaml.safe_dump(ir_config, sort_keys=False))
    return ir_cli.main(["-c", str(config_file)])[method]["pt"]


def write_table(results: Sequence[Generation], run_dir: Path) -> str:
    """Write ``generations.md`` and ``generations.json`` to ``run_dir``; returns the Markdown table."""
    rows = [
        {
            "generation": g.index,
            "run_dir": os.fspath(g.run_dir),
            "teacher_weights": g.summary.get("teacher_weights"),
            "losses": g.summary.get("losses", []),
            "epochs": g.summary.get("epochs"),
            "best_val_top1": g.summary["best_val_top1"],
            "last_val_top1": g.summary["last_val_top1"],
            "last_val_top5": g.summary.get("last_val_top5"),
        }
        for g in results
    ]
    lines = [
        "| generation | teacher | losses | epochs | best top-1 (%) | last top-1 (%) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        teacher = f"gen{row['generation'] - 1}" if row["teacher_weights"] else "none"
        losses = ", ".join(row["losses"]) or "CE only"
        lines.append(
            f"| gen{row['generation']} | {teacher} | {losses} | {row['epochs']} | {100 * row['best_val_top1']:.2f} "
            f"| {100 * row['last_val_top1']:.2f} |"
        )
    table = "\n".join(lines)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "generations.md").write_text(table + "\n")
    (run_dir / "generations.json").write_text(json.dumps(rows, indent=2))
    return table


def _loss_class(loss: dict | str) -> type:
    """The class of a loss entry of a config (``{"class_path": ..., "init_args": ...}`` or a bare class path)."""
    class_path = loss if isinstance(loss, str) else loss.get("class_path", "")
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"cannot import loss class {class_path!r} ({error}); wkd-ban needs full class paths such as "
            "wkd_lightning.losses.KD."
        ) from error


if __name__ == "__main__":
    main()
