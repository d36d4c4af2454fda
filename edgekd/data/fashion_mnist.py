"""Finds and reads Fashion-MNIST's idx files (Xiao et al. 2017, 70,000 28×28 images)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from edgekd.errors import DataNotFoundError

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FIX = (
    "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), set "
    "EDGEKD_DATA to a folder holding the four idx files, or set `data.download: true` in the "
    "pipeline on a machine with network access."
)


def candidate_dirs(root: str | Path | None) -> list[Path]:
    """Where edgekd looks, in order: the YAML's root, $EDGEKD_DATA, the Debian path, and
    torchvision's layout (<dir>/FashionMNIST/raw) under each of those."""
    bases = [Path(p).expanduser() for p in (root, os.environ.get("EDGEKD_DATA")) if p]
    bases.append(SYSTEM_DIR)
    return [d for base in bases for d in (base, base / "FashionMNIST" / "raw")]


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def locate(root: str | Path | None) -> Path:
    """The first candidate folder that holds all four files, or an error listing every place."""
    tried = candidate_dirs(root)
    for directory in tried:
        if all(_find(directory, stem) for pair in FILES.values() for stem in pair):
            return directory
    looked = "\n".join(f"  - {d}" for d in tried)
    raise DataNotFoundError(f"Fashion-MNIST not found. edgekd looked in:\n{looked}\n{FIX}")


def download(root: str | Path) -> Path:
    """Fetch through torchvision into <root>/FashionMNIST/raw (needs network)."""
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(root), train=True, download=True)
    FashionMNIST(str(root), train=False, download=True)
    return Path(root) / "FashionMNIST" / "raw"


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (LeCun's MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataNotFoundError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise DataNotFoundError(
            f"{path} is truncated: expected {shape}, got {len(data) - offset} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def load(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N×1×28×28 uint8, labels N int64) of `split` ('train' or 'test')."""
    images_stem, labels_stem = FILES[split]
    images = read_idx(_find(directory, images_stem) or directory / images_stem)
    labels = read_idx(_find(directory, labels_stem) or directory / labels_stem)
    return images[:, None, :, :].copy(), labels.astype(np.int64)
