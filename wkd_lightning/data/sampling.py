"""Exact, resumable, DDP-friendly sampling: epoch-seeded order and per-sample seeded augmentation.

Why: a shuffling ``DataLoader`` draws its order from the global RNG and random augmentations draw from each
worker's RNG, so a run resumed from ``last.ckpt`` (or rerun with another ``num_workers``) sees different batches
than an uninterrupted run. Here both are pure functions of ``(seed, epoch, index)``:

* :class:`EpochSampler` orders epoch ``e`` with a permutation drawn from a generator seeded with ``seed + e``
  (the rule of :class:`~torch.utils.data.DistributedSampler`, which it subclasses) and yields
  ``(index, sample_seed)`` pairs, with ``sample_seed = sample_seed(seed, e, index)`` (see :func:`sample_seed`).
  Lightning calls ``set_epoch(epoch)`` on it at the start of every epoch, including the first epoch after a resume,
  and never replaces it in DDP because it already is a ``DistributedSampler``.
* :class:`SeededDataset` wraps a dataset so that ``dataset[(index, sample_seed)]`` loads and transforms sample
  ``index`` with torch's CPU RNG seeded by ``sample_seed`` (inside :func:`torch.random.fork_rng`, so the caller's
  RNG is untouched). The augmentation of a sample therefore does not depend on the worker that loads it, the number
  of workers, persistent workers, or the number of DDP ranks. Plain integer indices load without seeding.
* :func:`make_loader` builds the ``DataLoader`` every data module uses, splitting the data across DDP ranks.

Only torch's RNG is seeded: torchvision transforms (v1 and v2) draw from it; a transform that uses Python's
``random`` or NumPy's global RNG would not be reproducible.

Exactness holds at epoch boundaries (Lightning's ``last.ckpt`` at the end of an epoch). A checkpoint taken in the
middle of an epoch resumes with that epoch's order from its start; the sampler keeps no position of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

_MASK64 = (1 << 64) - 1
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # SplitMix64 finaliser multipliers (Steele et al., 2014)


def _mix(x: int) -> int:
    """SplitMix64 finaliser of a 64-bit integer: a bijection on 64-bit values with good avalanche."""
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return x ^ (x >> 31)


def _mix_array(x: np.ndarray) -> np.ndarray:
    """:func:`_mix` on a uint64 array (NumPy's uint64 products wrap modulo 2**64, as the masks above do)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_M1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_M2)
    return x ^ (x >> np.uint64(31))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in epoch ``epoch`` of a run with data seed ``seed``.

    ``mix(mix(mix(seed) ^ epoch) ^ index) >> 1`` with ``mix`` the SplitMix64 finaliser on 64-bit words (negative
    inputs taken modulo 2**64): a 63-bit non-negative integer, valid for :func:`torch.manual_seed`, that changes
    with each of the three inputs and does not depend on the rank, worker or position in the epoch.
    """
    h = _mix(seed & _MASK64)
    h = _mix(h ^ (epoch & _MASK64))
    return _mix(h ^ (index & _MASK64)) >> 1


def sample_seeds(seed: int, epoch: int, indices: list[int]) -> list[int]:
    """:func:`sample_seed` for many indices at once (vectorised; equal to the scalar version)."""
    h = _mix(_mix(seed & _MASK64) ^ (epoch & _MASK64))
    mixed = _mix_array(np.asarray(indices, dtype=np.uint64) ^ np.uint64(h)) >> np.uint64(1)
    return mixed.tolist()


class EpochSampler(DistributedSampler):
    """A ``DistributedSampler`` whose items are ``(index, sample_seed)`` pairs, for exact resume.

    The order of epoch ``e`` is ``DistributedSampler``'s: a permutation from ``torch.Generator().manual_seed(seed +
    e)`` when shuffling (else ``0..n-1``), padded with its own first indices to a multiple of ``num_replicas``
    (unless ``drop_last``, which cuts the tail instead), then every ``num_replicas``-th index from ``rank``. Padding
    gives every rank the same number of training steps, which DDP's gradient all-reduce needs; with ``pad=False``
    (evaluation) nothing is padded: the ranks' shards partition the dataset exactly (their sizes differ by at most
    one), so metrics synchronised over the ranks count every sample once, even when ``n % num_replicas != 0``.
    Lightning's default ``DistributedSampler`` pads evaluation too and counts a few samples twice.

    Args:
        dataset: the dataset (only its length is used) or its length.
        shuffle: draw a new permutation each epoch; False: indices in order (evaluation).
        seed: data seed; the order and the per-sample seeds are functions of (seed, epoch, index).
        num_replicas: number of DDP processes the data is split over.
        rank: this process's rank in ``[0, num_replicas)``.
        drop_last: drop the tail that does not divide evenly over the replicas instead of padding.
        with_seeds: yield ``(index, sample_seed)`` pairs; False: plain indices (no seeded augmentation).
        pad: pad to a multiple of ``num_replicas`` (training); False: exact, possibly uneven shards (evaluation).
    """

    def __init__(
        self,
        dataset: Sized | int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        with_seeds: bool = True,
        pad: bool = True,
    ) -> None:
        if isinstance(dataset, int):
            if dataset < 0:
                raise ValueError(f"EpochSampler: dataset length must be >= 0, got {dataset}.")
            dataset = range(dataset)
        if num_replicas < 1:
            raise ValueError(f"EpochSampler: num_replicas must be >= 1, got {num_replicas}.")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.with_seeds = with_seeds
        self.pad = pad or drop_last
        if not self.pad:
            self.total_size = len(dataset)
            self.num_samples = len(range(rank, self.total_size, num_replicas))

    def __iter__(self) -> Iterator[Any]:
        if self.pad:
            indices = list(super().__iter__())
        else:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.total_size, generator=generator).tolist() if self.shuffle else None
            indices = (order or list(range(self.total_size)))[self.rank :: self.num_replicas]
        if not self.with_seeds:
            return iter(indices)
        return zip(indices, sample_seeds(self.seed, self.epoch, indices))


class SeededDataset(Dataset):
    """Loads ``dataset[index]`` with torch's CPU RNG seeded per sample when given ``(index, sample_seed)``.

    The wrapped dataset's own ``__getitem__`` (reading and transforming the sample) runs inside
    ``torch.random.fork_rng(devices=[])`` after seeding torch's CPU generator (``torch.default_generator``) with
    ``sample_seed``, so random augmentation is a function of the seed alone and the CPU RNG state is restored
    afterwards. CUDA generators are never touched: ``torch.manual_seed`` would reseed every CUDA device (and so the
    model's dropout or GPU-side augmentation) as a side effect of loading a sample in the main process. An ``int``
    index is passed through unseeded (evaluation loaders, Lightning's own sequential samplers).

    With ``return_index``, a sample ``(x, y)`` comes back as ``(x, y, index)``: its position in this dataset, which
    per-sample state such as :class:`~wkd_lightning.selfkd.PreviousEpochTeacher`'s logit bank is keyed by.

    Args:
        dataset: any map-style dataset of ``(input, label)`` pairs.
        return_index: append the sample's index to every sample.
    """

    def __init__(self, dataset: Dataset, return_index: bool = False) -> None:
        self.dataset = dataset
        self.return_index = return_index

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if isinstance(key, (tuple, list)):
            index, seed = int(key[0]), int(key[1])
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)  # CPU only (see the class docstring)
                sample = self.dataset[index]
        else:
            index, sample = int(key), self.dataset[key]
        return (*sample, index) if self.return_index else sample


def split_indices(n: int, val_size: int, train_size: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """Training and held-out validation indices of an ``n``-image training split, as a fixed random draw.

    A permutation from a generator seeded with ``seed``: its first ``val_size`` entries are the validation
    indices, the rest (the first ``train_size`` of them when given) the training ones.

    Returns:
        (train_index, val_index), int64 tensors.
    """
    if val_size >= n:
        raise ValueError(f"val_size={val_size} leaves no training images (the split has {n}).")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_index, train_index = order[:val_size], order[val_size:]
    if train_size is not None:
        if train_size > len(train_index):
            raise ValueError(f"train_size={train_size} exceeds the {len(train_index)} training images left.")
        train_index = train_index[:train_size]
    return train_index, val_index


def _trainer_epoch(trainer: Any) -> int:
    """The epoch Lightning will pass to ``set_epoch`` next (0 without a trainer or a fit loop)."""
    try:
        return int(trainer.fit_loop.epoch_progress.current.processed)
    except (AttributeError, TypeError, ValueError):
        return 0


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int = 0,
    pin_memory: bool = False,
    trainer: Any = None,
    drop_last: bool = False,
    persistent_workers: bool | None = None,
    seeded: bool | None = None,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """The ``DataLoader`` of a data module: an :class:`EpochSampler` split across the trainer's DDP ranks.

    With a trainer attached (``LightningDataModule.trainer``), ``num_replicas``/``rank`` come from
    ``trainer.world_size``/``trainer.global_rank``; without one the loader covers the whole dataset. Lightning keeps
    the sampler (it already is a ``DistributedSampler``) and calls its ``set_epoch`` each epoch. Training loaders are
    padded to equal shards; evaluation loaders (``shuffle=False``) are split exactly, without padding duplicates (see
    :class:`EpochSampler`), so a validation metric synchronised over the ranks counts every sample once.

    Args:
        dataset: a map-style dataset; wrap it in :class:`SeededDataset` for per-sample seeded augmentation.
        batch_size: samples per batch (per rank).
        shuffle: new order each epoch (training).
        num_workers: loader worker processes.
        seed: data seed of the sampler.
        pin_memory: pin host memory (only useful with a GPU).
        trainer: the attached Lightning trainer, or None.
        drop_last: drop the uneven tail over ranks and the last incomplete batch.
        persistent_workers: keep workers between epochs; None: when ``num_workers > 0``.
        seeded: yield ``(index, sample_seed)`` keys; None: when shuffling (training). Needs a dataset that
            accepts such keys, such as :class:`SeededDataset`.
        collate_fn: batch collation; None: PyTorch's default.

    The sampler starts at the trainer's epoch (``trainer.fit_loop.epoch_progress.current.processed``, the value
    Lightning passes to ``set_epoch``): on resume, Lightning creates the training iterator before its first
    ``set_epoch`` call, and worker processes prefetch indices as soon as the iterator exists, so a sampler left at
    epoch 0 would replay epoch 0's order in the first resumed epoch.

    The loader's own generator (seeded with ``seed``) draws the workers' base seeds, so building and iterating
    loaders never advances the global RNG (which the model's own randomness may use).
    """
    num_replicas = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
    rank = int(getattr(trainer, "global_rank", 0) or 0) if trainer is not None else 0
    sampler = EpochSampler(
        len(dataset),
        shuffle=shuffle,
        seed=seed,
        num_replicas=num_replicas,
        rank=rank,
        drop_last=drop_last,
        with_seeds=shuffle if seeded is None else seeded,
        pad=shuffle,
    )
    sampler.set_epoch(_trainer_epoch(trainer))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0 and (persistent_workers is None or persistent_workers),
        drop_last=drop_last,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed),  # worker base seeds: not drawn from the global RNG
    )
