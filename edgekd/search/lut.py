"""The lookup-table latency predictor and `edgekd profile`: every block configuration a space
can use (stem, each stage's first and repeated inverted residual per width, expansion and
kernel, head) timed once on the target; a candidate's latency is the sum of its blocks plus a
per-model overhead measured on a few whole candidates (nn-Meter, Zhang et al. 2021, predicts at
kernel level the same way). The table carries the fingerprint of the device and runtime that
made it (machine, runtime and its version, precision, threads) and refuses to serve another.

Blocks are exported like the final model (INT8: NNCF PTQ on random inputs of the block's shape,
Q/DQ, edgekd's rewrite) and timed by the target's runner in a fresh process each.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekd.contracts import Record
from edgekd.errors import EdgeKDError
from edgekd.search.cost import Block, blocks
from edgekd.search.predict import Latency, Measured, SearchError, export_file
from edgekd.search.space import MobileNetSpace, Student

REFERENCES = 4  # whole candidates timed to measure the per-model overhead


class Table(Record):
    """A latency table: block key → median ms on one device, the per-model overhead, and what
    timing a block alone adds to it (its own input quantize, output dequantize and call)."""

    fingerprint: dict[str, Any]
    target: str
    blocks: dict[str, float]
    overhead_ms: float
    references: list[dict[str, Any]]
    per_block_ms: float = 0.0

    def predict(self, candidate: Student, shape: tuple[int, int]) -> float:
        found = blocks(candidate, *shape)
        missing = [b.name for b in found if b.key() not in self.blocks]
        if missing:
            raise SearchError(f"blocks {', '.join(missing)} are not in the latency table")
        times = [self.blocks[b.key()] for b in found]
        corrected = self.overhead_ms + sum(times) - self.per_block_ms * len(found)
        return max(corrected, max(times) - self.per_block_ms)  # no faster than its slowest block


def unique_blocks(space: MobileNetSpace, shape: tuple[int, int]) -> dict[str, Block]:
    """Every block any student of the space contains. A stage's blocks depend on the width, its
    own expansion and kernel and their position (first or repeated), not on other stages'
    choices, so the students that use one expansion and kernel everywhere, at the deepest
    setting, cover them all."""
    found: dict[str, Block] = {}
    stages = range(len(space.channels))
    settings = itertools.product(
        space.width, space.expand, space.kernel, space.se, space.activation,
        space.last_channel, space.resolution,
    )  # fmt: skip
    for width, t, k, se, activation, head, resolution in settings:
        params: dict[str, Any] = {"width": width, "resolution": resolution, "last_channel": head}
        for i in stages:
            params |= {f"depth{i}": max(space.depth[i]), f"kernel{i}": k}
            params |= {f"se{i}": se, f"act{i}": activation}
            params |= {f"expand{i}": t} if i else {}
        for block in blocks(space.candidate(params), *shape):
            found.setdefault(block.key(), block)
    return found


def block_module(block: Block) -> Any:
    """A torch module computing exactly `block` (for timing it alone)."""
    from torch import nn
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.ops.misc import Conv2dNormActivation

    from edgekd.models.zoo import v3_block, widen_depthwise

    first = block.layers[0]
    if block.name == "stem":
        return Conv2dNormActivation(
            first.cin,
            first.cout,
            3,
            first.stride,
            norm_layer=nn.BatchNorm2d,
            activation_layer=nn.ReLU6,
        )
    if block.name == "head":
        head, classifier = block.layers
        return nn.Sequential(
            Conv2dNormActivation(
                head.cin, head.cout, 1, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6
            ),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(classifier.cin, classifier.cout),
        )
    depthwise = next(x for x in block.layers if x.groups > 1)
    inp, oup = first.cin, block.layers[-1].cout
    module = InvertedResidual(inp, oup, depthwise.stride, depthwise.cin // inp)
    if depthwise.kernel != 3:
        widen_depthwise(module, depthwise.kernel)
    v3_block(module, any(x.bias for x in block.layers), block.activation)
    return module


def _wrapped(body: Any) -> Any:
    """`body` inside a plain module: NNCF registers its hook storage as a child of the model it
    quantizes, which an nn.Sequential (the stem, the head) would then call as a layer."""
    from torch import nn

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, x: Any) -> Any:
            return self.body(x)

    return Wrapped()


def fingerprint(row: dict[str, Any]) -> dict[str, Any]:
    """What a measured row says about the device and runtime that produced it."""
    return {k: row.get(k) for k in ("machine", "runtime", "versions", "precision", "threads")}


@dataclass
class Profiler:
    measured: Measured
    shape: tuple[int, int]
    folder: Path

    def time_block(self, block: Block, number: int) -> dict[str, Any]:
        import torch

        module = _wrapped(block_module(block)).eval()
        size = block.layers[0].size_in
        generator = torch.Generator().manual_seed(number)
        inputs = [
            torch.randn(16, block.layers[0].cin, size, size, generator=generator) for _ in range(4)
        ]
        path, _ = export_file(
            module, inputs, self.measured.precision, self.folder / f"block{number}.onnx"
        )
        try:
            return self.measured.run(path)
        finally:
            for file in self.folder.glob(f"block{number}*"):
                file.unlink()

    def probe(self, space: MobileNetSpace) -> dict[str, Any]:
        """The fingerprint of the device as it is now: one block timed."""
        first = next(iter(unique_blocks(space, self.shape).values()))
        return fingerprint(self.time_block(first, 0))


def profile(space: MobileNetSpace, profiler: Profiler, log: Callable[[str], None]) -> Table:
    """Time every block of the space, then whole reference students for the overhead."""
    found = unique_blocks(space, profiler.shape)
    log(f"{len(found)} block configurations to time on {profiler.measured.target_name}")
    times: dict[str, float] = {}
    row: dict[str, Any] = {}
    for number, (key, block) in enumerate(found.items()):
        row = profiler.time_block(block, number)
        times[key] = row["median_ms"]
        log(f"  {block.name} {key}: {row['median_ms']:.4f} ms")
    table = Table(
        fingerprint=fingerprint(row),
        target=profiler.measured.target_name,
        blocks=times,
        overhead_ms=0.0,
        references=[],
    )
    gaps, counts = [], []
    for candidate in space.sample(REFERENCES, seed=1):
        whole = profiler.measured.predict(candidate).ms
        summed = table.predict(candidate, profiler.shape)
        gaps.append(whole - summed)
        counts.append(len(blocks(candidate, *profiler.shape)))
        table.references.append(
            {
                "student": candidate.describe(),
                "measured_ms": whole,
                "sum_of_blocks_ms": summed,
                "blocks": counts[-1],
            }
        )
    table.overhead_ms, table.per_block_ms = fit_overheads(gaps, counts)
    return table


def fit_overheads(gaps: list[float], counts: list[int]) -> tuple[float, float]:
    """(per-model overhead C, per-block cost c) with whole ≈ C + Σ blocks − c · blocks, by
    least squares over the reference students (whole − Σ blocks = C − c · blocks); with one
    block count among them only C, their median gap."""
    import numpy as np

    if len(set(counts)) < 2:
        return statistics.median(gaps), 0.0
    design = np.column_stack([np.ones(len(counts)), -np.asarray(counts, dtype=float)])
    (overhead, per_block), *_ = np.linalg.lstsq(design, np.asarray(gaps), rcond=None)
    if per_block < 0:  # timing a block alone cannot save time: the references disagree
        return statistics.median(gaps), 0.0
    return float(overhead), float(per_block)


def refuse_other_device(table: Table, now: dict[str, Any], source: Path, rebuild: str) -> None:
    """The table serves only the device and runtime that made it."""
    differs = [k for k, v in table.fingerprint.items() if now.get(k) != v]
    if differs:
        detail = "; ".join(
            f"{k}: table {table.fingerprint[k]!r}, now {now.get(k)!r}" for k in differs
        )
        raise EdgeKDError(
            f"{source} was measured on another device or runtime ({detail}); rebuild it here "
            f"with `{rebuild}`"
        )


@dataclass
class LookupTable:
    table: Table
    shape: tuple[int, int]
    name: str = "lut"

    def predict(self, candidate: Student) -> Latency:
        return Latency(self.table.predict(candidate, self.shape), "predicted (latency table)")
