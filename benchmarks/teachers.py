"""Test accuracy of the committed Fashion-MNIST teachers, alone and as an averaged ensemble.

KD can only pass on what the teacher knows beyond the student, so docs/teacher.md states each
teacher's test accuracy as the `teacher` stage measures it (one view), with the mean softmax of
each image and its mirror (the flagship caches the teacher's logits for both views, and KD reads
the view the student was shown), and for the ensemble of several files (`multi_teacher:
average`: the mean of their softmax). Each file is read with the normalisation in the JSON file
beside it.

    python benchmarks/teachers.py [weights/fmnist_resnet_small.safetensors ...]

Writes docs/benchmarks/teachers.md. Under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from provenance import commit  # benchmarks/provenance.py

from edgekd.artifacts import read_json, write_text
from edgekd.config.schema import DataConfig
from edgekd.data.datasets import ImageSet, load_splits
from edgekd.distill.trainer import predict
from edgekd.models import zoo
from edgekd.models.io import load_state, read_weights
from edgekd.models.specs import ModelSpec
from edgekd.quant.ladder import accuracy
from edgekd.training import for_model, sidecar

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [
    "weights/fmnist_resnet_small.safetensors",
    "weights/fmnist_resnet_small_seed1.safetensors",
    "weights/fmnist_resnet_small_seed2.safetensors",
    "weights/fmnist_resnet_long.safetensors",
]


def load_teacher(file: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A committed teacher's weights file, built from the JSON file beside it, and that JSON."""
    meta_file = sidecar(file)
    if meta_file is None:
        raise SystemExit(f"{file}: no JSON file beside it to say the model and its normalisation")
    meta = read_json(meta_file)
    model = zoo.build(
        ModelSpec.model_validate(meta["spec"]), meta["in_channels"], meta["num_classes"]
    )
    load_state(model, read_weights(file), str(file))
    return model, meta


def probabilities(file: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax of one teacher on the test images (plain view, mirrored view), and the labels."""
    model, meta = load_teacher(file)
    splits = for_model(load_splits(DataConfig(dataset="fashion-mnist", val_size=5000), 0), meta)
    test, cpu = splits.test, torch.device("cpu")
    assert isinstance(test.images, torch.Tensor)
    mirrored = ImageSet(test.images.flip(-1), test.labels)
    plain = predict(model, test, splits, cpu, batch_size=500).softmax(1)
    return plain, predict(model, mirrored, splits, cpu, batch_size=500).softmax(1), test.labels


def percent(probs: torch.Tensor, labels: torch.Tensor) -> str:
    return f"{accuracy(probs, labels):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="*", default=DEFAULT)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows, views = [], {}
    labels = torch.empty(0)
    for name in args.files:
        plain, mirror, labels = probabilities(ROOT / name)
        views[name] = (plain + mirror) / 2
        rows.append(f"| `{name}` | {percent(plain, labels)} | {percent(views[name], labels)} |")
    lines = [
        "# The Fashion-MNIST teachers' test accuracy",
        "",
        f"Measured at {commit()} by `python benchmarks/teachers.py {' '.join(args.files)}`: all "
        "10,000 test images, each file with the normalisation in the JSON file beside it. "
        '"with its mirror" scores the mean softmax of each image and its horizontal mirror (the '
        "flagship caches the teacher's logits for both views).",
        "",
        "| teacher | test acc % | with its mirror % |",
        "|---|---|---|",
        *rows,
    ]
    if len(views) > 1:
        lines += ["", "Averaged ensembles (mean softmax, each with its mirror):", ""]
        names = list(views)
        groups = [names] if len(names) <= 2 else [names[:-1], names]
        for group in groups:
            mean = torch.stack([views[n] for n in group]).mean(0)
            members = " + ".join(f"`{Path(n).stem}`" for n in group)
            lines.append(f"- {members}: {percent(mean, labels)} %")
    text = "\n".join(lines) + "\n"
    write_text(ROOT / "docs" / "benchmarks" / "teachers.md", text)
    print(text)


if __name__ == "__main__":
    main()
