"""Write tiny data sets in Fashion-MNIST's real on-disk format (gzipped IDX files) for the IR tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array of 1 or 3 dimensions as ``path`` (gzip): big-endian magic, dimensions, then the bytes."""
    magic = {3: IMAGES_MAGIC, 1: LABELS_MAGIC}[array.ndim]
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_tiny_fashion_mnist(root: Path, per_class_train: int = 4, per_class_test: int = 1, seed: int = 0) -> Path:
    """Four IDX files with ``per_class`` 28×28 images of each of the 10 classes (class c: a bright band at row 2c)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", per_class_train), ("t10k", per_class_test)):
        labels = np.tile(np.arange(10), per_class).astype(np.uint8)
        images = rng.integers(0, 80, size=(len(labels), 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c + 3 : 2 * c + 6, 4:24] = 230
        write_idx_gz(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx_gz(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root
