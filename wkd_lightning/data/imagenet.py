"""ImageNet-1k (ILSVRC 2012) from the usual class-folder layout on disk, read with torchvision's ``ImageFolder``.

Expected layout::

    <data_dir>/train/<wnid>/*.JPEG     (1000 folders such as n01440764)
    <data_dir>/val/<wnid>/*.JPEG       (the 50k validation images sorted into the same class folders)

The official validation archive is flat; sort it into class folders first (the widely used ``valprep.sh`` script
does this). Class indices are the sorted folder names, as ``ImageFolder`` assigns them, which is the order of
torchvision's pretrained ImageNet weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import default_collate
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2

from wkd_lightning.data.base import ClassificationDataModule
from wkd_lightning.data.sampling import SeededDataset

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LAYOUT = (
    "expected <data_dir>/train/<wnid>/*.JPEG and <data_dir>/val/<wnid>/*.JPEG (one folder per class, e.g. "
    "n01440764); the official validation images come in one flat folder: sort them into class folders first "
    "(the usual `valprep.sh` step)"
)
LAYOUT_SENTENCE = LAYOUT[0].upper() + LAYOUT[1:] + "."
#: How image files are decoded: PIL (the default, as torchvision's ImageFolder does) or torchvision.io.
DECODERS = ("pil", "torchvision")


def decode_rgb(path: str) -> Tensor:
    """A 3×H×W uint8 RGB tensor from an image file, decoded by ``torchvision.io`` (libjpeg-turbo for JPEGs; grey and
    CMYK JPEGs are converted to RGB)."""
    return decode_image(read_file(path), mode=ImageReadMode.RGB)


def collate_channels_last(batch: list) -> list:
    """PyTorch's default collation, then the image batch in ``torch.channels_last`` memory format.

    Converting on the loader side (in the workers) needs no model hook; pinning and ``.to(device)`` keep the
    memory format, so the batch reaches the GPU as channels-last (faster convolutions under mixed precision).
    """
    images, *rest = default_collate(batch)
    return [images.contiguous(memory_format=torch.channels_last), *rest]


def _head(names: list[str], k: int = 5) -> str:
    return "[" + ", ".join(names[:k]) + (", ..." if len(names) > k else "") + "]"


class ImageNetDataModule(ClassificationDataModule):
    """ImageNet classification: class-folder ``train`` and ``val`` splits, 224×224 crops.

    Training: RandomResizedCrop(224) and horizontal flip, seeded per sample (see
    :mod:`wkd_lightning.data.sampling`); validation: Resize(256) and CenterCrop(224); both normalised with the
    ImageNet mean and std. The test and predict loaders use the validation split (the test labels are not public).

    Args:
        data_dir: folder holding ``train/`` and ``val/`` class folders.
        batch_size: images per batch (per GPU in DDP).
        num_workers: data-loading worker processes (JPEG decoding is the bottleneck: use many).
        num_classes: class folders expected under ``train/`` (and ``val/``); set it for a subset.
        channels_last: deliver image batches in ``torch.channels_last`` memory format (done in the collate
            function, see :func:`collate_channels_last`).
        pin_memory: pin host memory for faster copies to a GPU (ignored without one).
        seed: data seed: per-epoch order and per-sample augmentation seeds.
        decoder: ``"pil"`` (PIL images through the v2 transforms) or ``"torchvision"`` (:func:`decode_rgb`, then the
            same transforms on uint8 tensors; faster per worker, see ``benchmarks/results/input_pipeline.md``, with
            torchvision's antialiased resize instead of PIL's, so pixels differ slightly).
        return_index: training batches are ``(x, y, index)`` with each sample's index in the training set (needed by
            :class:`~wkd_lightning.selfkd.PreviousEpochTeacher`); evaluation batches stay ``(x, y)``.
    """

    input_size = (3, 224, 224)

    def __init__(
        self,
        data_dir: str = "data/imagenet",
        batch_size: int = 256,
        num_workers: int = 8,
        num_classes: int = 1000,
        channels_last: bool = False,
        pin_memory: bool = True,
        seed: int = 0,
        return_index: bool = False,
        decoder: str = "pil",
    ) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, return_index)
        if num_classes < 1:
            raise ValueError(f"ImageNetDataModule: need num_classes >= 1, got {num_classes}.")
        if decoder not in DECODERS:
            raise ValueError(f"ImageNetDataModule: decoder must be one of {DECODERS}, got {decoder!r}.")
        self.decoder = decoder
        # num_classes stays out of the logged hyper-parameters: Lightning refuses a run whose module and data module
        # log the same key with different values (the module's is None until setup fills it in).
        self.save_hyperparameters(ignore=["num_classes"])
        self.data_dir, self.num_classes, self.channels_last = data_dir, num_classes, channels_last
        self.collate_fn = collate_channels_last if channels_last else None
        self.class_names: tuple[str, ...] | None = None

    def transform(self, train: bool) -> v2.Transform:
        if train:
            steps = [v2.RandomResizedCrop(224), v2.RandomHorizontalFlip()]
        else:
            steps = [v2.Resize(256), v2.CenterCrop(224)]
        to_tensor = [v2.PILToTensor()] if self.decoder == "pil" else []
        return v2.Compose([*steps, *to_tensor, v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])

    def _folder(self, split: str, train: bool) -> ImageFolder:
        path = Path(self.data_dir) / split
        if not path.is_dir():
            raise FileNotFoundError(f"ImageNet {split} folder {os.fspath(path)!r} not found: {LAYOUT}.")
        try:
            loader = {"torchvision": {"loader": decode_rgb}}.get(self.decoder, {})
            return ImageFolder(os.fspath(path), transform=self.transform(train), **loader)
        except FileNotFoundError as error:  # no class folders, or a class folder without images
            message = f"ImageNet {split} folder {os.fspath(path)!r}: {str(error).rstrip('.')}. {LAYOUT_SENTENCE}"
            raise FileNotFoundError(message) from error

    def _check_count(self, folder: ImageFolder) -> None:
        if len(folder.classes) != self.num_classes:
            raise ValueError(
                f"found {len(folder.classes)} class folders under {folder.root!r}, expected {self.num_classes}; "
                f"pass --data.num_classes {len(folder.classes)} for a subset."
            )

    def setup(self, stage: str | None = None) -> None:
        if stage in ("validate", "test", "predict"):
            self.val_set = self._folder("val", train=False)
            self._check_count(self.val_set)
            self.test_set = self.val_set  # test and predict read the validation split
            self.class_names = tuple(self.val_set.classes)
            return
        train = self._folder("train", train=True)
        self._check_count(train)
        val = self._folder("val", train=False)
        if val.classes != train.classes:
            only_train = sorted(set(train.classes) - set(val.classes))
            only_val = sorted(set(val.classes) - set(train.classes))
            raise ValueError(
                f"ImageNet val class folders differ from train's under {os.fspath(Path(self.data_dir))!r} "
                f"({len(val.classes)} vs {len(train.classes)}): only in train {_head(only_train)}, only in val "
                f"{_head(only_val)}; the class indices would not match. {LAYOUT_SENTENCE}"
            )
        self.train_set = SeededDataset(train, return_index=self.return_index)
        self.val_set = self.test_set = val  # test and predict read the validation split
        self.class_names = tuple(train.classes)
