"""Shared fixtures: tiny datasets written in the exact on-disk formats the data modules read."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

# The machines have 2 cores: 2 threads for one pytest process, 1 each when scripts/test.sh runs 2 xdist workers.
torch.set_num_threads(max(1, 2 // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (magic 0x0000_08_<ndim>, big-endian dimensions)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(root: Path, n_train: int = 80, n_test: int = 40, seed: int = 0) -> Path:
    """A tiny Fashion-MNIST in the real IDX layout: class c images are bright in a class-specific row band,
    so a small network can learn them in a few steps."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 4 : 2 * c + 7, :] = 255
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture
def fashion_dir(tmp_path: Path) -> Path:
    return write_fashion_mnist(tmp_path / "fashion-mnist")


def write_cifar100(root: Path, n_train: int = 100, n_test: int = 20, seed: int = 0) -> Path:
    """A tiny CIFAR-100 in the release's pickle layout under ``root/cifar-100-python``: ``train``/``test`` dicts
    with byte-string keys (``b"data"`` N×3072 uint8 channel-major, ``b"fine_labels"``, ``b"coarse_labels"``,
    ``b"filenames"``, ``b"batch_label"``; labels as Python lists) and ``meta`` with 100 fine and 20 coarse names.
    Fine class ``c`` has superclass ``c % 20``; the training split shows each fine class once (n_train=100)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        fine = [int(c) for c in np.arange(n) % 100]
        content = {
            b"filenames": [f"image_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{split}ing batch 1 of 1".encode(),
            b"fine_labels": fine,
            b"coarse_labels": [c % 20 for c in fine],
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        }
        with open(folder / split, "wb") as f:
            pickle.dump(content, f, protocol=2)
    meta = {
        b"fine_label_names": [f"fine_{i:02d}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(20)],
    }
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return root


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    return write_cifar100(tmp_path / "cifar")


IMAGENET_WNIDS = ("n01440764", "n01443537", "n01484850")


def write_imagenet(root: Path, wnids: tuple[str, ...] = IMAGENET_WNIDS, per_class: tuple[int, int] = (4, 2)) -> Path:
    """A tiny ImageNet in the class-folder layout: ``root/{train,val}/<wnid>/*.JPEG``, random 40×50 RGB JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for wnid in wnids:
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", format="JPEG")
    return root


@pytest.fixture
def imagenet_dir(tmp_path: Path) -> Path:
    return write_imagenet(tmp_path / "imagenet")
