"""Faster R-CNN teachers and students built from torchvision's detection parts, with no download at run time.

:func:`faster_rcnn` makes a torchvision :class:`~torchvision.models.detection.FasterRCNN` with an FPN over a ResNet
(18/34/50/101) or a MobileNetV3-Large backbone. Weights only ever come from local files:

* a **teacher** gets its whole-detector weights through ``teacher_weights`` of the distillation module, e.g. the
  torchvision COCO checkpoint ``fasterrcnn_resnet50_fpn_coco-258fb6c6.pth`` (a plain state dict; this factory with
  ``backbone="resnet50", num_classes=91`` has exactly its keys) or a detector trained with ``wkd-det fit``;
* a **student** usually starts from ImageNet classification weights of its backbone: ``backbone_weights`` takes
  torchvision's classification checkpoint file (``resnet18-f37072fd.pth``, ``mobilenet_v3_large-8738ca79.pth``).

Backbone BatchNorm layers are ``FrozenBatchNorm2d``, as in torchvision's detectors and the detection literature:
detection batches (2 images per GPU) are too small for batch statistics, so the ImageNet statistics are kept. Train
from a pretrained backbone; from scratch, frozen BatchNorm is an identity and deep backbones train poorly.
"""

from __future__ import annotations

import os

from torch import nn
from torchvision.models import get_model_weights
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone

from wkd_lightning.checkpoints import describe_mismatch, read_state_dict

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
MOBILENETS = ("mobilenet_v3_large",)
BACKBONES = RESNETS + MOBILENETS
#: Channels of every FPN level (and so of the RoI-Align features) of these detectors.
FPN_CHANNELS = 256
#: The classification head of the backbone's ImageNet checkpoint, absent from the detector.
_CLASSIFIER_PREFIXES = {"resnet": ("fc.",), "mobilenet": ("classifier.",)}


def faster_rcnn(
    backbone: str = "resnet50",
    num_classes: int = 91,
    *,
    backbone_weights: str | None = None,
    trainable_backbone_layers: int = 3,
    min_size: int = 800,
    max_size: int = 1333,
    box_batch_size_per_image: int = 512,
    box_detections_per_img: int = 100,
) -> FasterRCNN:
    """A Faster R-CNN with an FPN over ``backbone``.

    Args:
        backbone: one of :data:`BACKBONES`.
        num_classes: outputs of the box classifier, background (index 0) included: 91 for torchvision's COCO
            checkpoints (raw category ids), K + 1 for K contiguous classes.
        backbone_weights: ImageNet classification weights of the backbone (a torchvision ``.pth`` state dict or a
            ``{"model": state_dict}`` file); its classifier head is ignored, every other key must fit.
        trainable_backbone_layers: trainable backbone stages counted from the last (0..5 for ResNets, 0..6 for
            MobileNetV3); the others are frozen, as torchvision does for fine-tuning.
        min_size: shorter image side after the detector's own resize (800 on COCO).
        max_size: cap of the longer side (1333 on COCO).
        box_batch_size_per_image: RoIs sampled per image for the box head in training (512 in the paper setting).
        box_detections_per_img: detections kept per image at inference.

    Raises:
        ValueError: an unknown backbone, fewer than 2 classes, or backbone weights that do not fit.
        FileNotFoundError: ``backbone_weights`` does not exist.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown detection backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too and must be >= 2, got {num_classes}.")
    detector_options = {
        "min_size": min_size,
        "max_size": max_size,
        "box_batch_size_per_image": box_batch_size_per_image,
        "box_detections_per_img": box_detections_per_img,
    }
    if backbone in RESNETS:
        features = resnet_fpn_backbone(backbone_name=backbone, weights=None, trainable_layers=trainable_backbone_layers)
        if backbone_weights is not None:
            _load_backbone(features.body, backbone_weights, backbone, strip_prefix="")
        return FasterRCNN(features, num_classes=num_classes, **detector_options)
    features = mobilenet_backbone(
        backbone_name=backbone, weights=None, fpn=True, trainable_layers=trainable_backbone_layers
    )
    if backbone_weights is not None:
        _load_backbone(features.body, backbone_weights, backbone, strip_prefix="features.")
    # Two FPN levels of a 32× stride network: every anchor size at every level (torchvision's choice for this model).
    anchor_sizes = ((32, 64, 128, 256, 512),) * 3
    anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    return FasterRCNN(
        features, num_classes=num_classes, rpn_anchor_generator=anchors, rpn_score_thresh=0.05, **detector_options
    )


def _load_backbone(body: nn.Module, path: str | os.PathLike, backbone: str, *, strip_prefix: str) -> None:
    """Load classification weights into the detector's backbone body, strictly except for the classifier head."""
    family = "resnet" if backbone in RESNETS else "mobilenet"
    if not os.path.isfile(path):
        url = get_model_weights(backbone).IMAGENET1K_V1.url
        raise FileNotFoundError(
            f"backbone weights file {os.fspath(path)!r} does not exist. Download torchvision's ImageNet weights of "
            f"{backbone} once on a machine with network ({url}) and put the file there, or set backbone_weights: null "
            "to start from random weights."
        )
    state = {
        key.removeprefix(strip_prefix): value
        for key, value in read_state_dict(path, what="backbone weights").items()
        if not key.startswith(_CLASSIFIER_PREFIXES[family]) and not key.endswith("num_batches_tracked")
    }
    expected = {k: v for k, v in body.state_dict().items() if not k.endswith("num_batches_tracked")}
    problem = describe_mismatch(expected, state)
    if problem:
        raise ValueError(
            f"backbone weights {os.fspath(path)!r} do not fit a {backbone} detection backbone: {problem}. Pass the "
            f"torchvision ImageNet checkpoint of {backbone} (e.g. from torchvision.models.{backbone}(weights=...))."
        )
    body.load_state_dict(state, strict=False)
