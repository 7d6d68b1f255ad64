"""Run summaries: each fit writes ``summary.json`` (best and last value of the monitored validation metric: top-1 for
classifiers, box mAP for detectors) to its run directory; ``wkd summary RUN_DIR...``
(:mod:`wkd_lightning.commands.summary`) prints them side by side as a Markdown table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L

from wkd_lightning.run.files import write_text_atomically

SUMMARY_FILE = "summary.json"
#: How the tables name the monitored metrics.
METRIC_NAMES = {"val/top1": "top-1", "val/map": "mAP"}


class RunSummary(L.Callback):
    """Write ``summary.json`` to the trainer's log directory after every validation epoch and at the end of fit.

    Written every epoch so that an interrupted run still has an up-to-date record; ``complete`` turns true only when
    fit ends normally (scripts use it to skip finished runs and resume the others).

    Args:
        metric: the validation metric to record (the module logs its best value as ``<metric>_best``); the file holds
            ``best_<metric>`` and ``last_<metric>`` with ``/`` read as ``_`` (``best_val_top1``, ``last_val_map``).
    """

    def __init__(self, metric: str = "val/top1") -> None:
        self.metric = metric

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs after the epoch's validation loop, so the epoch's val/ metrics are in callback_metrics.
        self._write(trainer, pl_module, complete=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, complete=True)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, complete: bool) -> None:
        if trainer.fast_dev_run:  # a smoke test must not look like a finished run
            return
        # On every rank: `trainer.log_dir` is a broadcast (a collective). Asked on rank 0 alone, it waits forever for
        # the other ranks, which meanwhile wait in the checkpoint callback's barrier.
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero:
            self._write_file(trainer, pl_module, log_dir, complete)

    def _write_file(self, trainer: L.Trainer, pl_module: L.LightningModule, log_dir: Path, complete: bool) -> None:
        # The validation metrics in callback_metrics are already reduced over all ranks (torchmetrics syncs them).
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if self.metric not in metrics:
            if complete:  # a resumed run that had already trained all its epochs: nothing validated, but it is done
                self._mark_complete(log_dir, trainer.current_epoch)
            return
        key = self.metric.replace("/", "_")
        summary = {
            "metric": self.metric,
            f"best_{key}": metrics.get(f"{self.metric}_best", metrics[self.metric]),
            f"last_{key}": metrics[self.metric],
            **(self._top5(log_dir, metrics.get("val/top5")) if self.metric == "val/top1" else {}),
            "epochs": trainer.current_epoch + (0 if complete else 1),
            "complete": complete,
            "student": type(getattr(pl_module, "student", pl_module)).__name__,
            "losses": [type(loss).__name__ for loss in getattr(pl_module, "losses", [])],
            "teacher_weights": getattr(pl_module.hparams, "teacher_weights", None),
        }
        log_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(log_dir / SUMMARY_FILE, json.dumps(summary, indent=2))  # a reader never sees half
        if complete:
            print(result_line(summary), flush=True)

    @staticmethod
    def _top5(log_dir: Path, last: float | None) -> dict:
        """``last_val_top5`` and ``best_val_top5`` (the highest of every epoch; a resumed run continues the record of
        its summary.json, which belongs to this run since a fresh fit into a used run directory is refused)."""
        if last is None:
            return {"last_val_top5": None}
        try:
            earlier = json.loads((log_dir / SUMMARY_FILE).read_text()).get("best_val_top5")
        except (OSError, ValueError):
            earlier = None
        return {"last_val_top5": last, "best_val_top5": max(last, earlier) if earlier is not None else last}

    @staticmethod
    def _mark_complete(log_dir: Path, epochs: int) -> None:
        if (log_dir / SUMMARY_FILE).is_file():
            summary = read_summary(log_dir)
            if summary.get("epochs") == epochs:
                write_text_atomically(log_dir / SUMMARY_FILE, json.dumps({**summary, "complete": True}, indent=2))


def result_line(summary: dict) -> str:
    """``best top-1 85.12 %, last top-1 85.00 % · best top-5 99.10 %, last top-5 99.00 % (15 epochs)``."""
    metric = summary.get("metric", "val/top1")
    name, key = METRIC_NAMES.get(metric, metric), metric.replace("/", "_")
    parts = [f"best {name} {100 * summary[f'best_{key}']:.2f} %, last {name} {100 * summary[f'last_{key}']:.2f} %"]
    if summary.get("best_val_top5") is not None:
        parts.append(
            f"best top-5 {100 * summary['best_val_top5']:.2f} %, last top-5 {100 * summary['last_val_top5']:.2f} %"
        )
    return f"{' · '.join(parts)} ({summary['epochs']} epochs)"


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
