"""TensorRT on a device through `trtexec`: the build recipe, the timing command, and parsers for
what trtexec prints and writes. The recipe is the same in `edgekd deploy` bundles.

Output formats follow TensorRT's samples/common/sampleReporting.cpp: the performance summary
(`Latency: min = … ms, max = … ms, mean = … ms, median = … ms, percentile(90%) = … ms, …`),
`--exportTimes` (one JSON object per timed inference, with `latencyMs` and `computeMs`) and
`--exportOutput` (`[{"name": …, "dimensions": "500x10", "values": […]}]`).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgekd.runners.backends.tensorrt import build_flags

TRTEXEC_FLAGS = {"FP16": "--fp16", "INT8": "--int8"}
SUMMARY_LINE = re.compile(
    r"(?:^|\] )(Latency|GPU Compute Time|H2D Latency|D2H Latency|Enqueue Time): (.*)"
)
STAT = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\)) = ([0-9.eE+-]+) ms")
BUILD_FACTS = {
    "tensorrt": re.compile(r"TensorRT version: (\S+)"),
    "gpu": re.compile(r"Selected Device: (.+?)\s*$", re.M),
    "compute_capability": re.compile(r"Compute Capability: (\S+)"),
}


def shape(batch: int, input_shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in (batch, *input_shape))


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
) -> list[str]:
    """trtexec arguments that build `onnx` into `engine` (explicit quantization for Q/DQ INT8:
    the scales come from the file, no calibrator)."""
    return [
        trtexec,
        f"--onnx={onnx}",
        f"--saveEngine={engine}",
        *[TRTEXEC_FLAGS[f] for f in build_flags(precision)],
        f"--minShapes={input_name}:{shape(1, input_shape)}",
        f"--optShapes={input_name}:{shape(opt_batch, input_shape)}",
        f"--maxShapes={input_name}:{shape(max_batch, input_shape)}",
        f"--timingCacheFile={timing_cache}",
        "--skipInference",
    ]


def check_command(
    trtexec: str,
    engine: str,
    input_name: str,
    input_shape: Sequence[int],
    n: int,
    inputs: str,
    out: str,
) -> list[str]:
    """One inference on `n` real images from a raw float32 file, outputs exported as JSON."""
    return [
        trtexec,
        f"--loadEngine={engine}",
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
) -> list[str]:
    """The timing run: at least `iterations` runs and `min_seconds`, one sample per inference
    (`--avgRuns=1`), spin-wait for stable timings, every inference exported for statistics."""
    return [
        trtexec,
        f"--loadEngine={engine}",
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
