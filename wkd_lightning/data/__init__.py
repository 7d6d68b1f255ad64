"""Lightning data modules."""

from wkd_lightning.data.fashion_mnist import FashionMNISTDataModule

__all__ = ["FashionMNISTDataModule"]
