"""The Runner protocol, the measurement protocol and the latency statistics every runner returns."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekd.registry import Registry


@dataclass(frozen=True)
class MeasureProtocol:
    """Warm-up, then timed runs until both `iterations` and `min_seconds` are reached."""

    warmup: int = 20
    iterations: int = 200
    min_seconds: float = 1.0
    batch: int = 1
    threads: int | None = None


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
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Runner(Protocol):
    name: str

    def available(self) -> str | None:
        """None when usable here, else the reason it is not (with the install command)."""

    def prepare(self, model: Path, threads: int) -> Any: ...

    def infer(self, session: Any, inputs: np.ndarray) -> np.ndarray: ...

    def measure(
        self, session: Any, protocol: MeasureProtocol, inputs: np.ndarray, precision: str
    ) -> LatencyStats: ...


RUNNERS: Registry[Callable[[], Runner]] = Registry("runner")


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


def summarize(times: list[float], **fields: Any) -> LatencyStats:
    arr = np.asarray(times)
    sem = statistics.stdev(times) / len(times) ** 0.5 if len(times) > 1 else 0.0
    return LatencyStats(
        median_ms=float(np.median(arr)),
        p90_ms=float(np.percentile(arr, 90)),
        p99_ms=float(np.percentile(arr, 99)),
        mean_ms=float(arr.mean()),
        ci95_ms=1.96 * sem,
        iterations=len(times),
        **fields,
    )
