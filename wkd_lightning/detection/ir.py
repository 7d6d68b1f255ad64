"""Per-class teacher RoI features over a detection data set, for WKD-L cost matrices of detectors.

A detector's box classifier has C = K + 1 outputs: the K object classes and the background. The IR cost needs
features of every one of them, taken where the teacher itself looks, at RoIs:

* class ``k ≥ 1``: one RoI per ground-truth box of class ``k``;
* background (0): the teacher's own highest-scoring RPN proposals that overlap no ground-truth box (IoU below its
  box head's background threshold, 0.5), ``background_per_image`` per image.

The rows of :func:`extract_roi_class_features` then go to :func:`wkd_lightning.ir.methods.cost_matrix` unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.ops import box_iou

from wkd_lightning.detection.roi import ROI_FEATURES, backbone_features, box_head_outputs
from wkd_lightning.ir.extract import LOGITS, ClassFeatureBank, progress_bar
from wkd_lightning.teacher import FrozenTeacher

#: What ``layer`` may name for a detector: the RoI features or the box classifier's logits.
DETECTION_LAYERS = (*ROI_FEATURES, LOGITS)


@torch.no_grad()
def extract_roi_class_features(
    model: nn.Module,
    loader: Iterable,
    layer: str = "box_head",
    *,
    max_per_class: int | None = None,
    background_per_image: int = 4,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[Tensor]:
    """Run the teacher detector (eval mode, no grad) over ``loader`` and collect its RoI features per class.

    Args:
        model: a torchvision ``FasterRCNN`` (or a :class:`~wkd_lightning.teacher.FrozenTeacher` around one); put in
            eval mode for the pass and restored afterwards.
        loader: yields ``(images, targets)`` detection batches (use a sequential loader without augmentation).
        layer: ``"box_head"`` (the box head's vector), ``"roi_align"`` (the RoI-Align maps, every position a row) or
            ``"logits"`` (the box classifier's output).
        max_per_class: keep at most this many RoIs per class (the first ones seen).
        background_per_image: background RoIs taken from each image.
        device: where to run the teacher (default: where its parameters are).
        progress: show a progress bar.

    Returns:
        One ``n_k × d`` fp32 tensor per class ``k`` of the box classifier, background (0) first.

    Raises:
        ValueError: an unknown layer, a model that is not a Faster R-CNN, labels outside the classifier's range, or a
            class without any box (with ``label_mapping: category_id`` the unused COCO ids have none: build the cost
            on contiguous labels, or use ``classifier_cosine``, which needs no features).
    """
    detector = model.model if isinstance(model, FrozenTeacher) else model
    if not isinstance(detector, FasterRCNN):
        raise ValueError(f"RoI features need a torchvision FasterRCNN teacher, got {type(detector).__name__}.")
    if layer not in DETECTION_LAYERS:
        raise ValueError(f"unknown detection layer {layer!r}; choose one of {', '.join(DETECTION_LAYERS)}.")
    if background_per_image < 1:
        raise ValueError(f"background_per_image must be >= 1 (the background is a class), got {background_per_image}.")
    if device is not None:
        detector.to(device)
    run_device = next(detector.parameters()).device
    num_classes = detector.roi_heads.box_predictor.cls_score.out_features
    background_iou = detector.roi_heads.proposal_matcher.low_threshold
    bank = ClassFeatureBank(num_classes, max_per_class)
    was_training = detector.training
    detector.eval()
    try:
        for images, targets in progress_bar(loader, layer, progress):
            images = [image.to(run_device) for image in images]
            targets = [{"boxes": t["boxes"].to(run_device), "labels": t["labels"].to(run_device)} for t in targets]
            image_list, targets = detector.transform(images, targets)
            features = backbone_features(detector, image_list)
            proposals, _ = detector.rpn(image_list, features)
            rois, labels = zip(
                *(
                    _gt_and_background(t["boxes"], t["labels"], p, background_iou, background_per_image)
                    for t, p in zip(targets, proposals)
                )
            )
            outputs = box_head_outputs(detector, features, list(rois), image_list.image_sizes)
            bank.add(outputs.class_logits if layer == LOGITS else outputs.features[layer], torch.cat(labels))
            if bank.full:
                break
    finally:
        detector.train(was_training)
    return bank.per_class(
        "boxes (and background RoIs)",
        hint="is the training subset too small? With label_mapping category_id, unused COCO ids never have boxes: "
        "build the cost with label_mapping contiguous, or use classifier_cosine, which needs no features",
    )


def _gt_and_background(
    boxes: Tensor, labels: Tensor, proposals: Tensor, background_iou: float, count: int
) -> tuple[Tensor, Tensor]:
    """One image's RoIs and labels: its ground-truth boxes, then ``count`` proposals that overlap none of them."""
    overlap = box_iou(proposals, boxes).max(dim=1).values if len(boxes) else proposals.new_zeros(len(proposals))
    background = proposals[overlap < background_iou][:count]  # RPN proposals come sorted by objectness
    rois = torch.cat([boxes, background])
    return rois, torch.cat([labels.long(), labels.new_zeros(len(background), dtype=torch.long)])
