"""What every data module of the project shares (classification and detection): loader settings and four loaders.

The class keeps its historical name, ``ClassificationDataModule``; the COCO detection data module subclasses it too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from wkd_lightning.data.sampling import SeededDataset, make_loader


class ClassificationDataModule(L.LightningDataModule):
    """Base class of every data module of the project, classification and detection alike (despite the name): checks
    and keeps the loader settings and builds the loaders; subclasses fill ``train_set``, ``val_set`` and ``test_set``
    in ``setup``.

    Training loaders shuffle with the epoch-seeded sampler (exact resume, DDP split); the others read in order.
    ``predict`` reads the test set.

    Args:
        batch_size: images per batch (per process).
        num_workers: data-loading worker processes.
        seed: data seed: hold-out and subset draws, per-epoch order, per-sample augmentation seeds.
        pin_memory: pin host memory for faster copies to a GPU (ignored without one).
        return_index: training samples get their index appended, ``(x, y, index)`` (see
            :class:`~wkd_lightning.data.sampling.SeededDataset`); detection modules pass False.
        val_size: training images held out for validation (0: validate on the test set), where the subclass splits.
        train_size: use only this many training images (after the hold-out); None: all.

    Subclasses may set ``collate_fn`` in ``__init__`` (default: PyTorch's); set on the instance, not the class, where
    a plain function would become a method. Any map-style dataset of ``(input, label)`` pairs will do as
    ``train_set`` (a ``TensorDataset``, say): one that is not a
    :class:`~wkd_lightning.data.sampling.SeededDataset` is wrapped in one by the training loader, since the epoch
    sampler hands out ``(index, sample seed)`` keys. Subclasses should set ``class_names`` (one per label) where the
    classes have names: WKD-L cost files made by ``wkd-ir`` store them, and a cost file made for other classes is then
    refused at set-up.
    """

    collate_fn: Callable | None = None
    #: The name of each label, or ``None`` where the classes have no names.
    class_names: Sequence[str] | None = None

    def __init__(
        self,
        batch_size: int,
        num_workers: int,
        seed: int,
        pin_memory: bool,
        return_index: bool,
        val_size: int = 0,
        train_size: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0 or val_size < 0 or (train_size is not None and train_size < 1):
            raise ValueError(
                f"{type(self).__name__}: need batch_size >= 1, num_workers >= 0, val_size >= 0, train_size >= 1 or "
                f"None; got {batch_size}, {num_workers}, {val_size}, {train_size}."
            )
        self.batch_size, self.num_workers, self.seed, self.return_index = batch_size, num_workers, seed, return_index
        self.val_size, self.train_size = val_size, train_size
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a data loader.")
        return make_loader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            seed=self.seed,
            pin_memory=self.pin_memory,
            trainer=self.trainer,
            collate_fn=self.collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        train_set = self.train_set
        if train_set is not None and not isinstance(train_set, SeededDataset):
            # The sampler's keys are (index, sample seed) pairs; a plain dataset would read them as a 2-D index
            # (a TensorDataset: "IndexError: index 9049414233615555963 is out of bounds").
            train_set = SeededDataset(train_set, return_index=self.return_index)
        return self._loader(train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
