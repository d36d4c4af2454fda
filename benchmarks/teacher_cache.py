"""How long the flagship's teacher-logit cache takes in eager PyTorch and where edgekd runs it.

KD with `cache_teacher_logits` runs the frozen teacher once over every training image and its
mirror before the student's first step; on the flagship (55,000 images, the 16-epoch ResNet
teacher) that pass is the longest single thing outside training. This times `cache_logits`
over exactly that set, alternating eager PyTorch in channels-last (what it did before) with
`fastest_logits` (what it does now: onnxruntime on a CPU, checked against PyTorch), and
compares the two caches.

    python benchmarks/teacher_cache.py [--repeats 2]

Writes docs/benchmarks/teacher_cache.md. About 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from provenance import commit  # benchmarks/provenance.py
from teachers import load_teacher  # benchmarks/teachers.py

from edgekd.artifacts import write_text
from edgekd.config.schema import DataConfig
from edgekd.data.datasets import load_splits
from edgekd.distill.teacher import cache_logits, torch_logits
from edgekd.runners.base import cpu_name, default_threads
from edgekd.training import for_model

ROOT = Path(__file__).resolve().parents[1]
TEACHER = "weights/fmnist_resnet_long.safetensors"  # the flagship's; its .json says the rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    data = DataConfig(dataset="fashion-mnist", val_size=5000, split_seed=0)
    model, meta = load_teacher(ROOT / TEACHER)
    own = for_model(load_splits(data, 0), meta)  # the teacher's own normalisation
    seconds: dict[str, list[float]] = {"pytorch": [], "fastest": []}
    said: list[str] = []
    caches: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(args.repeats):
            for name in seconds:
                teacher = torch_logits(model, cpu) if name == "pytorch" else model
                path = Path(scratch) / f"{name}{i}.npy"
                start = time.perf_counter()
                caches[name] = cache_logits(
                    teacher, own.train, own, cpu, path, "k", log=said.append
                )
                seconds[name].append(time.perf_counter() - start)
                print(name, round(seconds[name][-1], 1), "s", flush=True)
    gap = float((caches["pytorch"] - caches["fastest"]).abs().max())
    agree = float((caches["pytorch"].argmax(-1) == caches["fastest"].argmax(-1)).float().mean())
    before, after = (statistics.median(seconds[n]) for n in ("pytorch", "fastest"))
    runs = lambda n: ", ".join(f"{s:.1f}" for s in seconds[n])  # noqa: E731
    text = "\n".join(
        [
            "# The teacher-logit cache: eager PyTorch vs where edgekd runs it",
            "",
            f"Measured at {commit()} by `python benchmarks/teacher_cache.py --repeats "
            f"{args.repeats}` on {cpu_name()} ({default_threads()} threads): `cache_logits` "
            "over the flagship's training split "
            f"({len(own.train):,} Fashion-MNIST images and their mirrors, the validation "
            f"split held out with split_seed 0) with `{TEACHER}`, the two ways alternated.",
            "",
            "| teacher run by | seconds, each run | median |",
            "|---|---|---|",
            f"| eager PyTorch, channels-last (before) | {runs('pytorch')} | {before:.1f} |",
            f"| `fastest_logits`: {said[0]} | {runs('fastest')} | {after:.1f} |",
            "",
            f"×{before / after:.2f} faster. The two caches differ by at most {gap:.2g} in any "
            f"logit and agree on the top class of {agree:.2%} of the views.",
        ]
    )
    write_text(ROOT / "docs" / "benchmarks" / "teacher_cache.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
