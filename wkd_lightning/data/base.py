"""What every image-classification data module of the project shares: its four loaders built by ``make_loader``."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from torch.utils.data import DataLoader, Dataset

from wkd_lightning.data.sampling import make_loader


class ClassificationDataModule(L.LightningDataModule):
    """Base class: subclasses fill ``train_set``, ``val_set`` and ``test_set`` in ``setup`` and set the loader options.

    Training loaders shuffle with the epoch-seeded sampler (exact resume, DDP split); the others read in order.
    ``predict`` reads the test set.

    Attributes set by subclasses: ``batch_size``, ``num_workers``, ``seed``, ``pin_memory``; optionally
    ``collate_fn`` (default: PyTorch's).
    """

    batch_size: int
    num_workers: int
    seed: int
    pin_memory: bool
    collate_fn: Callable | None = None

    def __init__(self) -> None:
        super().__init__()
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
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
