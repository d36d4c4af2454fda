"""Measures models on a target profile: every allowed runtime × precision, or a skipped row
that says why a target cannot be reached. One failure never stops the other rows."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.config.schema import TargetProfile
from edgekd.runners.base import RUNNERS, MeasureProtocol, Runner, cpu_name, default_threads
from edgekd.runners.measure import MeasureError, measure_in_subprocess

# Importing a runner module registers it; the backend library itself loads on first use.
RUNNER_MODULES = {
    "onnxruntime": "edgekd.runners.onnxruntime",
    "openvino": "edgekd.runners.openvino",
}


@dataclass(frozen=True)
class BenchModel:
    role: str  # teacher, student_fp32, final
    path: Path
    precision: str


def get_runner(name: str) -> Runner | None:
    module = RUNNER_MODULES.get(name)
    if module is None:
        return None
    importlib.import_module(module)
    return RUNNERS.get(name)()


def unreachable(target: TargetProfile, source: str) -> str | None:
    """Why `target` cannot be measured from this machine, or None when it can."""
    if target.kind == "remote-ssh":
        if target.connection is None or target.connection.host is None:
            return (
                f"no device configured: set connection.host (and user, key_file, "
                f"known_hosts) in {source}"
            )
        return "the remote SSH runner is not implemented yet (issue #4)"
    if target.kind == "local-gpu":
        import torch

        if not torch.cuda.is_available():
            return "no NVIDIA GPU with CUDA on this machine"
        if "tensorrt" in target.runtimes:
            try:
                importlib.import_module("tensorrt")
            except ImportError:
                return "TensorRT is not installed (pip install tensorrt)"
        return "GPU runners are not implemented yet (issue #4)"
    return None


def measure_target(
    target: TargetProfile,
    source: str,
    models: list[BenchModel],
    protocol: MeasureProtocol,
    images: np.ndarray,
    reference: dict[str, np.ndarray],
) -> list[dict[str, Any]]:
    """Rows of one target: latency per model × runtime, or skipped/failed with the reason.

    `images` are real, preprocessed test images; `reference` holds each model's onnxruntime
    logits on them (already checked against PyTorch by the export stage), which every runner's
    outputs are compared with before it is timed.
    """
    rows: list[dict[str, Any]] = []
    base = {"target": target.name, "kind": target.kind}
    reason = unreachable(target, source)
    for model in models:
        for runtime in target.runtimes:
            row = {
                **base,
                "model": model.role,
                "precision": model.precision,
                "runtime": runtime,
                "batch": protocol.batch,
            }
            if reason is not None:
                rows.append({**row, "status": "skipped", "reason": reason})
                continue
            if model.precision not in target.precisions:
                rows.append(
                    {
                        **row,
                        "status": "skipped",
                        "reason": f"{target.name} does not list {model.precision}",
                    }
                )
                continue
            rows.append(
                {
                    **row,
                    **_measure_one(runtime, target, model, protocol, images, reference[model.role]),
                }
            )
    return rows


def _measure_one(
    runtime: str,
    target: TargetProfile,
    model: BenchModel,
    protocol: MeasureProtocol,
    images: np.ndarray,
    reference: np.ndarray,
) -> dict[str, Any]:
    runner = get_runner(runtime)
    if runner is None:
        return {"status": "skipped", "reason": f"no {runtime} runner for {target.kind} yet"}
    missing = runner.available()
    if missing is not None:
        return {"status": "skipped", "reason": missing}
    threads = protocol.threads or target.threads or default_threads()
    try:
        outputs, stats = measure_in_subprocess(runtime, model, threads, protocol, images)
    except MeasureError as exc:  # a broken runtime becomes a row, not a crashed run
        return {"status": "failed", "reason": str(exc)[-500:]}
    return {
        "status": "ok",
        "machine": cpu_name(),
        "top1_agreement": float((outputs.argmax(1) == reference.argmax(1)).mean() * 100),
        "max_abs_diff": float(np.abs(outputs - reference).max()),
        **stats,
    }
