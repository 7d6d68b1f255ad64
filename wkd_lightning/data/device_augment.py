"""CIFAR's training augmentation (RandomCrop(32, padding 4) + horizontal flip + normalisation) applied on the batch,
on its device, instead of per image in the loader workers.

The work is split so that the result is the CPU path's, image for image:

* in the workers, :class:`DrawCropFlip` only *draws* each image's parameters, with the same calls in the same order as
  torchvision's ``v2.RandomCrop(32, padding=4)`` then ``v2.RandomHorizontalFlip()`` (``top``, ``left`` ∈ {0..2p}
  from ``torch.randint``, flip when ``torch.rand(1) < 0.5``), from the per-sample seeded generator of
  :class:`~wkd_lightning.data.sampling.SeededDataset`, and passes the image on as uint8;
* on the device, :func:`crop_flip_normalize` pads the whole batch with zeros (the crop's fill), gathers every image's
  32×32 window (mirrored when flipped) in one indexing kernel, scales to [0, 1] and normalises.

So the same seed gives the same crops and flips as the CPU transforms (tested), the loader moves uint8 instead of
float32 images (4× fewer bytes) and the workers do almost nothing per image.
"""

from __future__ import annotations

import torch
from torch import Tensor


class DrawCropFlip:
    """Worker-side transform: ``image → (image, [top, left, flip])`` with the draws of ``RandomCrop`` + ``Flip``.

    Args:
        size: crop size (32).
        padding: zero padding on each side before cropping (4).
    """

    def __init__(self, size: int = 32, padding: int = 4) -> None:
        self.size, self.padding = size, padding

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor]:
        height, width = image.shape[-2:]
        top = int(torch.randint(0, height + 2 * self.padding - self.size + 1, size=()))
        left = int(torch.randint(0, width + 2 * self.padding - self.size + 1, size=()))
        flip = bool(torch.rand(1) < 0.5)
        return image, torch.tensor([top, left, int(flip)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, padding={self.padding})"


def crop_flip_normalize(images: Tensor, params: Tensor, mean: Tensor, std: Tensor, padding: int = 4) -> Tensor:
    """The batch's crops and flips, as float32 normalised images, on the batch's device.

    Args:
        images: B×C×H×W uint8 images.
        params: B×3 integers ``[top, left, flip]`` from :class:`DrawCropFlip` (offsets into the padded image).
        mean: per-channel mean of the normalisation (of images scaled to [0, 1]), C×1×1 on the images' device.
        std: per-channel standard deviation, likewise.
        padding: zero padding on each side (the crop size is the images' size).

    Returns:
        B×C×H×W float32 images ``(x/255 − mean)/std``, computed as ``v2.ToDtype(scale=True)`` and ``v2.Normalize`` do.
    """
    batch, channels, height, width = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    params = params.to(device)
    rows = params[:, 0:1] + torch.arange(height, device=device)  # B×H
    cols = params[:, 1:2] + torch.arange(width, device=device)  # B×W
    cols = torch.where(params[:, 2:3].bool(), cols.flip(1), cols)
    crops = padded[
        torch.arange(batch, device=device)[:, None, None, None],
        torch.arange(channels, device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    return crops.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)
