"""Assembles report.json from the run's manifests, export index and latency rows.

The schema is documented in docs/report.md; bump SCHEMA_VERSION on any incompatible change.
"""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path
from typing import Any

from edgekd import __version__
from edgekd.artifacts import library_versions, read_json, read_manifest
from edgekd.contracts import ModelsIndex, Role
from edgekd.report import search
from edgekd.runners.base import cpu_name, default_threads

SCHEMA_VERSION = 1
STAGE_METRICS = (
    "test_acc",
    "fp32_test_acc",
    "ptq_test_acc",
    "pruned_test_acc",
    "params",
    "params_before",
    "macs",
    "bytes",
    "rows_ok",
    "rows_skipped",
    "rows_failed",
)


def build_report(
    run_dir: Path,
    pipeline_name: str,
    pipeline_file: str,
    stage_dirs: list[tuple[str, str]],
    onnx_index: dict[str, Any],
    bench: dict[str, Any],
) -> dict[str, Any]:
    stages: list[dict[str, Any]] = []
    for name, dirname in stage_dirs:
        manifest = read_manifest(run_dir / dirname) or {}
        metrics = manifest.get("metrics", {})
        stages.append(
            {
                "stage": name,
                "dir": dirname,
                "wall_s": manifest.get("wall_s"),
                "metrics": {k: metrics[k] for k in STAGE_METRICS if k in metrics},
            }
        )
    rows = bench["rows"]
    return {
        "schema_version": SCHEMA_VERSION,
        "edgekd_version": __version__,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "pipeline": {"name": pipeline_name, "file": pipeline_file},
        "machine": {
            "cpu": cpu_name(),
            "cores": default_threads(),
            "os": f"{platform.system()} {platform.release()}",
        },
        "versions": library_versions(),
        "stages": stages,
        "models": onnx_index["models"],
        "preprocessing": final_preprocessing(onnx_index["models"]),
        "latency": rows,
        "summary": summarize(onnx_index["models"], rows),
        "search": search.section(
            run_dir, stage_dirs, lambda target, runtime: fastest(rows, Role.FINAL, target, runtime)
        ),
        "total_wall_s": round(sum(s["wall_s"] or 0 for s in stages), 1),
    }


def fastest(
    rows: list[dict[str, Any]], role: str, target: str | None = None, runtime: str | None = None
) -> dict[str, Any] | None:
    """The lowest-median measured row of `role` that passed its output check (optionally on one
    target / runtime): the row the bench stage marks chosen."""
    ok = [
        r
        for r in rows
        if r["status"] == "ok"
        and r.get("check", {}).get("passed", True)
        and r["model"] == role
        and (target is None or r["target"] == target)
        and (runtime is None or r["runtime"] == runtime)
    ]
    return min(ok, key=lambda r: r["median_ms"]) if ok else None


def summarize(models: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Teacher vs final model: accuracy, size, and latency (onnxruntime and best runtime)."""
    by_role = {m["role"]: m for m in models}
    teacher, final = by_role.get(Role.TEACHER), by_role.get(Role.FINAL)
    out: dict[str, Any] = {}
    if teacher is None or final is None:
        return out
    for role, model in ((Role.TEACHER, teacher), (Role.FINAL, final)):
        ort = fastest(rows, role, runtime="onnxruntime")
        best = fastest(rows, role)
        out[role.value] = {
            "precision": model["precision"],
            "test_acc": model["test_acc"],
            "params": model["params"],
            "macs": model["macs"],
            "bytes": model["bytes"],
            "onnxruntime_median_ms": ort["median_ms"] if ort else None,
            "best": {k: best[k] for k in ("target", "runtime", "precision", "batch", "median_ms")}
            if best
            else None,
        }
    t, f = out["teacher"], out["final"]
    out["ratios"] = {
        "bytes": round(f["bytes"] / t["bytes"], 4),
        "params": round(f["params"] / t["params"], 4),
        "onnxruntime_latency": _ratio(f["onnxruntime_median_ms"], t["onnxruntime_median_ms"]),
        "best_latency_vs_teacher_onnxruntime": _ratio(
            f["best"]["median_ms"] if f["best"] else None, t["onnxruntime_median_ms"]
        ),
    }
    out["accuracy_drop_pp"] = round(t["test_acc"] - f["test_acc"], 2)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def final_preprocessing(models: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What a deployment does to an image before the final model sees it."""
    final = next((m for m in models if m["role"] == Role.FINAL), None)
    return final["preprocessing"] if final else None


def load_inputs(onnx_dir: Path, bench_file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return ModelsIndex.read(onnx_dir).model_dump(mode="json"), read_json(bench_file)
