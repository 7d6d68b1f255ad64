"""Shared fixtures: tiny datasets written in the exact on-disk formats the data modules read."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


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
