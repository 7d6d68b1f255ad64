"""Stop training cleanly on Ctrl-C or SIGTERM, on one process or many, and keep a resumable checkpoint.

:class:`StopOnSignal` replaces Lightning's SIGTERM handling during fit, which breaks under DDP: Lightning's handler
runs a ``broadcast`` inside the signal handler, and a rank that raises at its own step boundary leaves the other ranks
waiting in a collective, so a signalled DDP run crashes (gloo: "collective mismatch") or hangs. Here a signal only
sets a flag; the ranks agree on stopping with one all-reduce at a fixed step interval, and then every rank raises
``SIGTERMException`` (a ``SystemExit``) at the same step. Any rank's signal counts: SIGTERM or Ctrl-C to the launcher
(rank 0), to one rank, or to the whole process group (a terminal's Ctrl-C). A second signal stops at once
(``KeyboardInterrupt``). Lightning calls every callback's ``on_exception``; :class:`InterruptCheckpoint` then writes
``last-interrupted.ckpt`` next to ``last.ckpt``. Lightning's ``--ckpt_path last`` considers every ``last*.ckpt`` in
the checkpoint folder and takes the newest, so the resumed run continues from the interruption. The file is removed
when a fit ends normally.

Exactness: a resume from an epoch-end ``last.ckpt`` reproduces the uninterrupted run (see the data modules' seeded
sampler). A mid-epoch ``last-interrupted.ckpt`` keeps the weights, optimizer and schedules of the interruption, but
Lightning restarts the epoch's data stream, so the rest of that epoch sees other batches than it would have.

Why not ``ModelCheckpoint(save_on_exception=True)``: it writes the interrupted state under the callback's own file
name, which here is ``best.ckpt``, and would overwrite the best model with a mid-epoch one.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from wkd_lightning.run.distributed import explain_collective_failure
from wkd_lightning.run.watch import divergence_advice, non_finite_tensors

INTERRUPTED_NAME = "last-interrupted.ckpt"
#: The signals that stop a fit: a scheduler's SIGTERM and a terminal's Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(SIGTERMException):
    """Raised on every rank at the same training step after SIGTERM or Ctrl-C; ``signum`` is the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class StopOnSignal(L.Callback):
    """Turn SIGTERM and Ctrl-C into a stop of every rank at the same training step (see the module docstring).

    Args:
        check_every: under DDP, the training steps between the all-reduces that share the stop flag (each one
            is a small collective and a host sync, which a GPU step should not pay every time); the stop comes at
            most this many steps after the signal, or at the next epoch's first step (the epoch's validation and
            ``last.ckpt`` are finished first). One process checks at every step, for free.
    """

    def __init__(self, check_every: int = 10) -> None:
        if check_every < 1:
            raise ValueError(f"StopOnSignal: check_every must be >= 1, got {check_every}.")
        self.check_every = check_every
        self.signum: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installs its handlers just before the training stage and restores the earlier ones after fit.
        self.signum = None
        if threading.current_thread() is not threading.main_thread():
            return  # Python takes signal handlers in the main thread only; Lightning's own handling stays
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # a second signal: the user does not want to wait for the step to end
        self.signum = signum

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.world_size == 1 or batch_idx % self.check_every == 0:
            self._stop_if_signalled(trainer)

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        signum = self.signum or 0
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            flag = torch.tensor([signum], device=trainer.strategy.root_device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        if signum:
            raise RunInterrupted(signum)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # This rank lost its peers (a collective timed out or was reset): the processes it launched may hang where
        # they are (stopped, deadlocked), and Lightning only ends them after Ctrl-C. Runs after the checkpoint save.
        # Only here can they be killed (the launcher is the trainer's); the user's message is printed once, at the
        # top of the command, by errors.run_command, after Lightning has re-raised the error.
        launcher = trainer.strategy.launcher
        if launcher is not None and explain_collective_failure(exception) is not None:
            launcher.kill(signal.SIGKILL)


class InterruptCheckpoint(L.Callback):
    """Save ``<dirpath>/last-interrupted.ckpt`` when fit stops on an exception, Ctrl-C or SIGTERM.

    Args:
        dirpath: the run's checkpoint folder (the CLI links it to ``<default_root_dir>/checkpoints``).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        super().__init__()
        self.dirpath = dirpath
        self._batches_this_epoch = 0
        self._training_started = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training_started = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._batches_this_epoch = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self._batches_this_epoch += 1

    def _path(self, trainer: L.Trainer) -> str:
        return os.path.join(self.dirpath or os.path.join(trainer.default_root_dir, "checkpoints"), INTERRUPTED_NAME)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking or trainer.fast_dev_run:
            return
        if not self._training_started:
            return  # a config or data error before the first step: nothing to resume, no advice that misleads
        user_stop = isinstance(exception, (SIGTERMException, KeyboardInterrupt))
        then = "Resume with the same command and" if user_stop else "Once the cause is fixed, resume with"
        if self._batches_this_epoch == 0:
            # Nothing trained since the epoch-end last.ckpt; a checkpoint now would record the epoch as started
            # with the previous epoch's batch count, and a resume from it would skip the epoch.
            if os.path.isfile(os.path.join(os.path.dirname(self._path(trainer)), "last.ckpt")):
                rank_zero_warn(f"training stopped ({type(exception).__name__}). {then} `--ckpt_path last`.")
            return
        bad = non_finite_tensors(pl_module)
        if bad:
            rank_zero_warn(f"training stopped ({type(exception).__name__}); nothing saved: {divergence_advice(bad)}")
            return
        path = self._path(trainer)
        # Not trainer.save_checkpoint: its barrier would wait forever for a rank that failed or stopped elsewhere.
        # Rank 0's state is the run's state (DDP keeps every rank's weights equal); dumping it is collective-free.
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)  # optimizer, schedulers, loops
        if trainer.is_global_zero:
            trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, path)
        rank_zero_warn(f"training stopped ({type(exception).__name__}); saved {path}. {then} `--ckpt_path last`.")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and os.path.isfile(self._path(trainer)):
            os.remove(self._path(trainer))
