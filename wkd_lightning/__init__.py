"""wkd-lightning: Wasserstein-distance knowledge distillation (WKD-L, WKD-F) for PyTorch Lightning."""

from wkd_lightning.data import FashionMNISTDataModule
from wkd_lightning.module import DistillationModule
from wkd_lightning.teacher import FrozenTeacher

__all__ = ["DistillationModule", "FashionMNISTDataModule", "FrozenTeacher"]
__version__ = "0.1.0"
