"""Splits, augmentation and ImageFolder loading."""

import hashlib

import numpy as np
import pytest
import torch

from edgekd.config.schema import AugmentConfig, DataConfig
from edgekd.data import imagefolder
from edgekd.data.augment import draw, pad_crop
from edgekd.data.datasets import batches, load_splits, normalize
from edgekd.errors import DataNotFoundError


def _digests(images):
    return [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images]


def test_splits_are_disjoint_and_sized(splits):
    assert len(splits.train) == 2000 and len(splits.val) == 500 and len(splits.test) == 1000
    # Fashion-MNIST has no two identical images (checked on all 70,000), so images that are
    # equal byte for byte are the same image: no image is in two splits, none is repeated.
    train, val, test = (_digests(s.images) for s in (splits.train, splits.val, splits.test))
    rest = _digests(splits.rest.images)
    assert len(set(train)) == len(train) and len(set(val)) == len(val)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert not set(train) & set(rest) and not set(val) & set(rest)
    assert len(train) + len(rest) + len(val) == 60_000  # the held-out rest plus the two splits
    assert splits.input_shape == (1, 28, 28) and len(splits.classes) == 10
    # Normalised training pixels have mean ≈ 0 and std ≈ 1.
    x = normalize(splits.train.images, splits)
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01


def test_flips_are_recorded_per_image(splits):
    gen = torch.Generator().manual_seed(0)
    batch = next(
        batches(splits.train, splits, 64, augment=AugmentConfig(hflip=True), generator=gen)
    )
    plain = normalize(splits.train.images[batch.index], splits)
    assert batch.flipped.any() and not batch.flipped.all()
    torch.testing.assert_close(batch.images[batch.flipped], plain[batch.flipped].flip(3))
    torch.testing.assert_close(batch.images[~batch.flipped], plain[~batch.flipped])


def test_random_crop_is_a_shifted_window():
    images = torch.arange(1, 1 + 2 * 5 * 5, dtype=torch.uint8).view(2, 1, 5, 5)
    draws = draw(2, AugmentConfig(hflip=False, crop_pad=2), torch.Generator().manual_seed(3))
    assert draws.dy is not None and draws.dx is not None
    out = pad_crop(images, 2, draws.dy, draws.dx)
    assert out.shape == images.shape
    for original, cropped in zip(images, out, strict=True):
        padded = torch.nn.functional.pad(original, (2, 2, 2, 2))
        windows = [padded[:, y : y + 5, x : x + 5] for y in range(5) for x in range(5)]
        assert any(torch.equal(w, cropped) for w in windows)


def test_imagefolder_loads_and_checks_classes(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for label, name in enumerate(["cat", "dog"]):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((10, 12, 3), 40 * label + i, np.uint8)).save(
                    folder / f"{i}.png"
                )
    splits = load_splits(
        DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=8, val_size=0), seed=0
    )
    assert splits.classes == ["cat", "dog"] and splits.input_shape == (3, 8, 8)
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert int(splits.train.images[4, 0, 0, 0]) == 41
    (tmp_path / "val" / "bird").mkdir()
    with pytest.raises(DataNotFoundError, match="same class folders"):
        imagefolder.listing(tmp_path, "val", ["cat", "dog"])


def test_batches_for_the_cpu_device_are_the_plain_batches(splits):
    plain = list(
        batches(
            splits.val,
            splits,
            128,
            augment=AugmentConfig(hflip=True),
            generator=torch.Generator().manual_seed(0),
        )
    )
    placed = list(
        batches(
            splits.val,
            splits,
            128,
            augment=AugmentConfig(hflip=True),
            generator=torch.Generator().manual_seed(0),
            device=torch.device("cpu"),
        )
    )
    for a, b in zip(plain, placed, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.flipped, b.flipped)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_batches_for_a_gpu_go_through_pinned_memory_and_equal_the_cpu_ones(splits):
    cuda = torch.device("cuda")
    for a, b in zip(
        batches(splits.val, splits, 128), batches(splits.val, splits, 128, device=cuda), strict=True
    ):
        assert b.images.device.type == "cuda" and b.labels.device.type == "cpu"
        torch.testing.assert_close(b.images.cpu(), a.images, atol=1e-6, rtol=0)
