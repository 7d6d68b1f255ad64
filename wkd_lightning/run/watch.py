"""The run's health watch: a training step's inputs and its summed loss must be finite, and only healthy weights
become resumable checkpoints.

* :func:`total_loss` sums a step's terms, ``L = Σ terms``, and checks it now (:func:`check_total`) or later, on the
  device, with a :class:`NonFiniteWatch` (no host synchronisation in the steady-state steps).
* :func:`check_input_batch` names the samples of a batch with NaN/inf pixels, so a broken image is not blamed on the
  student.
* A run that diverged (NaN/inf in its weights) must not leave a ``last.ckpt`` or ``last-interrupted.ckpt`` that
  ``--ckpt_path last`` would resume from, only to diverge again at once: :func:`non_finite_tensors` names the
  parameters and buffers that hold NaN or inf; :class:`FiniteModelCheckpoint` is Lightning's ``ModelCheckpoint`` that
  skips (with a warning) a save of such weights, so the previous, healthy file stays.
  :class:`~wkd_lightning.run.interruption.InterruptCheckpoint` checks the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from wkd_lightning.losses.checks import check_integer, values_checked


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


def bad_input_rows(inputs: Tensor) -> Tensor:
    """B bools: which samples of a B×... input batch hold a NaN or an inf (device work only; integer inputs: none)."""
    if not inputs.is_floating_point():
        return torch.zeros(inputs.shape[0], dtype=torch.bool, device=inputs.device)
    return ~torch.isfinite(inputs.detach()).flatten(1).all(dim=1)


def input_message(epoch: int, step: int, count: int, samples: list[int], indexed: bool) -> str:
    """The message of an input batch with NaN/inf pixels: where, which samples, what to check."""
    shown = ", ".join(map(str, samples[:10])) + (", ..." if len(samples) > 10 or count > len(samples) else "")
    which = (
        f"sample indices [{shown}] of the training set"
        if indexed
        else f"positions [{shown}] in the batch; --data.return_index true names their dataset indices"
    )
    return (
        f"input batch contains NaN/inf pixels at epoch {epoch}, step {step} ({count} sample(s): {which}): the data is "
        "broken, not the student. Check those samples' files and the transforms (a normalisation by a zero std, a "
        "division in a custom transform)."
    )


def check_input_batch(inputs: Tensor, index: Tensor | None, epoch: int, step: int) -> None:
    """Raise if a training batch holds NaN/inf pixels, naming the samples (a value check: one host synchronisation).

    The training steps run it on the first, fully checked, step of each epoch; the steps in between hand their inputs
    to :class:`NonFiniteWatch`, which names them when the loss turns non-finite.

    Raises:
        ValueError: naming the epoch, the step and the samples (dataset indices when the batch carries them).
    """
    if not values_checked():
        return
    rows = bad_input_rows(inputs)
    if not bool(rows.any()):
        return
    positions = rows.nonzero().flatten()
    samples = index.to(positions.device)[positions] if index is not None else positions
    raise ValueError(input_message(epoch, step, len(positions), samples.tolist(), index is not None))


def nonfinite_message(epoch: int, step: int, bad: list[str], advice: str) -> str:
    """The message of a non-finite training loss: where, which terms, what to try."""
    return f"non-finite loss at epoch {epoch}, step {step}: terms {bad}. {advice}"


def check_total(terms: Mapping[str, Tensor], total: Tensor, epoch: int, step: int, advice: str) -> None:
    """Raise now if ``total`` is NaN or infinite (a value check: one host synchronisation).

    Raises:
        FloatingPointError: naming the epoch, the step and the non-finite terms.
    """
    if values_checked() and not torch.isfinite(total):
        bad = [name for name, value in terms.items() if not torch.isfinite(value)]
        raise FloatingPointError(nonfinite_message(epoch, step, bad, advice))


class NonFiniteWatch:
    """The deferred form of :func:`check_total`: notes on the device whether a step's loss ``L`` was non-finite.

    :meth:`observe` only launches a few element-wise kernels (``isfinite`` of ``L`` and of its terms, and ``where``
    updates of a flag, of the first bad step's position and of its non-finite terms): nothing waits for the device.
    Every ``every`` observed steps the flag is copied to host memory without blocking (pinned memory and a CUDA event);
    the copy is read at the next such step, once it has arrived, and :meth:`flush` (at each epoch end) reads it
    waiting. A non-finite loss thus stops the run at most ``2·every`` steps after it happened, with the same message as
    :func:`check_total`, naming the step where it happened. Given the step's inputs, it also notes whether they held
    NaN/inf pixels: the message is then :func:`input_message` (which samples, at which step), a ``ValueError``, since
    the data, not the student, is at fault.

    Args:
        every: steps between two reads of the flag.
        advice: what to try, appended to the message.
    """

    def __init__(self, every: int = 50, advice: str = "Lower the learning rate or the loss weights.") -> None:
        self.every = check_integer(every, "every", "NonFiniteWatch")
        self.advice = advice
        self._observed = 0
        self._flag: Tensor | None = None
        self._where: Tensor | None = None
        self._bad_terms: dict[tuple[str, ...], Tensor] = {}
        self._inputs: Tensor | None = None  # at the first bad step: [inputs bad, bad samples, first bad sample]
        self._indexed = False
        self._pending: tuple[Tensor, torch.cuda.Event | None] | None = None

    def observe(
        self,
        terms: Mapping[str, Tensor],
        stacked: Tensor,
        total: Tensor,
        epoch: int,
        step: int,
        inputs: Tensor | None = None,
        index: Tensor | None = None,
    ) -> None:
        """Note whether ``total = stacked.sum()`` (``stacked``: the terms, in order) is finite; device work only.

        ``inputs`` (the step's B×... input batch) and ``index`` (its samples' dataset indices) let the message name
        NaN/inf pixels as the cause.
        """
        if self._flag is None or self._flag.device != total.device:
            self._flag = torch.zeros((), dtype=torch.bool, device=total.device)
            self._where = torch.zeros((), dtype=torch.int64, device=total.device)
            self._inputs = torch.zeros(3, dtype=torch.int64, device=total.device)
            self._bad_terms = {}
        bad = ~torch.isfinite(total.detach())
        new = bad & ~self._flag
        # Epoch and step packed in one integer: a Python scalar goes to the kernel as an argument, not as a copy.
        self._where = torch.where(new, epoch * 2**32 + step, self._where)
        names = tuple(terms)
        previous = self._bad_terms.get(names)
        bad_terms = new & ~torch.isfinite(stacked.detach())
        self._bad_terms[names] = bad_terms if previous is None else torch.where(new, bad_terms, previous)
        if inputs is not None:
            rows = bad_input_rows(inputs).to(total.device)
            first = rows.to(torch.uint8).argmax().view(1)  # first bad sample (0 when none); no host read
            sample = index.to(total.device).gather(0, first) if index is not None else first
            noted = torch.cat([rows.any().view(1), rows.sum().view(1), sample.view(1)]).to(torch.int64)
            self._inputs = torch.where(new, noted, self._inputs)
            self._indexed = index is not None
        self._flag = self._flag | bad
        self._observed += 1
        if self._observed % self.every == 0:
            self._read(wait=False)
            self._request()

    def flush(self) -> None:
        """Read the flag now, waiting for the device (one synchronisation; call it off the hot path)."""
        if self._flag is not None:
            self._request()
            self._read(wait=True)

    def _request(self) -> None:
        flag = self._flag
        if flag.device.type == "cuda":
            host = torch.empty((), dtype=torch.bool, pin_memory=True)
            host.copy_(flag, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (host, event)
        else:
            self._pending = (flag.clone(), None)

    def _read(self, wait: bool) -> None:
        if self._pending is None:
            return
        host, event = self._pending
        if event is not None and not event.query():
            if not wait:
                return
            event.synchronize()
        self._pending = None
        if bool(host):
            self._raise()

    def _raise(self) -> None:
        where = int(self._where)
        inputs_bad, count, sample = self._inputs.tolist()
        if inputs_bad:
            message = input_message(where >> 32, where & (2**32 - 1), count, [sample], self._indexed)
            raise ValueError(f"{message} (noticed by the loss watch, which reads the loss every {self.every} steps)")
        bad = [name for names, flags in self._bad_terms.items() for name, flag in zip(names, flags.tolist()) if flag]
        message = nonfinite_message(where >> 32, where & (2**32 - 1), list(dict.fromkeys(bad)), self.advice)
        raise FloatingPointError(
            f"{message} (noticed {self._observed} steps into the watch, which reads the loss "
            f"every {self.every} steps off the hot path)"
        )


def total_loss(
    terms: Mapping[str, Tensor],
    epoch: int,
    step: int,
    advice: str = "Lower the learning rate or the loss weights.",
    watch: NonFiniteWatch | None = None,
    inputs: Tensor | None = None,
    index: Tensor | None = None,
) -> Tensor:
    """``L = Σ terms``, the loss a training step minimises; a non-finite sum is an error naming the terms causing it.

    Args:
        terms: the step's named scalar terms (the task loss and every plug-in's).
        epoch: the 1-based epoch, for the message.
        step: the batch index, for the message.
        advice: what to try, appended to the message.
        watch: check later, on the device (:class:`~wkd_lightning.run.watch.NonFiniteWatch`: no host synchronisation);
            ``None`` checks now.
        inputs: the step's input batch: a non-finite sum is then blamed on its NaN/inf pixels, when it has some.
        index: the batch's dataset indices (named in that message), or ``None``.

    Raises:
        FloatingPointError: the sum is NaN or infinite (now, or from ``watch`` a few steps later).
        ValueError: the same, and ``inputs`` held NaN/inf pixels (:func:`~wkd_lightning.run.watch.input_message`).
    """
    stacked = torch.stack(list(terms.values()))
    total = stacked.sum()
    if watch is None:
        if inputs is not None and values_checked() and not torch.isfinite(total):
            check_input_batch(inputs, index, epoch, step)
        check_total(terms, total, epoch, step, advice)
    else:
        watch.observe(terms, stacked, total, epoch, step, inputs, index)
    return total
