"""Shared fixtures: the repo root as working directory, small real data, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Named tolerances (STYLE.md rule 10).
TOL = {"fp32": 1e-5, "onnx_fp32": 1e-4, "int8_top1_agreement": 99.0}


@pytest.fixture(autouse=True)
def _repo_root_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipelines name targets/ and calibration/ relative to the repo root."""
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="session")
def splits():
    """Real Fashion-MNIST, small: 2,000 train, 500 val, 1,000 test images."""
    from edgekd.config.schema import DataConfig
    from edgekd.data.datasets import load_splits

    return load_splits(DataConfig(train_subset=2000, val_size=500, test_subset=1000), seed=0)


@pytest.fixture()
def write_yaml(tmp_path: Path):
    """Write YAML text to a file in tmp_path and return its path."""

    def write(text: str, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def pytest_report_header() -> str:
    return f"edgekd tests; cwd {os.getcwd()}"
