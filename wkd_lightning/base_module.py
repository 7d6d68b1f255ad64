"""``TeacherStudentModule``: what every teacher→student LightningModule shares, written once.

A subclass (:class:`~wkd_lightning.module.DistillationModule` for classification,
:class:`~wkd_lightning.detection.DetectionDistillationModule` for detection) runs its networks and builds a
:class:`~wkd_lightning.losses.base.DistillationContext`; this base owns the rest:

* the teacher slot: one :class:`~wkd_lightning.teacher.Teacher` (pretrained and frozen, or online: an EMA copy, the
  previous epoch's predictions), driven through the same calls whatever its kind (start of fit, start of epoch, after
  each optimizer step);
* checkpoints without the pretrained teacher (its entries dropped on save and refused on load) but with an online
  teacher's state, and the strict check that a checkpoint fits;
* the optimizer over the student and the loss plug-ins' trainable parts (projectors), never the teacher;
* the step's loss ``L = Σ_k w_k · ℓ_k`` from the task terms and the plug-ins' raw terms
  (:func:`~wkd_lightning.losses.base.plugin_terms` applies ``w = weight · c(e)``), watched for NaN/inf
  (:class:`~wkd_lightning.run.watch.NonFiniteWatch`: the first step of each epoch checked at once, the others on the
  device), and logged term by term;
* the best value so far of the monitored validation metric, a buffer saved in checkpoints.

Logged in training, all as epoch means: ``train/loss`` (``L``), ``train/loss/<name>`` (each weighted term as it
enters ``L``: the task terms and ``<plug-in>/<term>``), ``train/loss/<name>_raw`` (the term before its weight),
``train/weight/<name>`` (its weight that epoch); the progress bar shows the per-step ``loss``.
"""

from __future__ import annotations

from collections.abc import Sized
from itertools import chain

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from wkd_lightning.checkpoints import check_checkpoint_fits
from wkd_lightning.losses.base import DistillationContext, Terms, plugin_terms
from wkd_lightning.run.fingerprints import InputFingerprints
from wkd_lightning.run.watch import NonFiniteWatch, total_loss
from wkd_lightning.teacher import Teacher, refuse_teacher_entries, without_teacher


class TeacherStudentModule(InputFingerprints, L.LightningModule):
    """Base of the distillation modules: a trainable ``student``, a ``teacher`` and loss plug-ins.

    Args:
        student: the network to train.
        teacher: where the soft targets come from (:func:`~wkd_lightning.teacher.select_teacher`), or ``None``. It is
            kept under its :attr:`~wkd_lightning.teacher.Teacher.slot` (``teacher`` or ``online_teacher``); the
            other attribute is ``None``.
        losses: the distillation plug-ins (:func:`~wkd_lightning.losses.base.loss_plugins`).
        optimizer: builds the optimizer from the trainable parameters (:meth:`trainable_parameters`).
        lr_scheduler: builds an epoch-wise LR scheduler from the optimizer, or ``None``.
        teacher_hint: how to configure a teacher, appended to the error when a loss needs one and there is none.
        nonfinite_advice: what to try when the loss becomes NaN or infinite.

    Raises:
        ValueError: a loss needs a teacher and ``teacher`` is ``None``.
    """

    #: The validation metric that picks the best checkpoint (higher is better); its best value is kept.
    monitor = "val/top1"

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None,
        losses: nn.ModuleList,
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None,
        teacher_hint: str,
        nonfinite_advice: str = "Lower the learning rate or the loss weights.",
    ) -> None:
        super().__init__()
        self.student = student
        self.losses = losses
        self.teacher = self.online_teacher = None
        if teacher is not None:
            setattr(self, teacher.slot, teacher)
        needs_teacher = [loss.name for loss in losses if loss.requires_teacher]
        if needs_teacher and teacher is None:
            raise ValueError(f"losses {needs_teacher} need a teacher, but `teacher` is None: {teacher_hint}")
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.nonfinite_advice = nonfinite_advice
        # Best monitored value so far: a buffer, so it is saved in checkpoints and survives a resume.
        self.register_buffer(self._best_buffer, torch.tensor(0.0))
        # Inputs are checked on the first training step of each epoch (and of each run); the steps in between only
        # watch the summed loss on the device (no host synchronisation).
        self.loss_watch = NonFiniteWatch(advice=nonfinite_advice)
        self._steps_checked = False

    @property
    def teacher_slot(self) -> Teacher | None:
        """The teacher, whatever its kind (the module attribute named by its ``slot``)."""
        return self.online_teacher if self.online_teacher is not None else self.teacher

    @property
    def _best_buffer(self) -> str:
        return self.monitor.replace("/", "_") + "_best"  # val/top1 → val_top1_best

    # ------------------------------------------------------------------ optimizer: student and loss parts only
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's and the loss plug-ins' parameters that require grad; never the teacher's."""
        return [p for p in chain(self.student.parameters(), self.losses.parameters()) if p.requires_grad]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ------------------------------------------------------------------ the teacher's calls, in order
    def on_train_start(self) -> None:
        if self.teacher_slot is not None:
            dataset = getattr(self.trainer.train_dataloader, "dataset", None)
            self.teacher_slot.start(
                num_samples=len(dataset) if isinstance(dataset, Sized) else None,
                num_classes=self.num_classes,
                world_size=self.trainer.world_size,
                device=self.device,
            )

    def on_train_epoch_start(self) -> None:
        # Every epoch, resumed ones included: a cost set at run time is not in the checkpoint.
        if self.teacher_slot is not None:
            self.teacher_slot.refresh_costs(self.losses, self.student)
        self._steps_checked = False

    def on_train_epoch_end(self) -> None:
        self.loss_watch.flush()  # one host synchronisation per epoch

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """Step the optimizer, then let the teacher follow the student (an EMA teacher updates here)."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.teacher_slot is not None:
            self.teacher_slot.after_optimizer_step(self.student)

    # ------------------------------------------------------------------ checkpoints: never a pretrained teacher
    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        return without_teacher(state, prefix)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        refuse_teacher_entries(state_dict)
        if self.teacher_slot is not None:
            self.teacher_slot.prepare_state(state_dict, self.teacher_slot.slot + ".")
        if strict:
            check_checkpoint_fits(self.state_dict(), state_dict)
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    # ------------------------------------------------------------------ the step's loss
    def training_context(self, **networks_outputs) -> DistillationContext:
        """A :class:`~wkd_lightning.losses.base.DistillationContext` of this step (epoch ``e`` 1-based, ``E``)."""
        max_epochs = self.trainer.max_epochs if self._trainer is not None and self.trainer.max_epochs else 1
        return DistillationContext(**networks_outputs, epoch=self.current_epoch + 1, max_epochs=max_epochs)

    def first_step_of_epoch(self) -> bool:
        """Whether this training step is the epoch's first (checked in full); later calls in the epoch say no."""
        checked, self._steps_checked = not self._steps_checked, True
        return checked

    def step_loss(
        self,
        terms: Terms,
        ctx: DistillationContext | None,
        checked: bool,
        batch_idx: int,
        batch_size: int,
        inputs: Tensor | None = None,
        index: Tensor | None = None,
    ) -> Tensor:
        """``L``: the task ``terms`` plus the plug-ins' weighted terms on ``ctx`` (none when ``ctx`` is ``None``),
        watched and logged.

        Args:
            terms: the task loss's terms (e.g. the weighted cross-entropy), first in the sum.
            ctx: the step's context, or ``None`` for a step without distillation.
            checked: the epoch's first step: the plug-ins run eagerly with every check, the sum is checked now.
            batch_idx: the step, for messages.
            batch_size: for the epoch means.
            inputs: the input batch, blamed for a non-finite loss when it holds NaN/inf pixels.
            index: the batch's dataset indices, for that message.
        """
        if ctx is not None:
            terms.update(plugin_terms(self.losses, ctx, checked=checked))
        watch = None if checked else self.loss_watch
        epoch = self.current_epoch + 1
        total = total_loss(terms.weighted, epoch, batch_idx, self.nonfinite_advice, watch, inputs, index)
        self._log_terms(terms, checked, total, batch_size)
        return total

    def _log_terms(self, terms: Terms, with_weights: bool, total: Tensor, batch_size: int) -> None:
        """Epoch means of the loss and of every term, weighted and raw, and the terms' weights (see the module doc).

        Tensors only, accumulated on the device (no host synchronisation); the weights are Python numbers, logged on
        the first step of each epoch alone (a number becomes a tensor on the device: one host-to-device copy), which
        is their epoch mean, since they change only from one epoch to the next.
        """
        epoch_mean = dict(on_step=False, on_epoch=True, batch_size=batch_size)
        # The weighted terms first, in one dict of their own: they sum to train/loss.
        self.log_dict({f"train/loss/{k}": v.detach() for k, v in terms.weighted.items()}, **epoch_mean)
        self.log_dict({f"train/loss/{k}_raw": v.detach() for k, v in terms.raw.items()}, **epoch_mean)
        if with_weights:
            self.log_dict({f"train/weight/{k}": float(v) for k, v in terms.weights.items()}, **epoch_mean)
        self.log("train/loss", total.detach(), **epoch_mean)
        self.log("loss", total.detach(), prog_bar=True, logger=False, batch_size=batch_size)  # the bar: per step

    # ------------------------------------------------------------------ best validation value
    def log_best(self, value: Tensor) -> None:
        """Keep and log (``<monitor>_best``) the best monitored value so far; sanity checks do not count."""
        if self.trainer.sanity_checking:
            return
        best = torch.maximum(getattr(self, self._best_buffer), value.to(getattr(self, self._best_buffer)))
        setattr(self, self._best_buffer, best)
        self.log(f"{self.monitor}_best", best, sync_dist=True)
