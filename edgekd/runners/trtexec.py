"""TensorRT on a device through `trtexec`: the build recipe, the timing command, and parsers for
what trtexec prints and writes. The recipe is the same in `edgekd deploy` bundles.

Output formats follow TensorRT's samples/common/sampleReporting.cpp: the performance summary
(`Latency: min = … ms, max = … ms, mean = … ms, median = … ms, percentile(90%) = … ms, …`),
`--exportTimes` (one JSON object per timed inference, with `latencyMs` and `computeMs`) and
`--exportOutput` (`[{"name": …, "dimensions": "500x10", "values": […]}]`).

DLA (the NVDLA cores of Jetson Orin NX and AGX Orin): an engine is built for one core with
`--useDLACore=N`, with `--allowGPUFallback` when the profile allows layers DLA cannot run to go to
the GPU. DLA runs FP16 and INT8 only and has no dynamic shapes: min, opt and max must be equal,
and the engine runs only at the shape it was built for (TensorRT's "DLA Supported Layers and
Restrictions"). The build log says which layers run where (`---------- Layers Running on DLA
----------`, then `[DlaLayer] …` lines; the same for GPU), which each DLA row records: with GPU
fallback, a graph DLA cannot take (explicit Q/DQ INT8 is one, on some TensorRT releases) is
timed on the GPU, and the row says so.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgekd.config.schema import TargetProfile
from edgekd.runners.backends.tensorrt import build_flags

TRTEXEC_FLAGS = {"FP16": "--fp16", "INT8": "--int8"}
DLA_PRECISIONS = ("fp16", "int8")  # TensorRT: "DLA supports only FP16 and INT8"
SUMMARY_LINE = re.compile(
    r"(?:^|\] )(Latency|GPU Compute Time|H2D Latency|D2H Latency|Enqueue Time): (.*)"
)
STAT = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\)) = ([0-9.eE+-]+) ms")
PLACEMENT = re.compile(r"\[(Dla|Gpu)Layer\] ")
BUILD_FACTS = {
    "tensorrt": re.compile(r"TensorRT version: (\S+)"),
    "gpu": re.compile(r"Selected Device: (.+?)\s*$", re.M),
    "compute_capability": re.compile(r"Compute Capability: (\S+)"),
}


def shape(batch: int, input_shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in (batch, *input_shape))


def dla_cores(target: TargetProfile) -> list[int]:
    """The DLA cores that get a row of their own on `target` (its `dla_rows`)."""
    if target.dla_cores == 0 or target.dla_rows == "none":
        return []
    return [0] if target.dla_rows == "first" else list(range(target.dla_cores))


def dla_device(core: int) -> str:
    """How a row or recipe names DLA core `core`."""
    return f"dla{core}"


def build_command(
    trtexec: str,
    onnx: str,
    engine: str,
    precision: str,
    input_name: str,
    input_shape: Sequence[int],
    opt_batch: int,
    max_batch: int,
    timing_cache: str,
    dla_core: int | None = None,
    gpu_fallback: bool = True,
) -> list[str]:
    """trtexec arguments that build `onnx` into `engine` (explicit quantization for Q/DQ INT8:
    the scales come from the file, no calibrator). With `dla_core`, for that DLA core, at the
    static batch `max_batch` (DLA has no dynamic shapes), with GPU fallback if asked."""
    if dla_core is not None and precision not in DLA_PRECISIONS:
        raise ValueError(f"DLA runs FP16 and INT8 only, not {precision}")
    min_batch = 1 if dla_core is None else max_batch
    opt_batch = opt_batch if dla_core is None else max_batch
    return [
        trtexec,
        f"--onnx={onnx}",
        f"--saveEngine={engine}",
        *[TRTEXEC_FLAGS[f] for f in build_flags(precision)],
        *dla_flags(dla_core, gpu_fallback),
        f"--minShapes={input_name}:{shape(min_batch, input_shape)}",
        f"--optShapes={input_name}:{shape(opt_batch, input_shape)}",
        f"--maxShapes={input_name}:{shape(max_batch, input_shape)}",
        f"--timingCacheFile={timing_cache}",
        "--skipInference",
    ]


def dla_flags(dla_core: int | None, gpu_fallback: bool = True) -> list[str]:
    """`--useDLACore=N` (and `--allowGPUFallback`), or nothing for the GPU."""
    if dla_core is None:
        return []
    return [f"--useDLACore={dla_core}", *(["--allowGPUFallback"] if gpu_fallback else [])]


def check_command(
    trtexec: str,
    engine: str,
    input_name: str,
    input_shape: Sequence[int],
    n: int,
    inputs: str,
    out: str,
    dla_core: int | None = None,
) -> list[str]:
    """One inference on `n` real images from a raw float32 file, outputs exported as JSON."""
    return [
        trtexec,
        f"--loadEngine={engine}",
        *dla_flags(dla_core, gpu_fallback=False),  # the core it runs on; fallback is a build flag
        f"--shapes={input_name}:{shape(n, input_shape)}",
        f"--loadInputs={input_name}:{inputs}",
        f"--exportOutput={out}",
        "--iterations=1",
        "--warmUp=0",
        "--duration=0",
    ]


def time_command(
    trtexec: str,
    engine: str,
    input_name: str,
    input_shape: Sequence[int],
    batch: int,
    iterations: int,
    min_seconds: float,
    warmup_ms: int,
    times: str,
    dla_core: int | None = None,
) -> list[str]:
    """The timing run: at least `iterations` runs and `min_seconds`, one sample per inference
    (`--avgRuns=1`), spin-wait for stable timings, every inference exported for statistics."""
    return [
        trtexec,
        f"--loadEngine={engine}",
        *dla_flags(dla_core, gpu_fallback=False),
        f"--shapes={input_name}:{shape(batch, input_shape)}",
        f"--iterations={iterations}",
        f"--duration={max(0, int(min_seconds + 0.999))}",
        f"--warmUp={warmup_ms}",
        "--avgRuns=1",
        "--useSpinWait",
        "--percentile=90,99",
        f"--exportTimes={times}",
    ]


def build_script(commands: Sequence[Sequence[str]]) -> str:
    """A POSIX shell script that runs each command, every argument quoted."""
    lines = [
        "#!/bin/sh",
        "# written by edgekd; runs on the device",
        "set -eu",
        'cd "$(dirname "$0")"',
    ]
    return "\n".join([*lines, *(shlex.join(c) for c in commands)]) + "\n"


def parse_summary(text: str) -> dict[str, dict[str, float]]:
    """{'Latency': {'min': …, 'median': …, 'p90': …, …}, 'GPU Compute Time': {…}, …} from the
    `=== Performance summary ===` block; plus {'Throughput': {'qps': …}} when printed."""
    start = text.rfind("=== Performance summary ===")
    block = text[start:] if start >= 0 else text
    out: dict[str, dict[str, float]] = {}
    for line in block.splitlines():
        match = SUMMARY_LINE.search(line)
        if match:
            stats: dict[str, float] = {}
            for name, pct, value in STAT.findall(match.group(2)):
                stats[f"p{pct.removesuffix('.0')}" if pct else name] = float(value)
            out[match.group(1)] = stats
        elif "Throughput:" in line:
            qps = re.search(r"Throughput: ([0-9.eE+-]+) qps", line)
            if qps:
                out["Throughput"] = {"qps": float(qps.group(1))}
    if "Latency" not in out:
        raise ValueError("no `Latency: … median = … ms` line in trtexec's output")
    return out


def parse_build_facts(text: str) -> dict[str, str]:
    """TensorRT version, GPU name and compute capability as trtexec logs them."""
    facts = {}
    for key, pattern in BUILD_FACTS.items():
        match = pattern.search(text)
        if match:
            facts[key] = match.group(1).strip()
    return facts


def parse_layer_placement(text: str) -> dict[str, int] | None:
    """How many layers the last build in `text` put on DLA and on the GPU (`[DlaLayer]` /
    `[GpuLayer]` lines after "Layers Running on DLA"), or None when the log has no such
    section. A recipe that builds several engines builds the timed one last."""
    start = text.rfind("Layers Running on DLA")
    if start < 0:
        return None
    found = PLACEMENT.findall(text[start:])
    return {"dla": found.count("Dla"), "gpu": found.count("Gpu")}


def parse_times(text: str) -> tuple[list[float], list[float]]:
    """(host latency ms, GPU compute ms) per inference from an `--exportTimes` file."""
    entries = [e for e in json.loads(text) if isinstance(e, dict) and "latencyMs" in e]
    return [float(e["latencyMs"]) for e in entries], [
        float(e.get("computeMs", "nan")) for e in entries
    ]


def parse_outputs(text: str, name: str | None = None) -> np.ndarray:
    """The output tensor `name` (else the first) from an `--exportOutput` file."""
    tensors = json.loads(text)
    tensor: dict[str, Any] = next((t for t in tensors if name in (None, t["name"])), tensors[0])
    dims = [int(d) for d in str(tensor["dimensions"]).split("x")]
    return np.asarray(tensor["values"], dtype=np.float32).reshape(dims)
