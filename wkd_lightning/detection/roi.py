"""The Faster R-CNN training pass taken apart, so that teacher and student see the same regions of interest.

Distilling a detector's box head needs RoI-level correspondence: the k-th row of the teacher's class logits must
describe the same box as the k-th row of the student's. :func:`student_rois` runs the student's own training pass
(resize/normalise, backbone + FPN, RPN, RoI sampling, box head) and keeps its sampled proposals;
:func:`teacher_rois` runs the teacher's backbone on the *same* transformed images and its box head on *those*
proposals. Both detectors must therefore share one input transform (:func:`check_same_transform`).

Every RoI carries the label Faster R-CNN assigned it (its matched ground-truth class, 0 for background), which is
the target ``t`` of WKD-L's target/non-target split; the distillation features are

* ``"roi_align"``: the RoI-Align output of the FPN (``K × 256 × 7 × 7``), what WKD-F and FitNet compare;
* ``"box_head"``: the box head's representation (``K × 1024`` for torchvision's two-layer MLP head).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss

#: Feature names a detection distillation loss may read (``student_path`` / ``teacher_path``).
ROI_FEATURES = ("roi_align", "box_head")
#: The input-transform settings that must agree for teacher and student to see the same pixels.
_TRANSFORM_SETTINGS = ("min_size", "max_size", "image_mean", "image_std", "size_divisible", "fixed_size")


@dataclass(frozen=True)
class RoIOutputs:
    """One detector's box-head outputs over the sampled RoIs of a batch (``K`` RoIs, all images concatenated).

    Attributes:
        class_logits: ``K × C`` box classifier logits, background (index 0) included.
        box_regression: ``K × 4C`` class-specific box deltas.
        features: ``{"roi_align": K×256×7×7, "box_head": K×D}``.
    """

    class_logits: Tensor
    box_regression: Tensor
    features: dict[str, Tensor]


@dataclass(frozen=True)
class StudentPass:
    """What the student's training pass hands to the teacher and to the losses.

    Attributes:
        images: the transformed (resized, normalised, padded) batch.
        proposals: the sampled RoIs per image, in the transformed images' coordinates.
        labels: ``K`` class assigned to each RoI (0: background), the WKD-L/DKD target.
        rois: the student's box-head outputs on ``proposals``.
        losses: Faster R-CNN's own four terms (RPN objectness and box, RoI classifier and box regression).
    """

    images: ImageList
    proposals: list[Tensor]
    labels: Tensor
    rois: RoIOutputs
    losses: dict[str, Tensor]


def check_same_transform(teacher: FasterRCNN, student: FasterRCNN) -> None:
    """Raise unless teacher and student resize and normalise images identically (their RoIs would not match).

    Raises:
        ValueError: naming the settings that differ and their values.
    """
    differ = [
        f"{name}: teacher {getattr(teacher.transform, name)!r}, student {getattr(student.transform, name)!r}"
        for name in _TRANSFORM_SETTINGS
        if getattr(teacher.transform, name) != getattr(student.transform, name)
    ]
    if differ:
        raise ValueError(
            "teacher and student must share one input transform so that their RoIs correspond; they differ in "
            + "; ".join(differ)
            + ". Give both the same min_size/max_size (and normalisation)."
        )


def box_head_outputs(model: FasterRCNN, features: OrderedDict[str, Tensor], proposals, image_sizes) -> RoIOutputs:
    """``model``'s RoI-Align, box head and box predictor on ``proposals``."""
    heads = model.roi_heads
    pooled = heads.box_roi_pool(features, proposals, image_sizes)
    representation = heads.box_head(pooled)
    class_logits, box_regression = heads.box_predictor(representation)
    return RoIOutputs(class_logits, box_regression, {"roi_align": pooled, "box_head": representation})


def backbone_features(model: FasterRCNN, images: ImageList) -> OrderedDict[str, Tensor]:
    """The FPN levels of ``model`` for a transformed batch."""
    features = model.backbone(images.tensors)
    return OrderedDict([("0", features)]) if isinstance(features, Tensor) else features


def student_rois(model: FasterRCNN, images: list[Tensor], targets: list[dict[str, Tensor]]) -> StudentPass:
    """The student's training pass (the same computation as ``FasterRCNN.forward`` in train mode), kept in pieces.

    Args:
        model: the student, in train mode.
        images: the batch's images, ``3×H×W`` floats in [0, 1].
        targets: per image ``{"boxes": N×4 xyxy, "labels": N}`` (other keys are ignored).
    """
    targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
    image_list, targets = model.transform(images, targets)
    features = backbone_features(model, image_list)
    proposals, rpn_losses = model.rpn(image_list, features, targets)
    proposals, _, labels, regression_targets = model.roi_heads.select_training_samples(proposals, targets)
    rois = box_head_outputs(model, features, proposals, image_list.image_sizes)
    loss_classifier, loss_box_reg = fastrcnn_loss(rois.class_logits, rois.box_regression, labels, regression_targets)
    return StudentPass(
        images=image_list,
        proposals=proposals,
        labels=torch.cat(labels),
        rois=rois,
        losses={
            "rpn_objectness": rpn_losses["loss_objectness"],
            "rpn_box": rpn_losses["loss_rpn_box_reg"],
            "roi_classifier": loss_classifier,
            "roi_box": loss_box_reg,
        },
    )


@torch.no_grad()
def teacher_rois(model: FasterRCNN, images: ImageList, proposals: list[Tensor]) -> RoIOutputs:
    """The teacher's box-head outputs on the student's proposals, from its own backbone on the same images."""
    return box_head_outputs(model, backbone_features(model, images), proposals, images.image_sizes)
