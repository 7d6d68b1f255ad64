"""CIFAR-100 data module on a tiny fixture in the release's pickle format (byte-string keys, N×3072 uint8)."""

import pickle
from pathlib import Path

import pytest
import torch

from wkd_lightning.data import CIFAR100DataModule
from wkd_lightning.data.cifar100 import MEAN, STD, load_split


def test_setup_and_loaders_give_normalised_batches(cifar100_dir):
    dm = CIFAR100DataModule(data_dir=str(cifar100_dir), batch_size=8, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 100 and dm.val_set is dm.test_set and len(dm.test_set) == 20
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < 100
    x_val, y_val = next(iter(dm.val_dataloader()))
    assert x_val.shape == (8, 3, 32, 32) and y_val.tolist() == list(range(8))
    assert dm.num_classes == 100 and dm.input_size == (3, 32, 32)


def test_pixels_are_read_channel_major_and_normalised(cifar100_dir):
    images, fine, _ = load_split(cifar100_dir, "test")
    with open(cifar100_dir / "cifar-100-python" / "test", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.uint8 and fine.tolist() == list(range(20))
    assert images[3, 1, 2, 5] == raw[3, 1024 + 2 * 32 + 5]  # green plane, row 2, column 5
    dm = CIFAR100DataModule(data_dir=str(cifar100_dir), num_workers=0)
    dm.setup("test")
    x, _ = dm.test_set[3]
    expected = (images[3].float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    torch.testing.assert_close(x, expected)


def test_class_names_and_coarse_mapping(cifar100_dir):
    dm = CIFAR100DataModule(data_dir=str(cifar100_dir), num_workers=0)
    assert len(dm.class_names) == 100 and dm.class_names[7] == "fine_07"  # available before setup
    assert len(dm.coarse_class_names) == 20
    dm.setup("fit")
    assert dm.fine_to_coarse.tolist() == [c % 20 for c in range(100)]
    assert torch.equal(dm.coarse_labels, dm.fine_to_coarse)


def test_data_dir_may_be_the_release_folder_itself(cifar100_dir):
    dm = CIFAR100DataModule(data_dir=str(cifar100_dir / "cifar-100-python"), num_workers=0, val_size=10, train_size=50)
    dm.setup("fit")
    assert len(dm.train_set) == 50 and len(dm.val_set) == 10 and dm.val_set is not dm.test_set


def test_augmentation_is_deterministic_per_sample_seed(cifar100_dir):
    dm = CIFAR100DataModule(data_dir=str(cifar100_dir), num_workers=0)
    dm.setup("fit")
    a, b, c = dm.train_set[(4, 99)], dm.train_set[(4, 99)], dm.train_set[(4, 100)]
    assert torch.equal(a[0], b[0]) and int(a[1]) == int(b[1])
    variants = {dm.train_set[(4, s)][0].sum().item() for s in range(20)}
    assert len(variants) > 1  # the seed does drive a random crop/flip
    assert c[0].shape == (3, 32, 32)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    first = [x for x, _ in loader]
    loader.sampler.set_epoch(2)
    assert all(torch.equal(x, y) for x, y in zip(first, (x for x, _ in loader)))


def test_missing_file_says_where_to_get_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python\.tar\.gz") as info:
        CIFAR100DataModule(data_dir=str(tmp_path), num_workers=0).setup("fit")
    assert "cifar-100-python" in str(info.value) and "download=True" in str(info.value)


def test_truncated_pickle_is_reported(cifar100_dir: Path):
    path = cifar100_dir / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"train is not a readable CIFAR-100 pickle.*corrupt"):
        CIFAR100DataModule(data_dir=str(cifar100_dir), num_workers=0).setup("fit")


def test_wrong_keys_and_shapes_are_reported(cifar100_dir: Path):
    path = cifar100_dir / "cifar-100-python" / "test"
    with open(path, "rb") as f:
        content = pickle.load(f, encoding="bytes")
    content[b"data"] = content[b"data"][:, :1024]
    path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(ValueError, match=r"test: data is a uint8 array of shape \(20, 1024\)"):
        load_split(cifar100_dir, "test")
    del content[b"fine_labels"]
    path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(ValueError, match=r"lacks the CIFAR-100 key\(s\) \['fine_labels'\]"):
        load_split(cifar100_dir, "test")


def test_bad_sizes_are_refused(cifar100_dir):
    with pytest.raises(ValueError, match="exceeds"):
        CIFAR100DataModule(data_dir=str(cifar100_dir), train_size=1000, num_workers=0).setup("fit")
    with pytest.raises(ValueError, match="batch_size >= 1"):
        CIFAR100DataModule(batch_size=0)
