"""``DetectionDistillationModule``: a Faster R-CNN student distilled from a frozen Faster R-CNN teacher.

One training step: the student's own training pass samples RoIs (:func:`~wkd_lightning.detection.roi.student_rois`),
the frozen teacher runs its backbone and box head on the same images and RoIs
(:func:`~wkd_lightning.detection.roi.teacher_rois`), and the RoIs become the "samples" of an ordinary
:class:`~wkd_lightning.losses.base.DistillationContext`: class logits ``K×C`` (background included), RoI labels as
targets, RoI features under the names of :data:`~wkd_lightning.detection.roi.ROI_FEATURES`. So the classification
loss plug-ins apply unchanged: WKD-L on the RoI class logits (its IR cost from ``wkd-ir`` over teacher RoI features),
WKD-F on RoI-Align features through a projector, KD/DKD on the same logits, FitNet on the same features. The total is
Faster R-CNN's four terms plus the weighted distillation terms; teacher, checkpoints, optimizer, weighted sum, loss
watch and the logging of every term raw and weighted come from
:class:`~wkd_lightning.base_module.TeacherStudentModule`.

Validation and test report COCO box mAP (torchmetrics ``MeanAveragePrecision``, pycocotools backend):
``val/map`` (AP@[.5:.95]), ``val/map_50``, ``val/map_75``, ``val/map_small|medium|large``, and ``val/map_best``.

Example:
    >>> from wkd_lightning.detection import DetectionDistillationModule, faster_rcnn
    >>> from wkd_lightning.losses import WKDFeature
    >>> module = DetectionDistillationModule(
    ...     student=faster_rcnn("resnet18", num_classes=4, min_size=64, max_size=96),
    ...     teacher=faster_rcnn("resnet34", num_classes=4, min_size=64, max_size=96),
    ...     losses=[WKDFeature(student_path="roi_align", teacher_path="roi_align")],
    ... )  # doctest: +SKIP (a teacher needs teacher_weights in real runs)
"""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import FasterRCNN

from wkd_lightning.base_module import TeacherStudentModule
from wkd_lightning.detection.roi import ROI_FEATURES, check_same_transform, student_rois, teacher_rois
from wkd_lightning.losses.base import DistillationLoss, Terms, loss_plugins
from wkd_lightning.losses.checks import check_number
from wkd_lightning.teacher import select_teacher

#: The COCO metrics logged, by torchmetrics' key.
MAP_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")
#: What to try when the training loss becomes NaN or infinite.
NONFINITE_ADVICE = "Lower the learning rate or the loss weights, or lengthen warmup_steps."


class DetectionSGD(torch.optim.SGD):
    """The Detectron2 / torchvision detection recipe: SGD with momentum 0.9 and weight decay 1e-4 (lr 0.02 at 16
    images per batch; scale it linearly with the batch size)."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.9, weight_decay: float = 1e-4) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


class DetectionDistillationModule(TeacherStudentModule):
    """Train a Faster R-CNN ``student`` with its own losses plus distillation losses from a frozen ``teacher``.

    Args:
        student: a torchvision ``FasterRCNN`` (e.g. :func:`~wkd_lightning.detection.faster_rcnn`).
        teacher: a ``FasterRCNN`` with the same classes and input transform, or ``None`` (training a teacher or the
            baseline student). Frozen exactly as in classification (:class:`~wkd_lightning.teacher.FrozenTeacher`):
            eval mode, no grad, never in the optimizer or in checkpoints.
        teacher_weights: its weights file (torchvision's COCO checkpoint, a ``wkd-det fit`` checkpoint, ...).
        losses: distillation plug-ins by key (a list is keyed by the plug-ins' names, as in
            :class:`~wkd_lightning.module.DistillationModule`); feature losses name ``"roi_align"`` or ``"box_head"``
            as their paths.
        optimizer: builds the optimizer from the student's and the losses' trainable parameters.
        lr_scheduler: an epoch-wise LR scheduler (e.g. ``MultiStepLR`` with milestones [8, 11] for the 1× schedule).
        warmup_steps: linear LR warm-up over this many optimizer steps from 0.001× (detectors diverge without one).
        ce_weight: weight of the box classifier's cross-entropy (Faster R-CNN's ``roi_classifier`` term), the
            detection counterpart of :class:`~wkd_lightning.module.DistillationModule`'s ``ce_weight`` (default 1).
        allow_changed_inputs: load a checkpoint whose run read other teacher weights or WKD-L cost files, with a
            warning, instead of refusing it (see :mod:`wkd_lightning.run.fingerprints`).

    Batches are ``(images, targets)``: lists of ``3×H×W`` images in [0, 1] and of ``{"boxes", "labels", ...}`` dicts
    (:class:`~wkd_lightning.data.COCODetectionDataModule`).

    Logged in training, as epoch means: the loss and its terms (:mod:`wkd_lightning.base_module`; the task terms are
    Faster R-CNN's ``rpn_objectness``, ``rpn_box``, ``roi_box`` at weight 1 and ``roi_classifier`` at ``ce_weight``)
    and ``train/rois``, the RoIs per batch.
    """

    #: The validation metric that picks the best checkpoint and fills ``summary.json`` (COCO AP@[.5:.95]).
    monitor = "val/map"

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        teacher_weights: str | None = None,
        losses: dict[str, DistillationLoss | None] | None = None,
        optimizer: OptimizerCallable = DetectionSGD,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 1000,
        ce_weight: float = 1.0,
        allow_changed_inputs: bool = False,
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
        for role, model in (("student", student), ("teacher", teacher)):
            if model is not None and not isinstance(model, FasterRCNN):
                raise TypeError(
                    f"the {role} must be a torchvision FasterRCNN (e.g. wkd_lightning.detection.faster_rcnn), got "
                    f"{type(model).__name__}."
                )
        plugins = loss_plugins(losses)
        _check_feature_names(plugins)
        source = select_teacher(student, teacher, teacher_weights, None, plugins)
        hint = "set `teacher` and `teacher_weights`."
        super().__init__(student, source, plugins, optimizer, lr_scheduler, hint, NONFINITE_ADVICE)
        self.save_hyperparameters(ignore=["student", "teacher", "losses", "optimizer", "lr_scheduler"])
        if self.teacher is not None:
            check_same_transform(self.teacher.model, student)
            student_classes, teacher_classes = self.num_classes, _num_classes(self.teacher.model)
            if student_classes != teacher_classes:
                raise ValueError(
                    f"the teacher predicts {teacher_classes} classes and the student {student_classes}: both must "
                    "have the data's num_classes (background included)."
                )
        self.uses_teacher = any(loss.requires_teacher or loss.teacher_paths for loss in self.losses)
        self.record_input_fingerprints(teacher_weights, self.losses, allow_changed_inputs)
        self.warmup_steps = warmup_steps
        self.ce_weight = check_number(ce_weight, "ce_weight", "DetectionDistillationModule")
        self.val_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
        self.test_map = self.val_map.clone()
        self._build_losses()

    @property
    def num_classes(self) -> int:
        """C of the student's box classifier, background included."""
        return _num_classes(self.student)

    @torch.no_grad()
    def _build_losses(self) -> None:
        """Hand the losses one example RoI of each network (zeros), so they can size their projectors."""
        if not any(loss.student_paths or loss.teacher_paths for loss in self.losses):
            return
        if self.teacher is None:
            raise ValueError("feature losses compare with a teacher: set `teacher` and `teacher_weights`.")
        examples = [_example_roi_features(model) for model in (self.student, self.teacher.model)]
        for loss in self.losses:
            loss.build(*examples)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes is not None and data_classes != self.num_classes:
            raise ValueError(
                f"the data has {data_classes} classes (background included) but the student's box classifier "
                f"{self.num_classes}: set the student's num_classes to {data_classes}."
            )

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.trainable_parameters())
        schedulers = []
        if self.warmup_steps:
            warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.001, total_iters=self.warmup_steps)
            schedulers.append({"scheduler": warmup, "interval": "step"})
        if self.lr_scheduler_factory is not None:
            schedulers.append({"scheduler": self.lr_scheduler_factory(optimizer), "interval": "epoch"})
        return [optimizer], schedulers

    # ------------------------------------------------------------------ steps
    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections of the student (call in eval mode): per image ``{"boxes", "labels", "scores"}``."""
        return self.student(images)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets = unpack_detection_batch(batch)
        student = student_rois(self.student, images, targets)
        terms = Terms()
        for name, value in student.losses.items():  # Faster R-CNN's own terms; its box cross-entropy at ce_weight
            terms.add(name, value, self.ce_weight if name == "roi_classifier" else 1.0)
        checked = self.first_step_of_epoch()
        ctx = None
        if self.losses:
            teacher = teacher_rois(self.teacher.model, student.images, student.proposals) if self.uses_teacher else None
            ctx = self.training_context(
                student_logits=student.rois.class_logits,
                teacher_logits=teacher.class_logits if teacher is not None else None,
                target=student.labels,
                student_features=student.rois.features,
                teacher_features=teacher.features if teacher is not None else {},
            )
        total = self.step_loss(terms, ctx, checked, batch_idx, len(images))
        self.log("train/rois", float(len(student.labels)), batch_size=len(images))
        return total

    def _evaluate(self, batch, metric: MeanAveragePrecision) -> None:
        images, targets = unpack_detection_batch(batch)
        metric.update(self.student(images), [_metric_target(t) for t in targets])

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_map)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_map)

    def predict_step(self, batch, batch_idx: int) -> list[dict[str, Tensor]]:
        images = batch[0] if isinstance(batch, (tuple, list)) and isinstance(batch[0], (tuple, list)) else batch
        return self.student(list(images))

    def _log_map(self, metric: MeanAveragePrecision, stage: str) -> Tensor:
        values = metric.compute()  # over every DDP rank's detections; sync_dist=True says the values are global
        metric.reset()
        self.log(f"{stage}/map", values["map"].float(), prog_bar=True, sync_dist=True)
        self.log_dict({f"{stage}/{key}": values[key].float() for key in MAP_KEYS if key != "map"}, sync_dist=True)
        return values["map"]

    def on_validation_epoch_end(self) -> None:
        self.log_best(self._log_map(self.val_map, "val"))

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")


def _check_feature_names(losses: nn.ModuleList) -> None:
    for loss in losses:
        unknown = [p for p in (*loss.student_paths, *loss.teacher_paths) if p not in ROI_FEATURES]
        if unknown:
            raise ValueError(
                f"{loss.name} reads features {unknown}, but a detector offers only the RoI features "
                f"{', '.join(ROI_FEATURES)} (student_path/teacher_path)."
            )


def unpack_detection_batch(batch) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """``(images, targets)`` lists, or an error saying what a detection batch must look like."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(x, (tuple, list)) for x in batch):
        images, targets = list(batch[0]), list(batch[1])
        if len(images) == len(targets) and all(isinstance(t, dict) and "boxes" in t for t in targets):
            return images, targets
    raise ValueError(
        "detection batches must be (images, targets): a list of 3×H×W images and a list of dicts with 'boxes' and "
        "'labels' (use wkd_lightning.data.COCODetectionDataModule or its collate function)."
    )


def _metric_target(target: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ground truth in torchmetrics' format; ``iscrowd`` and ``area`` keep COCO's evaluation rules."""
    keep = ("boxes", "labels", "iscrowd", "area")
    return {key: target[key] for key in keep if key in target}


def _num_classes(detector: FasterRCNN) -> int:
    return detector.roi_heads.box_predictor.cls_score.out_features


def _example_roi_features(detector: FasterRCNN) -> dict[str, Tensor]:
    """Zero-valued RoI features of one RoI, with the shapes the detector produces (eval mode, no statistics move)."""
    heads = detector.roi_heads
    height, width = heads.box_roi_pool.output_size
    parameter = next(detector.parameters())
    pooled = torch.zeros(1, detector.backbone.out_channels, height, width, device=parameter.device)
    was_training = heads.training
    heads.eval()
    try:
        return {"roi_align": pooled, "box_head": heads.box_head(pooled)}
    finally:
        heads.train(was_training)
