"""Times PyTorch models inside a stage as the final model ships: each exported the way the export
stage exports it, all timed on one target and runtime in fresh processes, interleaved over
rounds, so that a stage can decide by measured latency (the INT8 ladder's rungs, a pruning step
that must get faster) and say how sure the difference is.

A difference counts only beyond the noise: each row's relative uncertainty is the larger of its
median's 95 % interval (order statistics, runners/base.py `median_interval`: a busy machine's
tail of slow calls inflates the interval of the mean, 74 % on a probe here, not the median's)
and half the spread of its rounds' medians (the drift between processes, the larger part on a
shared machine: docs/ci.md). Models timed together are compared round by round (`speedup`),
which cancels a machine that is busier in one minute than the next. One round measures no
drift: decide with rounds ≥ 2 (the default is 3).
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from edgekd.config.schema import PathStr, Strict
from edgekd.errors import EdgeKDError

if TYPE_CHECKING:
    from torch import nn

    from edgekd.config.schema import TargetProfile
    from edgekd.data.datasets import Splits
    from edgekd.plan import Plan

# Validation images each file's outputs are checked against PyTorch on before it is timed, as
# many as the export stage's parity check: at 256, the flagship's PTQ rung agreed on 98.8 % (3
# images) and went untimed, while its exported file agreed on 99.5 % of 1,000 (a62cc88, seed 0).
CHECK_IMAGES = 1000


class TimingConfig(Strict):
    """Where and how a stage times the models it compares."""

    target: PathStr | None = Field(
        None,
        description="Target profile the models are timed on; null: the first of the pipeline's "
        "`targets:` that runs on this machine (local-cpu, or local-gpu with CUDA).",
    )
    runtime: str | None = Field(
        None, description="Runtime timed; null: the first one the target lists."
    )
    rounds: int = Field(
        3, ge=1, description="Times each model is timed, each in a fresh process, interleaved."
    )
    warmup: int = Field(20, ge=0, description="Untimed runs before each timing.")
    iterations: int = Field(200, gt=0, description="Least timed runs per timing.")
    min_seconds: float = Field(1.0, ge=0, description="Least seconds of timed runs per timing.")
    threads: int | None = Field(
        1,
        ge=1,
        description="CPU threads of the timed runtime; null: the target's `threads`, else all "
        "cores. One thread by default: a small model's multi-threaded latency on a shared CPU "
        "moves with the neighbours' load (docs/compression.md), which decides nothing.",
    )


@dataclass(frozen=True)
class Timed:
    """One model's measured latency, or why it has none."""

    label: str
    median_ms: float | None
    noise: float  # relative uncertainty of the median (see the module docstring)
    source: str  # "onnxruntime on cpu-x86, 3 rounds"
    reason: str | None = None
    rounds: tuple[float, ...] = ()  # each round's median, in the order the rounds ran
    within: float = 0.0  # the median's own 95 % interval, relative

    def pooled(self, more: Timed) -> Timed:
        """This model timed again (`more`, the same model on the same target): one Timed over
        both timings' rounds."""
        if more.median_ms is None:
            return self
        if self.median_ms is None:
            return more
        rounds = (self.rounds or (self.median_ms,)) + (more.rounds or (more.median_ms,))
        median = statistics.median(rounds)
        within = max(self.within, more.within)
        source = re.sub(r"\d+ rounds?$", f"{len(rounds)} rounds", self.source)
        noise = max(within, spread(list(rounds)) / median)
        return Timed(self.label, median, noise, source, None, rounds, within)

    def to_json(self) -> dict[str, Any]:
        return {
            "median_ms": None if self.median_ms is None else round(self.median_ms, 4),
            "noise_pct": round(100 * self.noise, 2),
            "round_medians_ms": [round(r, 4) for r in self.rounds],
            "source": self.source,
            **({"reason": self.reason} if self.reason else {}),
        }


def paired_ratio(num: list[float], den: list[float], within: float) -> tuple[float, float] | None:
    """Median over rounds of num_i / den_i for two models timed together round by round, and
    its relative uncertainty: half the ratios' spread, or `within` (the two medians' own
    intervals, relative, added) when larger. None unless both have the same ≥ 2 rounds.

    Each round times every model back to back, so a minute in which the machine was busy slows
    both and leaves their ratio (seen here: a reference at 1.07 ms in one round and 1.63 ms in
    the next, while the pruned model's ratio to it held)."""
    if len(num) < 2 or len(num) != len(den):
        return None
    ratios = [a / b for a, b in zip(num, den, strict=True)]
    ratio = statistics.median(ratios)
    return ratio, max(spread(ratios) / ratio, within)


def spread(values: list[float]) -> float:
    """How far repeated measurements scatter: half their range for up to four rounds; from
    five on, their median absolute deviation × 1.4826 (one standard deviation for normal
    scatter, where half the range of three is 0.85 of one), which one or two busy minutes that
    slowed a single model cannot inflate. Seen at 537a60e: one slow round in each of two models'
    three (0.0851, 0.0850, 0.1284 ms; 0.0688, 0.1082, 0.0662 ms) made the half range of their
    paired ratios ±47 % against a 19 % gain."""
    if len(values) < 5:
        return (max(values) - min(values)) / 2
    middle = statistics.median(values)
    return 1.4826 * statistics.median(abs(v - middle) for v in values)


def row_ratio(num: dict[str, Any], den: dict[str, Any]) -> tuple[float, float]:
    """`paired_ratio` of two latency rows of one run (bench rows with `round_medians_ms`);
    rows timed once fall back to the ratio of medians and their 95 % intervals of the mean,
    combined in quadrature."""
    within = sum((r.get("median_ci95_ms") or 0.0) / r["median_ms"] for r in (num, den))
    paired = paired_ratio(
        list(num.get("round_medians_ms") or []), list(den.get("round_medians_ms") or []), within
    )
    if paired is not None:
        return paired
    noise = math.hypot(*((r.get("ci95_ms") or 0.0) / r["median_ms"] for r in (num, den)))
    return num["median_ms"] / den["median_ms"], noise


def speedup(before: Timed, after: Timed) -> tuple[float, float]:
    """(relative gain of `after` over `before`, its uncertainty); gain > uncertainty means
    measurably faster. Timed together over rounds, they are compared round by round
    (`paired_ratio`); otherwise their two intervals must not overlap."""
    if before.median_ms is None or after.median_ms is None:
        return 0.0, math.inf
    paired = paired_ratio(list(after.rounds), list(before.rounds), before.within + after.within)
    if paired is not None:
        return 1 - paired[0], paired[1]
    gain = (before.median_ms - after.median_ms) / before.median_ms
    return gain, before.noise + after.noise * after.median_ms / before.median_ms


class NoTarget(EdgeKDError):
    """No target this machine can time on; the message says why."""


def choose_target(plan: Plan, cfg: TimingConfig, loc: tuple[Any, ...]) -> tuple[Path, str]:
    """The target profile and runtime to time on, or NoTarget with the reason."""
    from edgekd.bench import load_target
    from edgekd.runners.targets import unreachable

    candidates = [cfg.target] if cfg.target is not None else list(plan.config.targets)
    why = []
    for value in candidates:
        path = plan.resolve(value)
        if not path.exists():
            raise plan.doc.error((*loc, "target"), f"target profile {plan.not_found(value)}")
        target = load_target(path)
        reason = "a remote target is not timed inside a stage"
        if target.kind != "remote-ssh":
            reason = unreachable(target, str(path), probe=False) or ""
        if not reason:
            return path, _runtime(plan, cfg, target, path, loc)
        why.append(f"{value}: {reason}")
    raise NoTarget(
        "no target to time on ("
        + ("; ".join(why) or "the pipeline lists no `targets:`")
        + "); set `timing: {target: targets/cpu-x86.yaml}`"
    )


def _runtime(
    plan: Plan, cfg: TimingConfig, target: TargetProfile, path: Path, loc: tuple[Any, ...]
) -> str:
    if cfg.runtime is None:
        return target.runtimes[0]
    if cfg.runtime not in target.runtimes:
        raise plan.doc.error(
            (*loc, "runtime"), f"{path} lists runtimes {target.runtimes}, not {cfg.runtime}"
        )
    return cfg.runtime


def time_models(
    plan: Plan,
    cfg: TimingConfig,
    loc: tuple[Any, ...],
    models: dict[str, nn.Module],
    splits: Splits,
    workdir: Path,
    gate: dict[str, float] | None = None,
) -> dict[str, Timed]:
    """Export every model in `models` (NNCF-quantized ones as INT8 Q/DQ with edgekd's rewrite,
    others as FP32) into `workdir` and time them together on the chosen target; label → Timed.
    Every file is first checked against its PyTorch model on validation images (top-1
    agreement per precision: `gate`, else the bench stage's defaults)."""
    import torch

    from edgekd.bench import load_target, restrict
    from edgekd.data.datasets import normalize
    from edgekd.export.onnx import export_deployable, torch_logits
    from edgekd.runners.base import DEFAULT_GATE, MeasureProtocol, default_threads
    from edgekd.runners.targets import BenchModel, BenchPlan, Reference, measure_target

    path, runtime = choose_target(plan, cfg, loc)
    target = restrict(load_target(path), str(path), "runtimes", [runtime])
    workdir.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, *splits.input_shape)
    images = normalize(splits.val.images[:CHECK_IMAGES], splits)
    bench_models, references = [], {}
    for label, model in models.items():
        file, qdq, stripped = export_deployable(model, example, workdir / f"{label}.onnx")
        precision = "int8" if qdq is not None else "fp32"
        bench_models.append(BenchModel(label, file, precision, tensorrt_path=qdq))
        references[label] = Reference(torch_logits(stripped, images), "torch")
    protocol = MeasureProtocol(
        warmup=cfg.warmup,
        iterations=cfg.iterations,
        min_seconds=cfg.min_seconds,
        threads=cfg.threads,
    )
    bench = BenchPlan(
        protocol=protocol,
        batches=[1],
        gate=dict(gate or DEFAULT_GATE),
        workdir=workdir,
        rounds=cfg.rounds,
    )
    rows = measure_target(target, str(path), bench_models, bench, images.numpy(), references)
    threads = cfg.threads or target.threads or default_threads()
    source = (
        f"{runtime} on {target.name}, {threads} thread{'s' if threads > 1 else ''}, "
        f"{cfg.rounds} round{'s' if cfg.rounds > 1 else ''}"
    )
    out = {}
    for label in models:
        row = next((r for r in rows if r["model"] == label and r["status"] == "ok"), None)
        if row is None or not row.get("check", {}).get("passed", True):
            failed = next((r for r in rows if r["model"] == label), {})
            reason = failed.get("reason") or f"output check failed: {failed.get('check')}"
            out[label] = Timed(label, None, math.inf, source, str(reason))
            continue
        rounds = tuple(row.get("round_medians_ms", [row["median_ms"]]))
        within = (row.get("median_ci95_ms") or 0.0) / row["median_ms"]
        out[label] = Timed(label, row["median_ms"], _noise(row), source, None, rounds, within)
    return out


def _noise(row: dict[str, Any]) -> float:
    median = row["median_ms"]
    rounds = row.get("round_medians_ms", [median])
    half_spread = (max(rounds) - min(rounds)) / 2
    within = row.get("median_ci95_ms", row.get("ci95_ms")) or 0.0
    return max(within, half_spread) / median if median else math.inf


def check_target(plan: Plan, cfg: TimingConfig, loc: tuple[Any, ...]) -> None:
    """Validate-time check that a named target profile exists (no hardware is probed)."""
    if cfg.target is not None and not plan.resolve(cfg.target).exists():
        raise plan.doc.error((*loc, "target"), f"target profile {plan.not_found(cfg.target)}")
