"""Reads an ImageFolder tree (root/<split>/<class>/<image>) into memory at a fixed size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.errors import DataNotFoundError

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def load(
    root: Path, split: str, size: int, grayscale: bool, classes: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images N×C×size×size uint8, labels, class names) of `root/split`."""

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
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((folder / name).iterdir()):
            if file.suffix.lower() not in EXTENSIONS:
                continue
            images.append(_read(file, size, grayscale))
            labels.append(label)
    if not images:
        raise DataNotFoundError(f"no images ({', '.join(sorted(EXTENSIONS))}) under {folder}")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def _read(file: Path, size: int, grayscale: bool) -> np.ndarray:
    from PIL import Image

    with Image.open(file) as img:
        resized = img.convert("L" if grayscale else "RGB").resize((size, size))
        array = np.asarray(resized, dtype=np.uint8)
    return array[None] if grayscale else array.transpose(2, 0, 1)


def load_unlabeled(folder: Path, size: int, grayscale: bool, limit: int | None) -> np.ndarray:
    """Every image under `folder` (recursively, sorted by path), N×C×size×size uint8."""
    if not folder.is_dir():
        raise DataNotFoundError(f"unlabeled image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS)[:limit]
    if not files:
        raise DataNotFoundError(f"no images ({', '.join(sorted(EXTENSIONS))}) under {folder}")
    return np.stack([_read(f, size, grayscale) for f in files])
