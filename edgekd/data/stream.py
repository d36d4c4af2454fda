"""ImageFolder splits that stay on disk, read batch by batch through torch's DataLoader.

`FileImages` stands where the in-memory path holds an N×C×H×W uint8 tensor: it has its shape,
can be subset without reading anything, and decodes on indexing (for the few images a parity
check or an example needs). Epochs go through `loader`: DataLoader worker processes decode,
resize and augment each image; the order and every random choice are drawn beforehand in the
main process (data/augment.py), so the batches do not depend on the number of workers and
equal the in-memory path's for the same seed."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from edgekd.config.schema import AugmentConfig
from edgekd.data import augment as aug
from edgekd.data.imagefolder import Decode, open_image, read

Item = tuple[int, tuple[bool, int, int, int]]  # position in the split, Draws.item


def default_workers() -> int:
    """One decoding process per CPU core this process may use, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


@dataclass(frozen=True)
class FileImages:
    """Image files decoded on demand, indexed like the in-memory N×C×H×W uint8 tensor."""

    files: tuple[str, ...]
    decode: Decode
    workers: int = 0

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self.files), self.decode.channels, self.decode.size, self.decode.size

    def select(self, index: torch.Tensor | Sequence[int]) -> FileImages:
        """The files at `index`, still on disk."""
        return replace(self, files=tuple(self.files[int(i)] for i in index))

    def __add__(self, other: FileImages) -> FileImages:
        assert other.decode == self.decode
        return replace(self, files=self.files + other.files)

    def __getitem__(self, index: slice | torch.Tensor | Sequence[int]) -> torch.Tensor:
        """The images at `index` decoded in this process, N×C×H×W uint8."""
        files = self.files[index] if isinstance(index, slice) else self.select(index).files
        if not files:
            return torch.zeros((0, *self.shape[1:]), dtype=torch.uint8)
        return torch.stack([torch.from_numpy(read(Path(f), self.decode)) for f in files])


class _Decoded(Dataset[tuple[torch.Tensor, int, bool]]):
    """One image per item, decoded, resized and augmented as its item's draws say."""

    def __init__(self, images: FileImages, augment: AugmentConfig | None) -> None:
        self.images = images
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: Item) -> tuple[torch.Tensor, int, bool]:
        position, choice = item
        file = Path(self.images.files[position])
        seed = choice[3]
        if seed >= 0 and self.augment is not None:  # crop the full-size file
            decode = self.images.decode
            image = aug.resized_crop(
                open_image(file, decode.grayscale), seed, decode.size, self.augment
            )
        else:
            image = torch.from_numpy(read(file, self.images.decode))
        return aug.apply_one(image, choice, self.augment), position, choice[0]


def _collate(
    rows: list[tuple[torch.Tensor, int, bool]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, positions, flipped = zip(*rows, strict=True)
    return torch.stack(images), torch.tensor(positions), torch.tensor(flipped)


class _Plan:
    """The batch sampler: each planned batch as the list of its items, made as it is asked for
    (an epoch of ImageNet is 1.28 M items; their draws stay in tensors until then)."""

    def __init__(self, batches: list[tuple[torch.Tensor, aug.Draws]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[Item]]:
        for index, draws in self.batches:
            yield [(int(p), draws.item(i)) for i, p in enumerate(index)]


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # the workers share the cores with the training process


def loader(
    images: FileImages,
    batches: list[tuple[torch.Tensor, aug.Draws]],
    augment: AugmentConfig | None,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(uint8 images, positions, flipped) of each planned batch (positions, draws), in order."""
    if not batches:
        return iter(())
    data = DataLoader(
        _Decoded(images, augment),
        batch_sampler=_Plan(batches),
        num_workers=images.workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        worker_init_fn=_one_thread if images.workers else None,
    )
    return iter(data)


def in_order(
    images: FileImages, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(uint8 images, positions, flipped) of every image in order, unaugmented, batch by batch."""
    plan = [
        (index, aug.draw(len(index), None, None))
        for index in torch.arange(len(images)).split(batch_size)
    ]
    return loader(images, plan, None)


def decode_all(images: FileImages, batch_size: int = 256) -> torch.Tensor:
    """Every image decoded into one N×C×H×W uint8 tensor (the in-memory path), by the
    DataLoader workers, filled in place so the peak is the tensor itself."""
    out = torch.empty(images.shape, dtype=torch.uint8)
    for batch, positions, _ in in_order(images, batch_size):
        out[positions] = batch
    return out
