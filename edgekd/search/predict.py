"""Latency of a candidate student on a target, and where each figure comes from.

- `measured`: the candidate exported the way the final model is (INT8: NNCF PTQ → Q/DQ ONNX →
  edgekd's exact rewrite; FP32: plain ONNX) and timed by the target's runner under the bench
  protocol, in a fresh process, its outputs checked against onnxruntime first. Cached by
  architecture and device, so a resumed search or a second study does not time it again.
- `roofline`: per layer, the larger of compute time (2·MACs / peak ops) and memory time (bytes
  moved / peak bandwidth), summed; from the profile's `peak:` data-sheet figures, for devices that
  cannot be reached now. A lower bound: real kernels reach a fraction of peak, and launch
  overheads are not counted. Always labelled `predicted (roofline)`.
- `flops`: MACs scaled by one measured anchor (the space's smallest student): the baseline
  every predictor is compared with, labelled `predicted (FLOPs)`.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgekd.artifacts import read_json, write_json
from edgekd.config.schema import Peak
from edgekd.errors import EdgeKDError
from edgekd.search.cost import blocks, cost
from edgekd.search.space import Student

if TYPE_CHECKING:
    from edgekd.data.datasets import Splits
    from edgekd.runners.base import MeasureProtocol


PARITY_IMAGES = 256


class SearchError(EdgeKDError):
    """A candidate that cannot be built, exported or run; the trial records the reason."""


@dataclass(frozen=True)
class Latency:
    ms: float
    source: str  # "measured (onnxruntime, cpu-x86)", "predicted (roofline)", ...
    ci95_ms: float | None = None


class Predictor(Protocol):
    name: str

    def predict(self, candidate: Student) -> Latency: ...


def roofline_ms(candidate: Student, peak: Peak, precision: str, shape: tuple[int, int]) -> float:
    """Σ over layers of max(2·MACs / peak ops, bytes / bandwidth), in milliseconds."""
    ops = peak.int8_tops * 1e12 if precision == "int8" and peak.int8_tops else None
    if ops is None and peak.fp16_tflops:
        ops = peak.fp16_tflops * 1e12
    if ops is None or peak.mem_gbps is None:
        raise EdgeKDError(
            "the roofline needs the target's `peak:` compute (int8_tops or fp16_tflops) and "
            "mem_gbps from its data sheet"
        )
    size = 1 if precision == "int8" else 4
    total = 0.0
    for block in blocks(candidate, *shape):
        for layer in block.layers:
            compute = 2 * layer.macs / ops
            memory = layer.bytes(size, size) / (peak.mem_gbps * 1e9)
            total += max(compute, memory)
    return total * 1e3


@dataclass
class Roofline:
    peak: Peak
    precision: str
    shape: tuple[int, int]  # input channels, classes
    name: str = "roofline"

    def predict(self, candidate: Student) -> Latency:
        ms = roofline_ms(candidate, self.peak, self.precision, self.shape)
        return Latency(ms, "predicted (roofline)")


@dataclass
class Flops:
    """Latency proportional to MACs, through one measured anchor candidate."""

    anchor: Student
    anchor_ms: float
    shape: tuple[int, int]
    name: str = "flops"

    def predict(self, candidate: Student) -> Latency:
        scale = self.anchor_ms / cost(self.anchor, *self.shape).macs
        return Latency(cost(candidate, *self.shape).macs * scale, "predicted (FLOPs)")


def export_file(model: Any, inputs: list[Any], precision: str, path: Path) -> tuple[Path, Any]:
    """`model` as the final model is exported (INT8: NNCF PTQ calibrated on `inputs`, Q/DQ ONNX
    with int8 weights, edgekd's exact rewrite; FP32: plain ONNX); the file and the PyTorch model
    it must agree with."""
    import torch

    from edgekd.export.onnx import export_deployable
    from edgekd.quant import nncf_qat

    model = model.cpu().eval()
    example = torch.zeros(1, *inputs[0].shape[1:])
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if precision == "int8":
            model = nncf_qat.quantize_inputs(model, inputs, torch.device("cpu"))
        _, _, model = export_deployable(model, example, path)
    except Exception as exc:
        raise SearchError(f"does not export: {str(exc)[:300]}") from exc
    return path, model


def _fails(check: dict[str, Any], gate: Any) -> bool:
    return bool(
        check["max_abs_diff"] > gate.max_abs_diff or check["top1_agreement"] < gate.top1_agreement
    )


class Measured:
    """Export the candidate and time it on the target (see the module docstring)."""

    name = "measured"

    def __init__(
        self,
        target: Path,
        target_name: str,
        runtime: str,
        precision: str,
        protocol: MeasureProtocol,
        splits: Splits,
        workdir: Path,
        cache: Path,
        repeats: int = 1,
    ) -> None:
        self.target, self.target_name = target, target_name
        self.runtime, self.precision, self.protocol = runtime, precision, protocol
        self.splits, self.workdir, self.cache = splits, workdir, cache
        self.repeats = repeats
        self.last_parity: dict[str, Any] = {}

    def _cache_key(self, candidate: Student) -> str:
        from edgekd.runners.base import cpu_name

        key: list[Any] = [
            candidate.key(),
            self.target_name,
            self.runtime,
            self.precision,
            cpu_name(),
        ]
        protocol = [self.protocol.warmup, self.protocol.iterations, self.protocol.min_seconds]
        if self.repeats > 1 or protocol != [10, 100, 0.5]:  # the default keeps older keys
            key.append([*protocol, self.repeats])
        return json.dumps(key)

    def _cached(self) -> dict[str, Any]:
        return dict(read_json(self.cache)) if self.cache.exists() else {}

    def predict(self, candidate: Student) -> Latency:
        table, key = self._cached(), self._cache_key(candidate)
        cached = table.get(key)
        if cached is None:
            cached = table[key] = self._measure(candidate)
            write_json(self.cache, table)
        return Latency(cached["ms"], cached["source"], cached.get("ci95_ms"))

    def export(self, candidate: Student, folder: Path, trained: Any = None) -> Path:
        """The candidate as the file the target's runner takes. Untrained (`trained` None), its
        BatchNorm statistics come from real images, so quantizer ranges and saturating clamps
        are realistic, and the parity gate checks the logit gap only (an untrained network's
        near-uniform logits flip top-1 at random); a trained model must also keep top-1."""
        import torch

        from edgekd.data.datasets import batches, normalize, sample
        from edgekd.export.onnx import parity
        from edgekd.models import zoo
        from edgekd.models.specs import ModelSpec
        from edgekd.stages.export import ExportConfig

        images = sample(self.splits.train, 512, 0)
        model = trained
        if model is None:
            torch.manual_seed(0)
            try:
                model = zoo.build(
                    ModelSpec.model_validate(candidate.model()),
                    self.splits.input_shape[0],
                    len(self.splits.classes),
                )
            except Exception as exc:
                raise SearchError(f"does not build: {exc}") from exc
            model.train()
            with torch.no_grad():
                for batch in batches(images, self.splits, 128):
                    model(batch.images)
        inputs = [b.images for b in batches(images, self.splits, 128)]
        check_images = normalize(self.splits.val.images[:PARITY_IMAGES], self.splits)
        gates = ExportConfig().tolerance
        key = candidate.key()
        if trained is not None and self.precision != "fp32":
            # the architecture must export exactly; INT8 after PTQ of a proxy is not the final
            # model (the export stage gates the QAT-trained one), so it is measured, not gated
            fp32, _ = export_file(model, inputs, "fp32", folder / f"{key}_fp32.onnx")
            check = parity(fp32, model, check_images)
            if _fails(check, gates["fp32"]):
                raise SearchError(f"its FP32 export fails the parity gate against PyTorch: {check}")
        path, exported = export_file(
            model, inputs, self.precision, folder / f"{key}_{self.precision}.onnx"
        )
        check = parity(path, exported, check_images)
        self.last_parity = check
        gate = gates[self.precision]
        if (trained is None and check["max_abs_diff"] > gate.max_abs_diff) or (
            trained is not None and self.precision == "fp32" and _fails(check, gate)
        ):
            raise SearchError(f"fails its parity check against PyTorch: {check}")
        return path

    def run(self, path: Path) -> dict[str, Any]:
        """Time one file on the target with its runner (the bench protocol, a fresh process,
        outputs checked against onnxruntime first); the row, or SearchError with the reason."""
        from edgekd.bench import bench_file

        result = bench_file(
            path,
            [self.target],
            [self.runtime],
            [self.precision],
            [1],
            self.protocol,
            None,
            self.workdir / "engines",
        )
        row: dict[str, Any] = result["rows"][0]
        if row["status"] != "ok":
            raise SearchError(f"does not run on {self.runtime}: {row.get('reason', row)}")
        if not row["check"]["passed"]:
            raise SearchError(f"{self.runtime} disagrees with onnxruntime: {row['check']}")
        return row

    def _measure(self, candidate: Student) -> dict[str, Any]:
        folder = self.workdir / "candidates"
        path = self.export(candidate, folder)
        rows = [self.run(path) for _ in range(self.repeats)]
        for file in folder.glob(f"{candidate.key()}_*"):
            file.unlink()  # not kept: the winner is exported again once it is trained
        medians = [r["median_ms"] for r in rows]
        out = {
            "ms": statistics.median(medians),
            "ci95_ms": rows[0].get("ci95_ms") if len(rows) == 1 else None,
            "source": f"measured ({self.runtime}, {self.target_name})",
        }
        return out | ({"repeats_ms": medians} if len(rows) > 1 else {})
