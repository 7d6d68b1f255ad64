"""CIFAR-100 (Krizhevsky, 2009) from the python-pickle release on disk: the KD literature's small benchmark.

The release ``cifar-100-python.tar.gz`` holds three pickles, written by Python 2 and read here with
``pickle.load(f, encoding="bytes")`` (so their keys are byte strings): ``train`` (50k images) and ``test`` (10k),
each with ``b"data"`` (N×3072 uint8, the red, green and blue 32×32 planes of each image in turn),
``b"fine_labels"`` (0..99), ``b"coarse_labels"`` (0..19, the 20 superclasses) and ``b"filenames"``; and ``meta``
with ``b"fine_label_names"`` and ``b"coarse_label_names"``. Pickles can run code when loaded: only read files from
the official release.
"""

from __future__ import annotations

import os
import pickle
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from wkd_lightning.data.base import ClassificationDataModule
from wkd_lightning.data.device_augment import DrawCropFlip, crop_flip_normalize
from wkd_lightning.data.sampling import SeededDataset, split_indices

FOLDER = "cifar-100-python"
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
NUM_FINE, NUM_COARSE = 100, 20


def resolve_root(data_dir: str | os.PathLike) -> Path:
    """The ``cifar-100-python`` folder: ``data_dir/cifar-100-python``, or ``data_dir`` itself when it is that folder
    (named so, or holding the ``train``/``test``/``meta`` files)."""
    base = Path(data_dir)
    if (base / FOLDER).is_dir():
        return base / FOLDER
    if base.name == FOLDER or any((base / name).is_file() for name in ("train", "test", "meta")):
        return base
    return base / FOLDER


def _missing(path: Path, data_dir: str | os.PathLike) -> FileNotFoundError:
    parent = Path(data_dir).parent if resolve_root(data_dir) == Path(data_dir) else Path(data_dir)
    return FileNotFoundError(
        f"CIFAR-100 file {os.fspath(path)!r} not found. Download {URL} and extract it so that "
        f"{os.fspath(parent / FOLDER / 'train')!r} exists (`tar -xzf cifar-100-python.tar.gz -C {os.fspath(parent)}`), "
        f"or run `torchvision.datasets.CIFAR100({os.fspath(parent)!r}, download=True)` on a machine with network "
        "access; then set --data.data_dir to that folder."
    )


def read_pickle(path: Path) -> dict[str, Any]:
    """One pickle of the release as a dict with ``str`` keys (the files' byte-string keys decoded as latin-1)."""
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise
    except Exception as error:  # a damaged pickle can fail in many ways (EOFError, UnpicklingError, ...)
        raise ValueError(
            f"{os.fspath(path)} is not a readable CIFAR-100 pickle ({type(error).__name__}: {error}); the file is "
            f"truncated or corrupt: download {URL} and extract it again."
        ) from error
    if not isinstance(obj, dict):
        raise ValueError(f"{os.fspath(path)} holds a {type(obj).__name__}, not the dict of a CIFAR-100 pickle.")
    return {key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in obj.items()}


def _require(content: dict[str, Any], path: Path, keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in content]
    if missing:
        raise ValueError(
            f"{os.fspath(path)} lacks the CIFAR-100 key(s) {missing} (found {sorted(content)}); is it the python "
            f"release ({URL})?"
        )


def _names(value: Any, path: Path, key: str, count: int) -> tuple[str, ...]:
    names = tuple(v.decode("latin1") if isinstance(v, bytes) else str(v) for v in value)
    if len(names) != count:
        raise ValueError(f"{os.fspath(path)}: {key} holds {len(names)} names, expected {count}.")
    return names


def _labels(value: Any, path: Path, key: str, n: int, count: int) -> Tensor:
    labels = np.asarray(value)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{os.fspath(path)}: {key} has shape {labels.shape} and dtype {labels.dtype}; expected {n} integers "
            "(one per image)."
        )
    if n and (labels.min() < 0 or labels.max() >= count):
        raise ValueError(f"{os.fspath(path)}: {key} outside 0..{count - 1} (min {labels.min()}, max {labels.max()}).")
    return torch.from_numpy(labels.astype(np.int64))


def load_meta(data_dir: str | os.PathLike) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Fine (100) and coarse (20) class names from ``meta``."""
    path = resolve_root(data_dir) / "meta"
    if not path.is_file():
        raise _missing(path, data_dir)
    content = read_pickle(path)
    _require(content, path, ("fine_label_names", "coarse_label_names"))
    fine = _names(content["fine_label_names"], path, "fine_label_names", NUM_FINE)
    coarse = _names(content["coarse_label_names"], path, "coarse_label_names", NUM_COARSE)
    return fine, coarse


def load_split(data_dir: str | os.PathLike, split: str) -> tuple[Tensor, Tensor, Tensor]:
    """Images (N×3×32×32 uint8), fine labels and coarse labels (N int64) of the ``train`` or ``test`` split."""
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-100 split must be 'train' or 'test', got {split!r}.")
    path = resolve_root(data_dir) / split
    if not path.is_file():
        raise _missing(path, data_dir)
    content = read_pickle(path)
    _require(content, path, ("data", "fine_labels", "coarse_labels"))
    data = content["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        described = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{os.fspath(path)}: data is a {described}; expected an N×3072 uint8 array.")
    n = len(data)
    fine = _labels(content["fine_labels"], path, "fine_labels", n, NUM_FINE)
    coarse = _labels(content["coarse_labels"], path, "coarse_labels", n, NUM_COARSE)
    images = torch.from_numpy(data.reshape(n, 3, 32, 32).copy())
    return images, fine, coarse


def fine_to_coarse(fine: Tensor, coarse: Tensor) -> Tensor:
    """The superclass of each of the 100 classes, read off paired label vectors (-1 for a class never seen).

    Raises:
        ValueError: a fine class paired with two different superclasses.
    """
    mapping = torch.full((NUM_FINE,), -1, dtype=torch.int64)
    mapping[fine] = coarse
    if not torch.equal(mapping[fine], coarse):
        bad = int(fine[mapping[fine] != coarse][0])
        raise ValueError(f"CIFAR-100 labels pair fine class {bad} with more than one coarse class.")
    return mapping


class CIFARImageDataset(Dataset):
    """RGB images held in memory as an N×3×32×32 uint8 tensor, transformed per sample."""

    def __init__(self, images: Tensor, labels: Tensor, transform: v2.Transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.images[index]), self.labels[index]


class CIFAR100DataModule(ClassificationDataModule):
    """CIFAR-100: 50k training and 10k test images, 32×32 RGB, 100 classes in 20 superclasses.

    Validation uses the test set unless ``val_size`` holds images out of the training set, as the KD literature does
    (so ``best`` top-1 there is optimistic: report ``last`` too). Training augmentation is the release recipe:
    RandomCrop(32, padding 4) and horizontal flip, seeded per sample (see :mod:`wkd_lightning.data.sampling`).

    Attributes (besides ``num_classes`` and ``input_size``):
        class_names: the 100 fine class names (read from ``meta`` on first use).
        coarse_class_names: the 20 superclass names.
        coarse_labels: superclass index of each fine class (``fine_to_coarse``), a length-100 int64 tensor read off
            the labels (test split, plus train after ``setup("fit")``); -1 for a class absent from them.

    Args:
        data_dir: folder holding ``cifar-100-python/`` (or that folder itself).
        batch_size: images per batch.
        num_workers: data-loading worker processes.
        val_size: training images held out for validation (0: validate on the test set).
        train_size: use only this many training images (after the hold-out), a fixed random subset; None: all.
        augment: random crop and horizontal flip for training.
        augment_on_device: apply that augmentation (and the normalisation) to each training batch on its device, in
            ``on_after_batch_transfer``; the workers only draw the crop and flip of each image (the same draws as the
            CPU transforms, so the same images result) and pass uint8 images on (see
            :mod:`wkd_lightning.data.device_augment`).
        pin_memory: pin host memory for faster copies to a GPU (ignored without one).
        seed: data seed: hold-out and subset draws, per-epoch order, per-sample augmentation seeds.
        return_index: training batches are ``(x, y, index)`` with each sample's index in the training set (needed by
            :class:`~wkd_lightning.selfkd.PreviousEpochTeacher`); evaluation batches stay ``(x, y)``.
    """

    num_classes = NUM_FINE
    input_size = (3, 32, 32)

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        num_workers: int = 4,
        val_size: int = 0,
        train_size: int | None = None,
        augment: bool = True,
        augment_on_device: bool = False,
        pin_memory: bool = True,
        seed: int = 0,
        return_index: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, return_index, val_size, train_size)
        self.save_hyperparameters()
        self.data_dir, self.augment, self.augment_on_device = data_dir, augment, augment_on_device
        self._normalisation: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self._fine_to_coarse: Tensor | None = None

    @cached_property
    def _meta(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return load_meta(self.data_dir)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The 100 fine class names, in label order."""
        return self._meta[0]

    @property
    def coarse_class_names(self) -> tuple[str, ...]:
        """The 20 superclass names, in coarse-label order."""
        return self._meta[1]

    @property
    def fine_to_coarse(self) -> Tensor:
        """Superclass index of each fine class (length 100; -1 for a class absent from the labels read)."""
        if self._fine_to_coarse is None:
            _, fine, coarse = load_split(self.data_dir, "test")
            self._fine_to_coarse = fine_to_coarse(fine, coarse)
        return self._fine_to_coarse

    @property
    def coarse_labels(self) -> Tensor:
        """Alias of :attr:`fine_to_coarse`."""
        return self.fine_to_coarse

    def transform(self, train: bool) -> v2.Transform:
        if train and self.augment and self.augment_on_device:
            return DrawCropFlip(32, padding=4)
        steps = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if train and self.augment else []
        return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With ``augment_on_device``: crop, flip and normalise the training batch where it now is."""
        if isinstance(batch, (list, tuple)) and isinstance(batch[0], (list, tuple)):  # ((uint8 images, draws), y, ...)
            images, draws = batch[0]
            if images.device not in self._normalisation:
                self._normalisation[images.device] = tuple(
                    torch.tensor(v, dtype=torch.float32, device=images.device).view(-1, 1, 1) for v in (MEAN, STD)
                )
            mean, std = self._normalisation[images.device]
            batch = [crop_flip_normalize(images, draws, mean, std, padding=4), *batch[1:]]
        return batch

    def setup(self, stage: str | None = None) -> None:
        self._meta  # noqa: B018 -- read the class names now so a missing/corrupt meta fails at setup
        test_images, test_fine, test_coarse = load_split(self.data_dir, "test")
        self.test_set = CIFARImageDataset(test_images, test_fine, self.transform(train=False))
        self._fine_to_coarse = fine_to_coarse(test_fine, test_coarse)
        if stage in ("test", "predict"):
            return
        images, fine, coarse = load_split(self.data_dir, "train")
        self._fine_to_coarse = fine_to_coarse(torch.cat([test_fine, fine]), torch.cat([test_coarse, coarse]))
        train_index, val_index = split_indices(len(fine), self.val_size, self.train_size, self.seed)
        self.train_set = SeededDataset(
            CIFARImageDataset(images[train_index], fine[train_index], self.transform(train=True)),
            return_index=self.return_index,
        )
        self.val_set = (
            CIFARImageDataset(images[val_index], fine[val_index], self.transform(train=False))
            if self.val_size
            else self.test_set
        )
