"""Fashion-MNIST data module on a tiny fixture in the real IDX format, and on the real files when installed."""

import gzip
from pathlib import Path

import pytest
import torch

from wkd_lightning.data import FashionMNISTDataModule
from wkd_lightning.data.fashion_mnist import DEFAULT_DIR, read_idx


def test_reads_the_idx_files_and_splits(fashion_dir):
    dm = FashionMNISTDataModule(data_dir=str(fashion_dir), batch_size=16, num_workers=0, val_size=20, train_size=30)
    dm.setup("fit")
    assert len(dm.train_set) == 30 and len(dm.val_set) == 20 and len(dm.test_set) == 40
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    x_val, _ = next(iter(dm.val_dataloader()))
    assert x_val.shape[1:] == (1, 28, 28)


def test_validation_defaults_to_the_test_set(fashion_dir):
    dm = FashionMNISTDataModule(data_dir=str(fashion_dir), num_workers=0)
    dm.setup("fit")
    assert dm.val_set is dm.test_set and len(dm.train_set) == 80


def test_missing_files_name_the_apt_command(tmp_path):
    dm = FashionMNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        dm.setup("fit")


def test_truncated_file_is_reported(fashion_dir: Path):
    path = fashion_dir / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:1000]))
    with pytest.raises(ValueError, match="truncated"):
        FashionMNISTDataModule(data_dir=str(fashion_dir)).setup("fit")


def test_bad_sizes_are_refused(fashion_dir):
    with pytest.raises(ValueError, match="exceeds"):
        FashionMNISTDataModule(data_dir=str(fashion_dir), train_size=1000).setup("fit")
    with pytest.raises(ValueError, match="batch_size >= 1"):
        FashionMNISTDataModule(batch_size=0)


@pytest.mark.skipif(not Path(DEFAULT_DIR).is_dir(), reason="real Fashion-MNIST not installed (scripts/install.sh does)")
def test_real_fashion_mnist_has_the_published_sizes():
    images = read_idx(Path(DEFAULT_DIR) / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(Path(DEFAULT_DIR) / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert sorted(set(labels.tolist())) == list(range(10))
