"""``wkd`` and ``wkd-det``: the LightningCLIs of the project (``wkd fit|validate|test|predict -c CONFIG.yaml
[--key value ...]``); ``wkd`` trains classifiers (:class:`DistillationModule`), ``wkd-det`` detectors
(:class:`~wkd_lightning.detection.DetectionDistillationModule`).

Every run writes to ``trainer.default_root_dir``: ``config.yaml`` (the full resolved config), ``metrics.csv``,
``summary.json`` and ``checkpoints/{best,last}.ckpt`` (best by the module's ``monitor`` metric: validation top-1, or
box mAP for detectors; ``last-interrupted.ckpt`` when Ctrl-C or SIGTERM stops a fit). ``--ckpt_path last`` resumes
a run from the newest of them. More loggers (Weights & Biases) come from ``trainer.logger``; a CSV logger in the run
directory is always kept.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Iterable

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from wkd_lightning.detection import DetectionDistillationModule
from wkd_lightning.distributed import DEFAULT_TIMEOUT_S, explain_collective_failure, set_process_group_timeout
from wkd_lightning.interruption import InterruptCheckpoint, StopOnSignal
from wkd_lightning.module import DistillationModule
from wkd_lightning.summary import RunSummary
from wkd_lightning.tracking import RunCSVLogger, check_wandb_reachable


def checkpoint_dir(default_root_dir: str | None) -> str:
    """``<run dir>/checkpoints``; the run dir defaults to the working directory, as in Lightning."""
    return os.path.join(default_root_dir or os.getcwd(), "checkpoints")


class WKDCLI(LightningCLI):
    """LightningCLI with the project's defaults: best/last checkpoints, run summary, CSV log in the run dir.

    The best checkpoint and the summary follow the model class's ``monitor`` metric (higher is better).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        monitor = self.model_class.monitor
        # Two checkpoint callbacks: Lightning 2.6's `save_last` of a monitoring ModelCheckpoint only refreshes
        # last.ckpt in epochs where the monitored metric improved, so `last` gets its own unmonitored callback.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": monitor,
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                "checkpoint.enable_version_counter": False,
                "last_checkpoint.filename": "last",  # monitor None, top-1: overwritten at every epoch end
                "last_checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(RunSummary, "summary")
        parser.set_defaults({"summary.metric": monitor})
        parser.add_lightning_class_args(InterruptCheckpoint, "interrupt")
        parser.add_lightning_class_args(StopOnSignal, "stop_on_signal")
        parser.add_argument(
            "--ddp_timeout",
            type=float,
            default=DEFAULT_TIMEOUT_S,
            help="seconds a multi-process run waits in one collective (all-reduce, barrier) before it fails, "
            "for strategies given by name (ddp, ddp_spawn, fsdp, ...): a rank that died or hangs ends the run "
            "instead of blocking the others forever.",
        )
        for group in ("checkpoint", "last_checkpoint", "interrupt"):
            parser.link_arguments("trainer.default_root_dir", f"{group}.dirpath", compute_fn=checkpoint_dir)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand and config.get("weights_only") is None:
            config.weights_only = True  # resumed/evaluated checkpoints are read without unpickling code
        model = config.model
        if model.get("teacher") is not None and model.get("teacher_weights") is None:
            raise ValueError(
                "the config sets a teacher architecture but no `model.teacher_weights`: a teacher is never used with "
                "random weights. Pass --model.teacher_weights PATH (e.g. runs/fashion_mnist/teacher/checkpoints/"
                "best.ckpt after `wkd fit -c configs/fashion_mnist/teacher.yaml`)."
            )

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        logger = kwargs.get("logger", trainer_config.get("logger"))
        if logger is not False:
            loggers = [] if logger in (None, True) else list(logger) if isinstance(logger, Iterable) else [logger]
            if not any(isinstance(x, CSVLogger) for x in loggers):
                root = trainer_config.get("default_root_dir") or os.getcwd()
                config = self.config[self.subcommand] if self.subcommand else self.config
                fresh_fit = self.subcommand == "fit" and config.get("ckpt_path") is None
                loggers.insert(0, RunCSVLogger(save_dir=root, append=not fresh_fit))
            check_wandb_reachable(loggers)
            kwargs["logger"] = loggers
        trainer = super().instantiate_trainer(**kwargs)
        if isinstance(trainer_config.get("strategy", "auto"), str):  # a Strategy object keeps its own timeout
            config = self.config[self.subcommand] if self.subcommand else self.config
            set_process_group_timeout(trainer.strategy, config.get("ddp_timeout", DEFAULT_TIMEOUT_S))
        return trainer


def make_cli(
    args: list[str] | None = None, run: bool = True, model_class: type[L.LightningModule] = DistillationModule
) -> WKDCLI:
    """Build (and with ``run``, execute) the ``wkd`` CLI; ``args`` replaces ``sys.argv`` (used by tests).

    ``model_class`` is :class:`DistillationModule` for ``wkd`` and
    :class:`~wkd_lightning.detection.DetectionDistillationModule` for ``wkd-det``.
    """
    # Lightning 2.6 trips a deprecation of newer torch's pytree on every run; it is not the user's concern.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    return WKDCLI(
        model_class,
        L.LightningDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        args=args,
        run=run,
    )


def main(model_class: type[L.LightningModule] = DistillationModule) -> None:
    """Entry point of the ``wkd`` console script.

    A run stopped by SIGTERM exits with status 143 (128 + 15, the shell convention; Ctrl-C: 130), not Lightning's 0,
    so that job schedulers and scripts can tell an interrupted run from a finished one. A collective that failed
    because another rank died or hung ends with one message that says so.
    """
    try:
        make_cli(model_class=model_class)
    except SIGTERMException as stop:  # RunInterrupted carries the signal (Ctrl-C: 130); Lightning's own: SIGTERM
        sys.exit(128 + getattr(stop, "signum", signal.SIGTERM))
    except RuntimeError as error:
        explanation = explain_collective_failure(error)
        if explanation is None:
            raise
        raise SystemExit(f"wkd: {explanation}") from error


def detection_main() -> None:
    """Entry point of the ``wkd-det`` console script (detectors; see :mod:`wkd_lightning.detection`)."""
    main(DetectionDistillationModule)


if __name__ == "__main__":
    main()
