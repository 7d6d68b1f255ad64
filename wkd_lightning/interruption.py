"""Keep a resumable checkpoint when training is interrupted (Ctrl-C, SIGTERM from a scheduler, an exception).

Lightning turns SIGTERM into ``SIGTERMException`` at the next step boundary and Ctrl-C into a graceful shutdown; both
call every callback's ``on_exception``. :class:`InterruptCheckpoint` then writes ``last-interrupted.ckpt`` next to
``last.ckpt``. Lightning's ``--ckpt_path last`` considers every ``last*.ckpt`` in the checkpoint folder and takes the
newest, so the resumed run continues from the interruption. The file is removed when a fit ends normally.

Exactness: a resume from an epoch-end ``last.ckpt`` reproduces the uninterrupted run (see the data modules' seeded
sampler). A mid-epoch ``last-interrupted.ckpt`` keeps the weights, optimizer and schedules of the interruption, but
Lightning restarts the epoch's data stream, so the rest of that epoch sees other batches than it would have.

Why not ``ModelCheckpoint(save_on_exception=True)``: it writes the interrupted state under the callback's own file
name, which here is ``best.ckpt``, and would overwrite the best model with a mid-epoch one.
"""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

INTERRUPTED_NAME = "last-interrupted.ckpt"


class InterruptCheckpoint(L.Callback):
    """Save ``<dirpath>/last-interrupted.ckpt`` when fit stops on an exception, Ctrl-C or SIGTERM.

    Args:
        dirpath: the run's checkpoint folder (the CLI links it to ``<default_root_dir>/checkpoints``).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        super().__init__()
        self.dirpath = dirpath
        self._batches_this_epoch = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._batches_this_epoch = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self._batches_this_epoch += 1

    def _path(self, trainer: L.Trainer) -> str:
        return os.path.join(self.dirpath or os.path.join(trainer.default_root_dir, "checkpoints"), INTERRUPTED_NAME)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking or trainer.fast_dev_run:
            return
        if self._batches_this_epoch == 0:
            # Nothing trained since the epoch-end last.ckpt; a checkpoint now would record the epoch as started
            # with the previous epoch's batch count, and a resume from it would skip the epoch.
            rank_zero_warn(
                f"training stopped ({type(exception).__name__}); resume from last.ckpt with `--ckpt_path last`."
            )
            return
        path = self._path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # full state: optimizer, schedulers, loops
        rank_zero_warn(
            f"training stopped ({type(exception).__name__}); saved {path}. Resume with the same command and "
            "`--ckpt_path last`."
        )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and os.path.isfile(self._path(trainer)):
            os.remove(self._path(trainer))
