"""Top-1/top-5 evaluation of a classification student: validation, test and prediction steps, and their metrics.

Validation logs ``val/loss``, ``val/top1`` (``val/top5`` with more than 5 classes) and, through the module's
``log_best``, ``val/top1_best``; it warns when the student has collapsed to chance with near-zero logits. Test logs the
same under ``test/``. Accuracies are micro-averaged (each sample counts once), reduced over every DDP rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from wkd_lightning.losses.checks import check_labels


class TopKEvaluation:
    """Mixin of a LightningModule with a classification ``student``, ``num_classes`` and ``log_best``
    (:class:`~wkd_lightning.base_module.TeacherStudentModule`): the metrics and the evaluation steps."""

    def _make_metrics(self, num_classes: int) -> None:
        top_k = {"top1": 1, "top5": 5} if num_classes > 5 else {"top1": 1}
        metrics = MetricCollection(
            {name: MulticlassAccuracy(num_classes, top_k=k, average="micro") for name, k in top_k.items()}
        )
        self.train_metrics = metrics.clone(prefix="train/")
        for metric in self.train_metrics.values():
            metric.validate_args = False  # its checks read the labels (host syncs); the training step checks them
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_logit_scale = MeanMetric()

    def _evaluate(self, batch: tuple[Tensor, ...], metrics: MetricCollection, stage: str) -> None:
        x, target, _ = unpack_batch(batch)
        logits = self.student(x)
        check_labels(target, logits.shape[1])
        self.log(f"{stage}/loss", F.cross_entropy(logits.float(), target), batch_size=x.shape[0], sync_dist=True)
        metrics.update(logits, target)
        if stage == "val":
            self.val_logit_scale.update(logits.detach().float().abs().mean())

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")
        self.log_dict(self.test_metrics, batch_size=batch[0].shape[0])

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        """The student's class probabilities (softmax in float32), B×C; ``wkd predict`` writes their top-k
        (:mod:`wkd_lightning.run.predictions`)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.student(x).float().softmax(dim=1)

    def on_validation_epoch_end(self) -> None:
        # compute() reduces over every DDP rank (each sample counted once: evaluation shards are not padded, see
        # EpochSampler); sync_dist=True then only tells Lightning the values are global.
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log_dict(values, prog_bar=True, sync_dist=True)
        top1 = values["val/top1"]
        self.log_best(top1)
        if not self.trainer.sanity_checking:
            self._warn_on_collapse(float(top1), float(self.val_logit_scale.compute()))
        self.val_logit_scale.reset()

    def _warn_on_collapse(self, top1: float, logit_scale: float) -> None:
        """Warn when the student predicts at chance with near-zero logits (seen with near-constant WKD-L costs)."""
        if self.num_classes and top1 <= 1.5 / self.num_classes and logit_scale < 0.05:
            rank_zero_warn(
                f"the student has collapsed at epoch {self.current_epoch + 1}: validation top-1 {top1:.3f} is at "
                f"chance and its mean |logit| is {logit_scale:.4f}. With WKD-L this follows a near-constant cost "
                "matrix (`uniform`, `cka_paired`): use a semantic cost, more Sinkhorn iterations or a smaller γ."
            )


def unpack_batch(batch: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(x, y)`` or ``(x, y, index)`` → ``(x, y, index or None)``; anything else is an error."""
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        x, target, *index = batch
        return x, target, index[0] if index else None
    size = f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else ""
    raise ValueError(f"batches must be (x, y) or (x, y, index) tuples, got a {type(batch).__name__}{size}.")
