"""Training-time augmentation shared by the in-memory and the streaming data paths.

Every random choice of a batch (flips, crop offsets, the seed of each random resized crop) is
drawn in one place, `draw`, from the caller's generator in the main process, and applied by
the functions below; the streaming path applies them per image in its DataLoader workers. So a
seeded run gives the same batches from memory or from disk, with any number of workers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgekd.config.schema import AugmentConfig


@dataclass(frozen=True)
class Draws:
    """The random choices for n images: mirror or not, crop offsets (crop_pad), and a seed per
    image for its random resized crop."""

    flipped: torch.Tensor  # n bool
    dy: torch.Tensor | None = None  # n×1 int64, 0..2·pad
    dx: torch.Tensor | None = None
    seeds: torch.Tensor | None = None  # n int64

    def take(self, keep: torch.Tensor) -> Draws:
        """The draws of the images at positions `keep` of the batch."""
        pick = lambda t: None if t is None else t[keep]  # noqa: E731
        return Draws(self.flipped[keep], pick(self.dy), pick(self.dx), pick(self.seeds))

    def item(self, i: int) -> tuple[bool, int, int, int]:
        """(flip, dy, dx, seed) of image i, -1 where that augmentation is off."""
        pick = lambda t: -1 if t is None else int(t.view(-1)[i])  # noqa: E731
        return bool(self.flipped[i]), pick(self.dy), pick(self.dx), pick(self.seeds)


def draw(n: int, augment: AugmentConfig | None, generator: torch.Generator | None) -> Draws:
    """The choices for a batch of n images, in a fixed order of draws from `generator` (flips,
    then crop offsets, then crop seeds), each drawn only when its augmentation is on."""
    flipped = torch.zeros(n, dtype=torch.bool)
    if augment is None:
        return Draws(flipped)
    if augment.hflip:
        flipped = torch.rand(n, generator=generator) < 0.5
    dy = dx = seeds = None
    if augment.crop_pad > 0:
        span = 2 * augment.crop_pad + 1
        dy = torch.randint(0, span, (n, 1), generator=generator)
        dx = torch.randint(0, span, (n, 1), generator=generator)
    if augment.random_resized_crop is not None:
        seeds = torch.randint(0, 2**31 - 1, (n,), generator=generator)
    return Draws(flipped, dy, dx, seeds)


def resized_crop(image: torch.Tensor, seed: int, size: int, augment: AugmentConfig) -> torch.Tensor:
    """torchvision's RandomResizedCrop of one C×H×W uint8 image to size×size, its box drawn
    from `seed` (torchvision draws from the global generator; it is forked and restored)."""
    from torchvision.transforms import InterpolationMode, RandomResizedCrop
    from torchvision.transforms import functional as tf

    assert augment.random_resized_crop is not None
    scale = tuple(augment.random_resized_crop)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        top, left, h, w = RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3])
    return tf.resized_crop(
        image, top, left, h, w, [size, size], InterpolationMode.BILINEAR, antialias=True
    )


def apply(
    images: torch.Tensor, draws: Draws, augment: AugmentConfig | None, size: int
) -> torch.Tensor:
    """`draws` applied to a batch N×C×H×W uint8 (resized crop, then mirror, then pad-crop)."""
    if augment is None:
        return images
    if draws.seeds is not None:
        crops = zip(images, draws.seeds.tolist(), strict=True)
        images = torch.stack([resized_crop(img, s, size, augment) for img, s in crops])
    if augment.hflip:
        images = torch.where(draws.flipped.view(-1, 1, 1, 1), images.flip(3), images)
    if draws.dy is not None and draws.dx is not None:
        images = pad_crop(images, augment.crop_pad, draws.dy, draws.dx)
    return images


def apply_one(
    image: torch.Tensor, item: tuple[bool, int, int, int], augment: AugmentConfig | None
) -> torch.Tensor:
    """One image's mirror and pad-crop (`Draws.item`); its resized crop is done by the
    caller, which has the full-size image."""
    if augment is None:
        return image
    flip, dy, dx, _ = item
    if flip:
        image = image.flip(2)
    if dy >= 0:
        pad = augment.crop_pad
        _, h, w = image.shape
        padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
        image = padded[:, dy : dy + h, dx : dx + w]
    return image


def pad_crop(images: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Zero-pad by `pad` and cut the h×w window at (dy, dx) of each image."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = (dy + torch.arange(h)).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    cols = (dx + torch.arange(w)).view(n, 1, 1, w).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)
