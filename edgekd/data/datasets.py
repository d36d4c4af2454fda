"""Train/val/test splits held in memory, their normalisation, and batch iteration."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from edgekd.config.schema import AugmentConfig, DataConfig
from edgekd.data import fashion_mnist, imagefolder
from edgekd.errors import DataNotFoundError


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # N×C×H×W uint8
    labels: torch.Tensor  # N int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Splits:
    """The data set's splits and one normalisation of them: the training split's statistics
    as loaded, or a model's own (`normalized_by`), so that each model is fed as it was
    trained."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    rest: ImageSet | None = None  # training images left out by data.train_subset

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    def normalized_by(self, mean: Sequence[float], std: Sequence[float]) -> Splits:
        """The same images, normalised with another mean and std (no copy)."""
        if len(mean) != self.input_shape[0] or len(std) != self.input_shape[0]:
            raise ValueError(
                f"a normalisation of {len(mean)} channels for images of {self.input_shape[0]}"
            )
        return dataclasses.replace(self, mean=tuple(mean), std=tuple(std))

    def preprocessing(self) -> dict[str, object]:
        """What a deployment must do to a uint8 image before the model sees it."""
        return {
            "layout": "NCHW",
            "channels": self.input_shape[0],
            "size": list(self.input_shape[1:]),
            "scale": 1 / 255,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # normalised float
    labels: torch.Tensor
    index: torch.Tensor  # positions in the split, for cached teacher outputs
    flipped: torch.Tensor  # bool per image: was it mirrored


def load_splits(cfg: DataConfig, seed: int, root: str | None = None) -> Splits:
    """The pipeline's splits; cached per process so stages share one copy."""
    return _load_splits(cfg.model_dump_json(), seed, root or cfg.root)


@lru_cache(maxsize=4)
def _load_splits(cfg_json: str, seed: int, root: str | None) -> Splits:
    cfg = DataConfig.model_validate(json.loads(cfg_json))
    gen = torch.Generator().manual_seed(seed)
    if cfg.dataset == "fashion-mnist":
        try:
            directory = fashion_mnist.locate(root)
        except DataNotFoundError:
            if not cfg.download:
                raise
            directory = fashion_mnist.download(root or Path.home() / ".cache" / "edgekd")
        train_x, train_y = fashion_mnist.load(directory, "train")
        test_x, test_y = fashion_mnist.load(directory, "test")
        full = ImageSet(torch.from_numpy(train_x), torch.from_numpy(train_y))
        order = torch.randperm(len(full), generator=gen)
        val = full.subset(order[: cfg.val_size])
        train = full.subset(order[cfg.val_size :])
        test = ImageSet(torch.from_numpy(test_x), torch.from_numpy(test_y))
        classes, source = fashion_mnist.CLASSES, str(directory)
    else:
        if root is None:
            raise DataNotFoundError(
                "data.root must point at the ImageFolder tree "
                "(root/train/<class>/..., root/val/<class>/...)"
            )
        base, size = Path(root).expanduser(), cfg.image_size or 64
        tx, ty, classes = imagefolder.load(base, "train", size, cfg.grayscale)
        vx, vy, _ = imagefolder.load(base, "val", size, cfg.grayscale, classes)
        train = ImageSet(torch.from_numpy(tx), torch.from_numpy(ty))
        val = ImageSet(torch.from_numpy(vx), torch.from_numpy(vy))
        if (base / "test").is_dir():
            sx, sy, _ = imagefolder.load(base, "test", size, cfg.grayscale, classes)
            test = ImageSet(torch.from_numpy(sx), torch.from_numpy(sy))
        else:
            test = val
        source = str(base)
    rest = None
    if cfg.train_subset is not None and cfg.train_subset < len(train):
        order = torch.randperm(len(train), generator=gen)
        train, rest = (
            train.subset(order[: cfg.train_subset]),
            train.subset(order[cfg.train_subset :]),
        )
    if cfg.test_subset is not None and cfg.test_subset < len(test):
        test = test.subset(torch.randperm(len(test), generator=gen)[: cfg.test_subset])
    # The training split's statistics: the default normalisation of a model trained here.
    pixels = train.images.float().div_(255).transpose(0, 1).reshape(train.images.shape[1], -1)
    mean = [round(float(v), 4) for v in pixels.mean(1)]
    std = [round(float(v), 4) for v in pixels.std(1)]
    return Splits(train, val, test, list(classes), tuple(mean), tuple(std), source, rest)


def normalize(images: torch.Tensor, splits: Splits) -> torch.Tensor:
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def renormalizer(source: Splits, target: Splits) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Turns images normalised as `source` into images normalised as `target` (a teacher fed
    the student's batches), or None when the two normalisations are the same."""
    if (source.mean, source.std) == (target.mean, target.std):
        return None
    scale = torch.tensor(source.std) / torch.tensor(target.std)
    shift = (torch.tensor(source.mean) - torch.tensor(target.mean)) / torch.tensor(target.std)

    def convert(images: torch.Tensor) -> torch.Tensor:
        view = (1, -1, 1, 1)
        return images * scale.view(view).to(images.device) + shift.view(view).to(images.device)

    return convert


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch to `device` in channels-last layout: student training ran 1.5× faster in
    it on the development CPU (952 → 1,460 img/s, measured), teacher inference ~2×."""
    return images.to(device, memory_format=torch.channels_last)


def model_to_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a model to `device` with channels-last weights (see `to_device`)."""
    return model.to(device).to(memory_format=torch.channels_last)


def batches(
    data: ImageSet,
    splits: Splits,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
    limit: int | None = None,
) -> Iterator[Batch]:
    """Normalised batches; with `augment`, random flips (recorded per image) and crops."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if limit is not None:
        order = order[:limit]
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        images = data.images[index]
        flipped = torch.zeros(len(index), dtype=torch.bool)
        if augment is not None and augment.hflip:
            flipped = torch.rand(len(index), generator=generator) < 0.5
            images = torch.where(flipped.view(-1, 1, 1, 1), images.flip(3), images)
        if augment is not None and augment.crop_pad > 0:
            images = _random_crop(images, augment.crop_pad, generator)
        yield Batch(normalize(images, splits), data.labels[index], index, flipped)


def _random_crop(images: torch.Tensor, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    """Zero-pad by `pad` and cut a random h×w window per image."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    rows = (dy + torch.arange(h)).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    cols = (dx + torch.arange(w)).view(n, 1, 1, w).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def sample(data: ImageSet, size: int, seed: int) -> ImageSet:
    """A seeded random subset of `size` images (or all of them when fewer)."""
    if size >= len(data):
        return data
    return data.subset(
        torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:size]
    )
