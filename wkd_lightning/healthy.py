"""Only healthy weights become resumable checkpoints: a run that diverged (NaN/inf in its weights) must not leave a
``last.ckpt`` or ``last-interrupted.ckpt`` that ``--ckpt_path last`` would resume from, only to diverge again at once.

:func:`non_finite_tensors` names the parameters and buffers of a module that hold NaN or inf;
:class:`FiniteModelCheckpoint` is Lightning's ``ModelCheckpoint`` that skips (with a warning) a save of such weights,
so the previous, healthy file stays. :class:`~wkd_lightning.interruption.InterruptCheckpoint` checks the same way.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn


def non_finite_tensors(module: torch.nn.Module) -> list[str]:
    """The names of ``module``'s floating-point parameters and buffers that hold a NaN or an inf (empty: healthy)."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def divergence_advice(names: list[str]) -> str:
    """What to tell the user when the weights hold NaN/inf: what is wrong and what to change."""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"the weights hold NaN or inf ({shown}): the run has diverged, and a resume from these weights would fail "
        "again. Lower the learning rate or the loss weights and start over (`--new_version true`), or resume from an "
        "earlier healthy checkpoint."
    )


class FiniteModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that does not write weights holding NaN/inf; the file of the last healthy save is kept."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        bad = non_finite_tensors(trainer.lightning_module)
        if bad:  # every DDP rank holds the same weights, so all ranks skip together (no barrier left waiting)
            rank_zero_warn(f"{filepath} not written: {divergence_advice(bad)}")
            return
        super()._save_checkpoint(trainer, filepath)
