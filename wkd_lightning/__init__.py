"""wkd-lightning: Wasserstein-distance knowledge distillation (WKD-L, WKD-F) for PyTorch Lightning."""

from wkd_lightning import legacy
from wkd_lightning.data import (
    CIFAR100DataModule,
    COCODetectionDataModule,
    FashionMNISTDataModule,
    ImageNetDataModule,
)
from wkd_lightning.detection import DetectionDistillationModule
from wkd_lightning.module import DistillationModule
from wkd_lightning.teacher import FrozenTeacher

__all__ = [
    "CIFAR100DataModule",
    "COCODetectionDataModule",
    "DetectionDistillationModule",
    "DistillationModule",
    "FashionMNISTDataModule",
    "FrozenTeacher",
    "ImageNetDataModule",
]
__version__ = "0.1.0"

legacy.install()  # old import paths (configs and checkpoints of earlier versions) keep loading
