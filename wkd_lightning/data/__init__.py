"""Lightning data modules (classification and COCO detection), and the exact, resumable sampling they share
(:mod:`wkd_lightning.data.sampling`)."""

from wkd_lightning.data.base import ClassificationDataModule
from wkd_lightning.data.cifar100 import CIFAR100DataModule
from wkd_lightning.data.coco import COCODetectionDataModule
from wkd_lightning.data.fashion_mnist import FashionMNISTDataModule
from wkd_lightning.data.imagenet import ImageNetDataModule
from wkd_lightning.data.sampling import EpochSampler, SeededDataset, make_loader

__all__ = [
    "CIFAR100DataModule",
    "COCODetectionDataModule",
    "ClassificationDataModule",
    "EpochSampler",
    "FashionMNISTDataModule",
    "ImageNetDataModule",
    "SeededDataset",
    "make_loader",
]
