"""ImageFolder trees (root/<split>/<class>/<image>): listing, and decoding one image the way
every path does (in memory, streamed, or unlabeled), so both storage paths see the same pixels.

Decoding and resizing are PIL's and torchvision's; nothing here resamples by hand."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgekd.errors import DataNotFoundError

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class Decode:
    """How a file becomes a size×size uint8 image.

    `resize`: "squash" resizes the whole image to size×size (aspect ratio not kept);
    "center_crop" resizes its shorter side to size / crop_fraction and cuts the central
    size×size square (the ImageNet evaluation transform: 256 → 224 at 0.875)."""

    size: int
    grayscale: bool
    resize: str = "squash"
    crop_fraction: float = 0.875

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3


def listing(
    root: Path, split: str, classes: list[str] | None = None
) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image files, labels, class names) of `root/split`, sorted by class then file name."""
    folder = root / split
    if not folder.is_dir():
        raise DataNotFoundError(
            f"ImageFolder split not found: {folder} (expected "
            f"{root}/train/<class>/*.png and {root}/val/<class>/*.png)"
        )
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    classes = classes or found
    if found != classes:
        raise DataNotFoundError(
            f"{folder} has classes {found}, but the training split has "
            f"{classes}; every split needs the same class folders"
        )
    files, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((folder / name).iterdir()):
            if file.suffix.lower() in EXTENSIONS:
                files.append(file)
                labels.append(label)
    if not files:
        raise DataNotFoundError(f"no images ({', '.join(sorted(EXTENSIONS))}) under {folder}")
    return files, np.asarray(labels, dtype=np.int64), classes


def load(
    root: Path, split: str, decode: Decode, classes: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images N×C×size×size uint8, labels, class names) of `root/split`, all in memory."""
    files, labels, classes = listing(root, split, classes)
    return np.stack([read(f, decode) for f in files]), labels, classes


def open_image(file: Path, grayscale: bool) -> torch.Tensor:
    """The file's pixels at their own size, C×H×W uint8."""
    from PIL import Image

    with Image.open(file) as img:
        array = np.asarray(img.convert("L" if grayscale else "RGB"), dtype=np.uint8)
    return torch.from_numpy(array[None].copy() if grayscale else array.transpose(2, 0, 1).copy())


def read(file: Path, decode: Decode) -> np.ndarray:
    """One file decoded and resized as `decode` says, C×size×size uint8."""
    from PIL import Image

    with Image.open(file) as opened:
        img = opened.convert("L" if decode.grayscale else "RGB")
        if decode.resize == "center_crop":  # torchvision's Resize(short) + CenterCrop(size)
            from torchvision.transforms import InterpolationMode
            from torchvision.transforms import functional as tf

            short = round(decode.size / decode.crop_fraction)
            img = tf.resize(img, [short], InterpolationMode.BILINEAR)
            img = tf.center_crop(img, [decode.size, decode.size])
        else:
            img = img.resize((decode.size, decode.size))
        array = np.asarray(img, dtype=np.uint8)
    return array[None] if decode.grayscale else array.transpose(2, 0, 1)


def unlabeled_files(folder: Path, limit: int | None) -> tuple[str, ...]:
    """Every image under `folder` (recursively, sorted by path), the first `limit` of them."""
    if not folder.is_dir():
        raise DataNotFoundError(f"unlabeled image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS)[:limit]
    if not files:
        raise DataNotFoundError(f"no images ({', '.join(sorted(EXTENSIONS))}) under {folder}")
    return tuple(str(f) for f in files)
