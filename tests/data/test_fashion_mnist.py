"""Finding and reading Fashion-MNIST; every place looked at is named when it is missing."""

import gzip
import struct

import numpy as np
import pytest

from edgekd.data import fashion_mnist
from edgekd.errors import DataNotFoundError


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def make_fake_set(directory, n=3) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in fashion_mnist.FILES.items():
        write_idx(directory / f"{images}.gz", np.full((n, 28, 28), 7 if split == "train" else 9))
        write_idx(directory / f"{labels}.gz", np.arange(n) % 10)


def test_read_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(fashion_mnist.read_idx(tmp_path / "x.gz"), array)


def test_truncated_idx_is_refused(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"\0" * 5)
    with pytest.raises(DataNotFoundError, match="truncated"):
        fashion_mnist.read_idx(path)


def test_search_order_yaml_root_then_env_then_system(tmp_path, monkeypatch):
    yaml_root, env_root = tmp_path / "yaml", tmp_path / "env"
    make_fake_set(env_root)
    monkeypatch.setenv("EDGEKD_DATA", str(env_root))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "system")
    assert fashion_mnist.locate(yaml_root) == env_root
    make_fake_set(yaml_root / "FashionMNIST" / "raw")  # torchvision's layout
    assert fashion_mnist.locate(yaml_root) == yaml_root / "FashionMNIST" / "raw"


def test_not_found_lists_every_place_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "system")
    with pytest.raises(DataNotFoundError) as exc:
        fashion_mnist.locate(tmp_path / "yaml")
    msg = str(exc.value)
    for place in ("yaml", "env", "system", "yaml/FashionMNIST/raw"):
        assert str(tmp_path / place) in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_real_data_set_is_complete():
    directory = fashion_mnist.locate(None)
    train_x, train_y = fashion_mnist.load(directory, "train")
    test_x, test_y = fashion_mnist.load(directory, "test")
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    # Fashion-MNIST is balanced: 6,000 and 1,000 images per class.
    assert np.bincount(train_y).tolist() == [6000] * 10
    assert np.bincount(test_y).tolist() == [1000] * 10
