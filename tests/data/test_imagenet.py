"""ImageNet data module on a tiny class-folder fixture of real JPEG files."""

import shutil

import pytest
import torch

from wkd_lightning.data import ImageNetDataModule

WNIDS = ("n01440764", "n01443537", "n01484850")  # the fixture's class folders (tests/conftest.py)


def test_loaders_give_224_crops_and_folder_labels(imagenet_dir):
    dm = ImageNetDataModule(data_dir=str(imagenet_dir), batch_size=4, num_workers=0, num_classes=3)
    dm.setup("fit")
    assert len(dm.train_set) == 12 and len(dm.val_set) == 6 and dm.class_names == WNIDS
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.tolist()) <= {0, 1, 2}
    x_val, y_val = next(iter(dm.val_dataloader()))
    assert x_val.shape == (4, 3, 224, 224) and y_val.tolist() == [0, 0, 1, 1]
    assert not x_val.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(dm.train_set[(5, 42)][0], dm.train_set[(5, 42)][0])  # seeded RandomResizedCrop


def test_channels_last_option_yields_channels_last_batches(imagenet_dir):
    dm = ImageNetDataModule(data_dir=str(imagenet_dir), batch_size=3, num_workers=0, num_classes=3, channels_last=True)
    dm.setup("validate")
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (3, 3, 224, 224) and x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64


def test_class_count_mismatch_says_how_many_were_found(imagenet_dir):
    message = r"found 3 class folders under .*train'?, expected 1000; pass --data.num_classes 3 for a subset"
    with pytest.raises(ValueError, match=message):
        ImageNetDataModule(data_dir=str(imagenet_dir), num_workers=0).setup("fit")


def test_missing_folder_describes_the_layout(tmp_path, imagenet_dir):
    with pytest.raises(FileNotFoundError, match=r"train folder .* not found: expected <data_dir>/train/<wnid>"):
        ImageNetDataModule(data_dir=str(tmp_path / "nowhere"), num_classes=3).setup("fit")
    shutil.rmtree(imagenet_dir / "val")
    with pytest.raises(FileNotFoundError, match=r"val folder .* not found.*valprep\.sh"):
        ImageNetDataModule(data_dir=str(imagenet_dir), num_classes=3).setup("fit")


def test_val_classes_must_match_train(imagenet_dir):
    (imagenet_dir / "val" / WNIDS[2]).rename(imagenet_dir / "val" / "n09999999")
    with pytest.raises(ValueError, match=r"only in train \[n01484850\], only in val \[n09999999\]"):
        ImageNetDataModule(data_dir=str(imagenet_dir), num_workers=0, num_classes=3).setup("fit")


def test_torchvision_decoder_gives_the_same_crops_up_to_the_resize_filter(imagenet_dir):
    """decode_jpeg and PIL both use libjpeg(-turbo); the seeded RandomResizedCrop draws the same box from the same
    image size; only the resampling filters differ (torchvision's antialiased bilinear vs PIL's), by a little."""
    pil, fast = (
        ImageNetDataModule(data_dir=str(imagenet_dir), batch_size=4, num_workers=0, num_classes=3, decoder=d)
        for d in ("pil", "torchvision")
    )
    for dm in (pil, fast):
        dm.setup("fit")
    for index, seed in ((0, 1), (5, 42), (11, 7)):
        a, b = pil.train_set[(index, seed)][0], fast.train_set[(index, seed)][0]
        assert a.shape == b.shape == (3, 224, 224) and b.dtype == torch.float32
        assert float((a - b).abs().mean()) < 0.1 < float((a - pil.train_set[(index, seed + 1)][0]).abs().mean())
    x, _ = next(iter(fast.val_dataloader()))
    assert x.shape == (4, 3, 224, 224)
    with pytest.raises(ValueError, match=r"decoder must be one of \('pil', 'torchvision'\), got 'dali'"):
        ImageNetDataModule(data_dir=str(imagenet_dir), decoder="dali")
