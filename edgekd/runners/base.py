"""The Runner protocol and registry, the measurement protocol (its defaults live here and only
here) and the latency statistics every runner returns.

Runners are one file each in `edgekd/runners/backends/`; `RUNNERS` imports that folder on first
use. A runner declares what it takes, where it runs and how it is measured on a remote device,
and `runners/targets.py` asks it instead of testing names."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from edgekd.registry import Registry

# Least top-1 agreement (%) with the reference for a row to pass (and be chosen). FP32 differs
# from PyTorch only by float reordering; FP16 and INT8 may flip the rare image whose top two
# logits are close (STYLE.md: INT8 top-1 agrees with FP32 on ≥ 99 % of real test images).
DEFAULT_GATE = {"fp32": 99.5, "fp16": 99.0, "int8": 99.0}

# What a runner takes: the ONNX file as exported for CPU runtimes (FP32, or INT8 after the exact
# Q/DQ rewrite), NNCF's Q/DQ file as exported (TensorRT folds and fuses Q/DQ itself), or the
# edgekd model folder (model.json + safetensors) a stage saved.
Takes = Literal["onnx", "onnx_qdq", "model_dir"]
# How a remote device measures it: edgekd's own entry point (`python -m
# edgekd.runners.measure`, edgekd installed there) or trtexec (engines built on the device).
Remote = Literal["edgekd", "trtexec"]


@dataclass(frozen=True)
class MeasureProtocol:
    """Warm-up, then timed runs until both `iterations` and `min_seconds` are reached. These
    defaults are the bench stage's and `edgekd bench`'s."""

    warmup: int = 20
    iterations: int = 200
    min_seconds: float = 1.0
    batch: int = 1
    threads: int | None = None


@dataclass(frozen=True)
class Job:
    """One model as one runner should run it."""

    model: Path  # ONNX file; for the torch runner, a model folder (model.json + safetensors)
    precision: str  # the precision it runs at: fp16 is built from an fp32 file by TensorRT
    threads: int
    device: str = "cpu"  # cpu | cuda
    workdir: Path | None = None  # where a runner may cache built engines
    max_batch: int = 1  # largest batch the session must accept (checks run in batches)
    dla_core: int | None = None  # a DLA core of the device instead of its GPU (trtexec only)


@dataclass
class LatencyStats:
    runtime: str
    device: str
    precision: str
    batch: int
    threads: int
    warmup: int
    iterations: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    ci95_ms: float  # half-width of the 95 % interval of the mean
    copies_included: bool  # whether host↔device copies are inside the timed region
    # Half-width of the distribution-free 95 % interval of the median (`median_interval`);
    # unlike ci95_ms it is not inflated by a heavy tail of slow calls on a busy machine.
    median_ci95_ms: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # runner-specific facts (engine, flags)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Runner(Protocol):
    name: ClassVar[str]
    takes: ClassVar[Takes]
    devices: ClassVar[tuple[str, ...]]  # where it runs here: cpu, cuda
    remote: ClassVar[Remote]
    why_not: ClassVar[str]  # appended when it times no precision of a file

    def available(self, device: str) -> str | None:
        """None when usable on `device` here, else the reason (with the install command)."""

    def precisions(self, file_precision: str) -> list[str]:
        """The precisions this runner can run a model file of `file_precision` at."""

    def prepare(self, job: Job) -> Any: ...

    def infer(self, session: Any, inputs: np.ndarray) -> np.ndarray: ...

    def measure(
        self, session: Any, protocol: MeasureProtocol, inputs: np.ndarray
    ) -> LatencyStats: ...


RUNNERS: Registry[type[Runner]] = Registry(
    "runner", package="edgekd.runners.backends", name_attr="name"
)
register = RUNNERS.register  # @register("name") on a runner class; the name is written once


def get_runner(name: str) -> Runner:
    """A fresh instance of the runner registered as `name` (did-you-mean when unknown)."""
    return RUNNERS.get(name)()


def missing(module: str, install: str) -> str | None:
    """None when `module` imports, else the reason with the command that installs it."""
    try:
        __import__(module)
    except ImportError:
        return f"{module} is not installed: {install}"
    return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pin_threads(threads: int) -> list[int]:
    """Restrict this process to `threads` CPUs (the first ones it may use) and return them, so
    that a run with 2 threads is not spread over 16 cores by the scheduler."""
    if not hasattr(os, "sched_setaffinity"):
        return []
    allowed = sorted(os.sched_getaffinity(0))
    cpus = allowed[: max(1, threads)]
    os.sched_setaffinity(0, cpus)
    return cpus


def batch_of(images: np.ndarray, batch: int) -> np.ndarray:
    """`batch` real images (repeated when fewer are given), contiguous float32."""
    reps = -(-batch // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch], dtype=np.float32)


def in_chunks(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, size: int) -> np.ndarray:
    """`run` over `images` in chunks of at most `size` (sessions built for a bounded batch)."""
    return np.concatenate([run(images[i : i + size]) for i in range(0, len(images), size)])


def onnx_input(path: Path) -> tuple[str, list[int]]:
    """The first graph input's name and dimensions (0 where a dimension is symbolic)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    first = next(i for i in graph.input if i.name not in initializers)
    return first.name, [d.dim_value for d in first.type.tensor_type.shape.dim]


def time_calls(call: Callable[[], object], protocol: MeasureProtocol) -> list[float]:
    """Per-call wall times in ms: `warmup` untimed calls, then at least `iterations` timed calls
    and at least `min_seconds` of them."""
    for _ in range(protocol.warmup):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < protocol.iterations or time.perf_counter() - start < protocol.min_seconds:
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def job_stats(
    times: list[float],
    runtime: str,
    job: Job,
    protocol: MeasureProtocol,
    batch: int,
    copies_included: bool,
    versions: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> LatencyStats:
    """`summarize` for a runner's timed calls of `job` (the fields every local runner fills)."""
    return summarize(
        times,
        runtime=runtime,
        device=job.device,
        precision=job.precision,
        batch=batch,
        threads=job.threads,
        warmup=protocol.warmup,
        copies_included=copies_included,
        versions=versions,
        extra=extra or {},
    )


def median_interval(times: list[float]) -> float:
    """Half-width of the 95 % interval of the median from order statistics (no assumption on
    the distribution): the sorted times at ranks n/2 ± 0.98·√n (Conover, Practical
    Nonparametric Statistics, 3rd ed., §3.2)."""
    n = len(times)
    if n < 3:
        return 0.0
    ordered = sorted(times)
    half = 0.98 * n**0.5
    lo = ordered[max(0, int(np.floor(n / 2 - half)))]
    hi = ordered[min(n - 1, int(np.ceil(n / 2 + half)))]
    return float(hi - lo) / 2


def summarize(times: list[float], **fields: Any) -> LatencyStats:
    arr = np.asarray(times)
    sem = statistics.stdev(times) / len(times) ** 0.5 if len(times) > 1 else 0.0
    return LatencyStats(
        median_ci95_ms=median_interval(times),
        median_ms=float(np.median(arr)),
        p90_ms=float(np.percentile(arr, 90)),
        p99_ms=float(np.percentile(arr, 99)),
        mean_ms=float(arr.mean()),
        ci95_ms=1.96 * sem,
        iterations=len(times),
        **fields,
    )
