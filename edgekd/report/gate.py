"""The regression gate behind `edgekd check`: compares a report with limits and a baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgekd.errors import EdgeKDError
from edgekd.report.build import SCHEMA_VERSION


@dataclass(frozen=True)
class Limits:
    min_acc: float | None = None  # final test accuracy, %
    max_acc_drop: float | None = None  # teacher − final, percentage points
    max_params: int | None = None
    max_bytes_ratio: float | None = None  # final ONNX bytes ÷ teacher's
    max_latency_ms: float | None = None  # final model's fastest measured median
    max_acc_regression: float | None = None  # points lost against the baseline report
    max_latency_regression: float | None = None  # ratio to the baseline's latency, e.g. 1.1


def check(
    report: dict[str, Any], limits: Limits, baseline: dict[str, Any] | None = None
) -> list[tuple[str, bool, str]]:
    """(gate, passed, detail) for every limit that is set."""
    if report.get("schema_version") != SCHEMA_VERSION:
        raise EdgeKDError(
            f"report schema_version {report.get('schema_version')} is not "
            f"{SCHEMA_VERSION}; rerun the pipeline with this edgekd"
        )
    summary = report.get("summary") or {}
    if not summary:
        raise EdgeKDError("the report has no teacher/final summary (no export stage?)")
    final = summary["final"]
    latency = final["best"]["median_ms"] if final.get("best") else None
    results: list[tuple[str, bool, str]] = []

    def gate(name: str, limit: float | None, value: float | None, upper: bool) -> None:
        if limit is None:
            return
        if value is None:
            results.append((name, False, "not measured"))
            return
        ok = value <= limit if upper else value >= limit
        results.append((name, ok, f"{value:g} {'≤' if upper else '≥'} {limit:g}"))

    gate("final test accuracy %", limits.min_acc, final["test_acc"], upper=False)
    gate(
        "accuracy drop vs teacher (points)",
        limits.max_acc_drop,
        summary["accuracy_drop_pp"],
        upper=True,
    )
    gate("final parameters", limits.max_params, final["params"], upper=True)
    gate(
        "bytes ratio final/teacher", limits.max_bytes_ratio, summary["ratios"]["bytes"], upper=True
    )
    gate("final latency ms (fastest runtime)", limits.max_latency_ms, latency, upper=True)
    if baseline is not None:
        base_final = baseline["summary"]["final"]
        gate(
            "accuracy regression vs baseline (points)",
            limits.max_acc_regression,
            round(base_final["test_acc"] - final["test_acc"], 2),
            upper=True,
        )
        base_latency = base_final["best"]["median_ms"] if base_final.get("best") else None
        ratio = latency / base_latency if latency and base_latency else None
        gate("latency vs baseline (ratio)", limits.max_latency_regression, ratio, upper=True)
    return results
