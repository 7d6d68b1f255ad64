"""Run summaries: each fit writes ``summary.json`` (best and last validation top-1) to its run directory, and
``python -m wkd_lightning.summary RUN_DIR...`` prints them side by side as a Markdown table."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

SUMMARY_FILE = "summary.json"


class RunSummary(L.Callback):
    """Write ``summary.json`` to the trainer's log directory after every validation epoch and at the end of fit.

    Written every epoch so that an interrupted run still has an up-to-date record; ``complete`` turns true only when
    fit ends normally (scripts use it to skip finished runs and resume the others).
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs after the epoch's validation loop, so the epoch's val/ metrics are in callback_metrics.
        self._write(trainer, pl_module, complete=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, complete=True)

    @rank_zero_only
    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, complete: bool) -> None:
        if trainer.fast_dev_run:  # a smoke test must not look like a finished run
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if "val/top1" not in metrics:
            return
        summary = {
            "best_val_top1": metrics.get("val/top1_best", metrics["val/top1"]),
            "last_val_top1": metrics["val/top1"],
            "last_val_top5": metrics.get("val/top5"),
            "epochs": trainer.current_epoch + (0 if complete else 1),
            "complete": complete,
            "student": type(getattr(pl_module, "student", pl_module)).__name__,
            "losses": [type(loss).__name__ for loss in getattr(pl_module, "losses", [])],
            "teacher_weights": getattr(pl_module.hparams, "teacher_weights", None),
        }
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        tmp = log_dir / f".{SUMMARY_FILE}.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, log_dir / SUMMARY_FILE)  # atomic: a reader never sees half a file


def read_summary(run_dir: str | os.PathLike) -> dict:
    """The ``summary.json`` of a run directory; a missing one says the run has not finished an epoch."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `wkd fit` for {run_dir} first (it writes it each epoch).")
    return json.loads(path.read_text())


def is_complete(run_dir: str | os.PathLike) -> bool:
    """Whether the fit of ``run_dir`` ended normally (``summary.json`` says ``complete``); scripts skip such runs."""
    try:
        return bool(json.loads((Path(run_dir) / SUMMARY_FILE).read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def can_resume(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` has a checkpoint ``--ckpt_path last`` resumes from (``last.ckpt`` or
    ``last-interrupted.ckpt``)."""
    return any((Path(run_dir) / "checkpoints").glob("last*.ckpt"))


def format_table(run_dirs: Sequence[str | os.PathLike]) -> str:
    """A Markdown table of best/last validation top-1 (%) for the given runs, one row each."""
    lines = ["| run | losses | epochs | best top-1 (%) | last top-1 (%) |", "|---|---|---|---|---|"]
    for run_dir in run_dirs:
        s = read_summary(run_dir)
        losses = ", ".join(s["losses"]) or "CE only"
        lines.append(
            f"| {Path(run_dir).name} | {losses} | {s['epochs']} | {100 * s['best_val_top1']:.2f} "
            f"| {100 * s['last_val_top1']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dirs", nargs="+", help="run directories written by `wkd fit` (trainer.default_root_dir)")
    print(format_table(parser.parse_args(argv).run_dirs))


if __name__ == "__main__":
    main()
