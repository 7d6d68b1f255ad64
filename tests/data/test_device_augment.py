"""CIFAR augmentation on the batch's device equals the CPU transforms: image for image under the same sample seeds,
and hence in distribution (checked too, on the 81 × 2 crop/flip outcomes)."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from wkd_lightning.data import CIFAR100DataModule
from wkd_lightning.data.cifar100 import MEAN, STD
from wkd_lightning.data.device_augment import DrawCropFlip, crop_flip_normalize

_MEAN, _STD = (torch.tensor(v).view(-1, 1, 1) for v in (MEAN, STD))


def _device_path(images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    draws = []
    for image, seed in zip(images, seeds):
        torch.manual_seed(seed)
        draws.append(DrawCropFlip(32, padding=4)(image)[1])
    return crop_flip_normalize(images, torch.stack(draws), _MEAN, _STD, padding=4)


def test_the_same_seeds_give_the_cpu_transforms_images() -> None:
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cpu = v2.Compose(
        [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
         v2.Normalize(MEAN, STD)]
    )  # fmt: skip
    seeds = list(range(100, 116))
    expected = []
    for image, seed in zip(images, seeds):
        torch.manual_seed(seed)
        expected.append(cpu(image))
    torch.testing.assert_close(_device_path(images, seeds), torch.stack(expected), rtol=0, atol=0)


def test_crops_and_flips_are_uniform_like_the_cpu_path() -> None:
    """Each of the 9 × 9 offsets × 2 flips is equally likely (chi-square over 8,100 draws) and the crop really is the
    window at the drawn offset (an image of distinct pixel values identifies it)."""
    image = torch.arange(32 * 32, dtype=torch.int32).view(1, 32, 32)  # distinct values: a crop shows its window
    image = (image % 251).to(torch.uint8).expand(3, 32, 32).clone()
    n = 8100
    images = image.expand(n, 3, 32, 32)
    draws = torch.stack([DrawCropFlip()(image)[1] for _ in range(n)])
    out = crop_flip_normalize(images, draws, torch.zeros(3, 1, 1), torch.ones(3, 1, 1) / 255, padding=4)
    padded = torch.nn.functional.pad(image.float(), (4,) * 4)
    for k in range(0, n, 811):
        top, left, flip = draws[k].tolist()
        window = padded[:, top : top + 32, left : left + 32]
        torch.testing.assert_close(out[k], window.flip(-1) if flip else window)
    counts = torch.bincount(draws[:, 0] * 18 + draws[:, 1] * 2 + draws[:, 2], minlength=162).float()
    expected = n / 162
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 215.0  # the 0.3 % upper point of chi-square with 161 degrees of freedom


def test_the_data_module_augments_training_batches_on_their_device(cifar100_dir) -> None:
    on_cpu = CIFAR100DataModule(data_dir=str(cifar100_dir), batch_size=8, num_workers=0)
    on_device = CIFAR100DataModule(data_dir=str(cifar100_dir), batch_size=8, num_workers=0, augment_on_device=True)
    batches = []
    for dm in (on_cpu, on_device):
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        batches.append(dm.on_after_batch_transfer(batch, 0))
    assert isinstance(batches[1][0], torch.Tensor) and batches[1][0].dtype == torch.float32
    torch.testing.assert_close(batches[1][0], batches[0][0], rtol=0, atol=0)
    assert torch.equal(batches[1][1], batches[0][1])
    val = on_device.on_after_batch_transfer(next(iter(on_device.val_dataloader())), 0)
    assert val[0].shape == (8, 3, 32, 32) and val[0].dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_batch_is_augmented_there() -> None:
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    seeds = list(range(8))
    cpu = _device_path(images, seeds)
    global _MEAN, _STD
    _MEAN, _STD = _MEAN.cuda(), _STD.cuda()
    try:
        gpu = _device_path(images.cuda(), seeds)
    finally:
        _MEAN, _STD = _MEAN.cpu(), _STD.cpu()
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-6)
