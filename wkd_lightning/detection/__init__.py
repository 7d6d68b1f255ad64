"""WKD for object detection: a Faster R-CNN student distilled from a frozen Faster R-CNN teacher on shared RoIs.

The paper evaluates WKD-L (RoI class logits) and WKD-F (RoI-Align features) on MS-COCO; the released code has no
detection part. This package builds it on torchvision's detectors: :func:`faster_rcnn` (models), :mod:`.roi` (the
training pass in pieces, teacher on the student's RoIs), :class:`DetectionDistillationModule`, the ``wkd-det`` CLI,
and :func:`extract_roi_class_features` for ``wkd-ir`` cost matrices over teacher RoI features.
"""

from wkd_lightning.detection.ir import extract_roi_class_features
from wkd_lightning.detection.models import BACKBONES, faster_rcnn
from wkd_lightning.detection.module import DetectionDistillationModule, DetectionSGD

__all__ = ["BACKBONES", "DetectionDistillationModule", "DetectionSGD", "extract_roi_class_features", "faster_rcnn"]
