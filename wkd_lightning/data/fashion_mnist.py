"""Fashion-MNIST (Xiao et al., 2017) from the IDX files on disk: the project's offline real dataset.

Debian's ``dataset-fashion-mnist`` package installs the four gzipped IDX files under
``/usr/share/datasets/fashion-mnist``; nothing is downloaded at run time.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from wkd_lightning.data.base import ClassificationDataModule
from wkd_lightning.data.sampling import SeededDataset, split_indices

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "apt-get update && apt-get install -y dataset-fashion-mnist"
REINSTALL_HINT = (
    "Reinstall the dataset (`apt-get install --reinstall dataset-fashion-mnist`) or download that file again."
)
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
MEAN, STD = (0.2860,), (0.3530,)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): big-endian header, then unsigned bytes (LeCun's MNIST format)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:  # a cut download or copy, a damaged file
        raise ValueError(
            f"Fashion-MNIST file {os.fspath(path)!r} is truncated or corrupt ({type(error).__name__}: {error}). "
            f"{REINSTALL_HINT}"
        ) from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(
            f"{path} is not an unsigned-byte IDX file (bad magic number); the file may be corrupt. {REINSTALL_HINT}"
        )
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape} but holds {body.size} values. {REINSTALL_HINT}")
    return body.reshape(shape)


def load_split(data_dir: str | os.PathLike, split: str) -> tuple[Tensor, Tensor]:
    """Images (N×28×28 uint8) and labels (N int64) of the ``train`` or ``test`` split."""
    found = []
    for name in _FILES[split]:
        candidates = [Path(data_dir) / f"{name}.gz", Path(data_dir) / name]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {name}.gz not found in {os.fspath(data_dir)!r}. Install the dataset with "
                f"`{INSTALL_HINT}` (files go to {DEFAULT_DIR}) or set --data.data_dir to a folder holding the four "
                "IDX files."
            )
        found.append(read_idx(path))
    images, labels = found
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels in {data_dir!r}.")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


class ImageTensorDataset(Dataset):
    """Grey images held in memory as a uint8 tensor, transformed per sample."""

    def __init__(self, images: Tensor, labels: Tensor, transform: v2.Transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.images[index].unsqueeze(0)), self.labels[index]


class FashionMNISTDataModule(ClassificationDataModule):
    """Fashion-MNIST: 60k training and 10k test images, 28×28 grey, 10 classes.

    Validation uses the test set unless ``val_size`` holds images out of the training set (the CIFAR-100 KD
    literature also validates on the test set, so ``best`` top-1 there is optimistic: report ``last`` too).

    Args:
        data_dir: folder with the four IDX files (``*.gz`` or unpacked).
        batch_size: images per batch.
        num_workers: data-loading worker processes.
        val_size: training images held out for validation (0: validate on the test set).
        train_size: use only this many training images (after the hold-out), a fixed random subset; None: all.
            Small labelled sets are where distillation helps most.
        augment: random crop (padding 2) and horizontal flip for training.
        pin_memory: pin host memory for faster copies to a GPU (ignored without one).
        seed: data seed: the hold-out and subset draws, the per-epoch training order and the per-sample
            augmentation seeds (see :mod:`wkd_lightning.data.sampling`), so a resumed run sees the same batches as
            an uninterrupted one.
        return_index: training batches are ``(x, y, index)`` with each sample's index in the training set (needed by
            :class:`~wkd_lightning.selfkd.PreviousEpochTeacher`); evaluation batches stay ``(x, y)``.
    """

    num_classes = 10
    class_names = CLASS_NAMES
    input_size = (1, 28, 28)

    def __init__(
        self,
        data_dir: str = DEFAULT_DIR,
        batch_size: int = 128,
        num_workers: int = 2,
        val_size: int = 0,
        train_size: int | None = None,
        augment: bool = True,
        pin_memory: bool = True,
        seed: int = 0,
        return_index: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, return_index, val_size, train_size)
        self.save_hyperparameters()
        self.data_dir, self.augment = data_dir, augment

    def transform(self, train: bool) -> v2.Transform:
        steps = [v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip()] if train and self.augment else []
        return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])

    def setup(self, stage: str | None = None) -> None:
        test_images, test_labels = load_split(self.data_dir, "test")
        self.test_set = ImageTensorDataset(test_images, test_labels, self.transform(train=False))
        if stage in ("test", "predict"):
            return
        images, labels = load_split(self.data_dir, "train")
        train_index, val_index = split_indices(len(labels), self.val_size, self.train_size, self.seed)
        train = ImageTensorDataset(images[train_index], labels[train_index], self.transform(train=True))
        self.train_set = SeededDataset(train, return_index=self.return_index)
        self.val_set = (
            ImageTensorDataset(images[val_index], labels[val_index], self.transform(train=False))
            if self.val_size
            else self.test_set
        )
