"""Experiment tracking: a CSV log that survives resumes, and a fast check that W&B online mode can reach its server.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts in a non-empty folder, so a resumed run
(``--ckpt_path last``) or a ``wkd test`` in the run directory would erase the history of the run.
:class:`RunCSVLogger` appends instead; only a new fit in a used folder starts a new file, after moving the old one
aside (``metrics.<time>.csv``).

Without network, ``wandb.init`` in online mode retries for minutes before failing with a message about sockets.
Before a run starts, :func:`check_wandb_reachable` opens one TCP connection to the W&B server (``WANDB_BASE_URL``,
default ``https://api.wandb.ai``) with a short timeout and, when that fails, says how to log offline instead.
"""

from __future__ import annotations

import csv
import os
import socket
import time
from collections.abc import Iterable
from typing import Literal
from urllib.parse import urlparse

from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_warn

OFFLINE_MODES = ("offline", "dryrun", "disabled")
DEFAULT_BASE_URL = "https://api.wandb.ai"


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing ``metrics.csv`` is continued (``append``) or moved aside."""

    def __init__(self, log_dir: str, append: bool) -> None:
        self.append = append
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:  # called by the parent's __init__ instead of deleting the file
        if not self._fs.isfile(self.metrics_file_path):
            return
        if self.append:
            with open(self.metrics_file_path, newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))
            return
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(self.metrics_file_path)))
        kept = os.path.join(self.log_dir, f"metrics.{stamp}.csv")
        os.replace(self.metrics_file_path, kept)
        rank_zero_warn(f"{self.log_dir} already held a metrics.csv of an earlier fit; it was moved to {kept}.")


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` that never deletes an earlier ``metrics.csv`` in its folder.

    Args:
        save_dir: the run directory; ``metrics.csv`` and ``hparams.yaml`` are written directly into it.
        append: continue an existing ``metrics.csv`` (resumed fits, validate/test in a run directory); False moves
            it aside first (a new fit in a used folder).
    """

    def __init__(self, save_dir: str, append: bool = True) -> None:
        super().__init__(save_dir=save_dir, name="", version="")
        self.append = append

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, append=self.append)
        return self._experiment


class EpochLRMonitor(LearningRateMonitor):
    """Lightning's ``LearningRateMonitor``, logging every epoch by default, that stands aside in a run without a logger
    (``--trainer.logger false``) instead of failing it.

    Each optimizer's learning rate is written once per epoch, at its start, as ``lr-<optimizer class>`` (e.g.
    ``lr-PaperSGD``; ``lr-<optimizer class>/pg<N>`` for several parameter groups): its own row of ``metrics.csv``,
    whose ``step`` column is the global step at that epoch's start.
    """

    def __init__(self, logging_interval: Literal["step", "epoch"] | None = "epoch", log_momentum: bool = False,
                 log_weight_decay: bool = False) -> None:  # fmt: skip
        super().__init__(logging_interval, log_momentum, log_weight_decay)

    def on_train_start(self, trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)


def wandb_is_online(logger: Logger) -> bool:
    """True for a ``WandbLogger`` that will talk to the W&B server (not offline by argument or ``WANDB_MODE``)."""
    if not isinstance(logger, WandbLogger) or logger._offline:
        return False
    mode = logger._wandb_init.get("mode") or os.environ.get("WANDB_MODE", "online")
    return mode not in OFFLINE_MODES


def check_wandb_reachable(loggers: Iterable[Logger], timeout_s: float = 5.0) -> None:
    """Raise ``ConnectionError`` when an online ``WandbLogger`` is configured but the W&B server is unreachable."""
    if not any(wandb_is_online(logger) for logger in loggers):
        return
    url = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as error:
        raise ConnectionError(
            f"Weights & Biases is in online mode but its server {url.hostname}:{port} cannot be reached "
            f"({type(error).__name__}: {error}). Without network, log offline: use "
            "`-c configs/logging/wandb_offline.yaml` (sync later with `wandb sync`) or set WANDB_MODE=offline; "
            "`configs/logging/wandb_disabled.yaml` turns W&B off."
        ) from error
