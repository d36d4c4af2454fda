"""Streaming ImageFolder data: the same batches and accuracy as the in-memory path, the
automatic choice between them, ImageNet-style transforms, and the on-disk logit cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from edgekd.config.schema import AugmentConfig, DataConfig
from edgekd.data import imagefolder
from edgekd.data.datasets import batches, load_splits
from edgekd.data.stream import FileImages
from edgekd.errors import EdgeKDError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of random RGB images of mixed sizes and aspect ratios: 20 train, 8 val and
    6 test images per class."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 20), ("val", 8), ("test", 6)):
        for label, name in enumerate(["ant", "bee"]):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                h, w = int(rng.integers(12, 30)), int(rng.integers(12, 30))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                pixels[..., label] //= 2  # the classes differ in one channel
                Image.fromarray(pixels).save(root / split / name / f"{i:02d}.png")
    return root


def _splits(folder, **data):
    cfg = DataConfig(dataset="imagefolder", root=str(folder), image_size=16, **data)
    return load_splits(cfg, seed=0)


def test_streamed_and_in_memory_give_the_same_batches_with_any_worker_count(folder):
    memory = _splits(folder, storage="memory")
    assert not memory.train.streamed
    augment = AugmentConfig(hflip=True, crop_pad=2)
    for workers in (0, 2):
        stream = _splits(folder, storage="stream", workers=workers)
        assert stream.train.streamed and isinstance(stream.train.images, FileImages)
        assert (stream.mean, stream.std) == (memory.mean, memory.std)
        assert stream.input_shape == memory.input_shape == (3, 16, 16)
        gens = [torch.Generator().manual_seed(7) for _ in range(2)]
        got = [
            list(batches(s.train, s, 8, shuffle=True, augment=augment, generator=g))
            for s, g in zip((memory, stream), gens, strict=True)
        ]
        assert len(got[0]) == len(got[1]) == 5  # 40 images in batches of 8
        flips = 0
        for a, b in zip(*got, strict=True):
            assert torch.equal(a.images, b.images)
            assert torch.equal(a.labels, b.labels) and torch.equal(a.index, b.index)
            assert torch.equal(a.flipped, b.flipped)
            flips += int(a.flipped.sum())
        assert 0 < flips < 40  # the augmentation did run
        # the generator moved the same way: a resumed epoch continues identically
        assert torch.equal(gens[0].get_state(), gens[1].get_state())


def test_streamed_and_in_memory_score_a_model_alike(folder):
    from edgekd.distill.trainer import evaluate, predict

    memory, stream = _splits(folder, storage="memory"), _splits(folder, storage="stream")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )
    model(torch.zeros(1, 3, 16, 16))
    device = torch.device("cpu")
    a = predict(model, memory.test, memory, device, 5)
    b = predict(model, stream.test, stream, device, 5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert evaluate(model, memory.test, memory, device) == evaluate(
        model, stream.test, stream, device
    )


def test_storage_auto_streams_what_does_not_fit_the_memory_limit(folder):
    assert not _splits(folder).train.streamed  # 68 × 3 × 16 × 16 bytes = 51 KiB, under 2 GiB
    big = DataConfig(dataset="imagefolder", root=str(folder), image_size=256, memory_limit_mb=1)
    assert load_splits(big, seed=0).train.streamed  # 68 × 3 × 256 × 256 bytes = 12.75 MiB


def test_streaming_fashion_mnist_is_refused_at_validate(write_yaml, capsys):
    from edgekd.cli import main

    path = write_yaml(
        "name: x\ndata:\n  dataset: fashion-mnist\n  storage: stream\n"
        "stages:\n  - stage: teacher\n    model: {arch: tiny_cnn}\n"
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4: data.storage: stream reads an ImageFolder" in err
    assert "always held in memory" in err


def test_center_crop_is_torchvisions_imagenet_evaluation_transform(folder):
    from PIL import Image
    from torchvision import transforms

    file = sorted((folder / "train" / "ant").iterdir())[3]
    decode = imagefolder.Decode(16, False, "center_crop", 0.875)
    expected = transforms.Compose([transforms.Resize(18), transforms.CenterCrop(16)])(
        Image.open(file).convert("RGB")
    )
    got = imagefolder.read(file, decode)
    assert got.shape == (3, 16, 16)
    assert np.array_equal(got, np.asarray(expected).transpose(2, 0, 1))


def test_random_resized_crops_are_seeded_per_image_not_per_worker(folder):
    augment = AugmentConfig(hflip=True, random_resized_crop=(0.25, 1.0))
    runs = []
    for workers in (0, 2):
        data = _splits(folder, storage="stream", workers=workers)
        gen = torch.Generator().manual_seed(3)
        runs.append(
            list(batches(data.train, data, 10, shuffle=True, augment=augment, generator=gen))
        )
    for a, b in zip(*runs, strict=True):
        assert a.images.shape == (10, 3, 16, 16)
        assert torch.equal(a.images, b.images)
    plain = _splits(folder, storage="stream")
    unaugmented = next(
        batches(plain.train, plain, 10, shuffle=True, generator=torch.Generator().manual_seed(3))
    )
    assert torch.equal(unaugmented.index, runs[0][0].index)
    assert not torch.equal(unaugmented.images, runs[0][0].images)  # the crops did something


def test_a_crop_range_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="0 < min <= max <= 1"):
        AugmentConfig(random_resized_crop=(0.5, 1.5))


# --- the teacher's logits, cached on disk -------------------------------------------------


def _logit_fn(images):
    return images.mean((2, 3)).repeat(1, 2)[:, :5] * 10  # five "classes", cheap, deterministic


def test_cached_logits_are_memory_mapped_and_refused_under_another_key(folder, tmp_path):
    from edgekd.distill.teacher import cache_logits

    data = _splits(folder, storage="stream")
    path = tmp_path / "cache" / "teacher0-logits-abc.npy"
    cached = cache_logits(_logit_fn, data.train, data, torch.device("cpu"), path, "key-a")
    assert cached.shape == (40, 2, 5)
    images = next(batches(data.train, data, 40)).images
    torch.testing.assert_close(cached[:, 0], _logit_fn(images))
    torch.testing.assert_close(cached[:, 1], _logit_fn(images.flip(3)))
    assert isinstance(np.load(path, mmap_mode="r"), np.memmap)
    again = cache_logits(None, data.train, data, torch.device("cpu"), path, "key-a")
    assert torch.equal(again, cached)  # read back, not recomputed (no teacher given)
    with pytest.raises(EdgeKDError, match="made for other data or another teacher") as err:
        cache_logits(None, data.train, data, torch.device("cpu"), path, "key-b")
    assert "Delete" in str(err.value) and str(path) in str(err.value)


KILLED_WRITER = """
import sys, time, torch
from pathlib import Path
from edgekd.config.schema import DataConfig
from edgekd.data.datasets import load_splits
from edgekd.distill.teacher import cache_logits
data = load_splits(DataConfig(dataset="imagefolder", root=sys.argv[1], image_size=16,
                              storage="stream", workers=0), seed=0)
def slow(images):
    print("batch", flush=True)
    time.sleep(0.5)
    return images.mean((2, 3))
cache_logits(slow, data.train, data, torch.device("cpu"), Path(sys.argv[2]), "k", batch_size=4)
"""


def test_a_killed_cache_write_leaves_no_cache_and_the_rerun_completes(folder, tmp_path):
    from edgekd.distill.teacher import cache_logits

    path = tmp_path / "cache" / "logits.npy"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(folder), str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.stdout is not None
    for _ in range(3):  # three of its ten batches written, then killed mid-write
        assert proc.stdout.readline().strip() == "batch"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.1)
    assert not path.exists() and not path.with_suffix(".json").exists()
    assert list(path.parent.glob(".logits.npy.*"))  # the killed write's temporary file
    data = _splits(folder, storage="stream", workers=0)
    logits = cache_logits(
        lambda x: x.mean((2, 3)), data.train, data, torch.device("cpu"), path, "k", batch_size=4
    )
    assert logits.shape == (40, 2, 3) and path.exists()
    assert not list(path.parent.glob(".logits.npy.*"))  # cleaned up


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_unlabeled_images_join_the_training_split_where_it_lives(folder, write_yaml, storage):
    from edgekd import training
    from edgekd.pipeline import load_plan

    extra = folder / "test" / "bee"  # 6 images used as an unlabeled folder
    path = write_yaml(
        f"name: u\ndata: {{dataset: imagefolder, root: {folder}, image_size: 16, "
        f"storage: {storage}}}\n"
        f"distill:\n  losses: [{{name: ce}}, {{name: kd}}]\n"
        f"  unlabeled: {{source: {extra}, limit: 4}}\n"
        "stages:\n  - stage: teacher\n    model: {arch: tiny_cnn}\n"
        "  - stage: student\n    model: {arch: tiny_cnn}\n"
    )
    plan = load_plan(path)
    splits = _splits(folder, storage=storage)
    data = training.training_set(plan, splits)
    assert len(data) == 44 and data.labels[40:].tolist() == [-1] * 4
    assert data.streamed == (storage == "stream")
    first = sorted(extra.iterdir())[0]
    expected = imagefolder.read(first, imagefolder.Decode(16, False))
    assert np.array_equal(data.images[torch.tensor([40])][0].numpy(), expected)
