"""Assembles report.json from the run's manifests, export index and latency rows.

The schema is documented in docs/report.md; bump SCHEMA_VERSION on any incompatible change.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from pathlib import Path
from typing import Any

from edgekd import __version__
from edgekd.artifacts import library_versions, read_json, read_manifest
from edgekd.contracts import ModelsIndex, Role
from edgekd.report import search, steps
from edgekd.report.memory import graph_memory
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
    onnx_dir: Path | None = None,
) -> dict[str, Any]:
    """report.json's content. `onnx_dir`: where the exported files are, to read each one's peak
    activation memory from its graph (report/memory.py)."""
    models = [dict(m) for m in onnx_index["models"]]
    for model in models:
        file = onnx_dir / model["file"] if onnx_dir is not None else None
        model["memory"] = graph_memory(file) if file is not None and file.is_file() else None
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
        "pipeline": {
            "name": pipeline_name,
            "file": pipeline_file,
            "yaml": _text(Path(pipeline_file)),
        },
        "source": source_commit(),
        "machine": {
            "cpu": cpu_name(),
            "cores": default_threads(),
            "os": f"{platform.system()} {platform.release()}",
        },
        "versions": library_versions(),
        "stages": stages,
        "models": models,
        "classes": onnx_index.get("classes"),
        "preprocessing": final_preprocessing(models),
        "latency": rows,
        "summary": summarize(models, rows),
        "steps": steps.section(run_dir, stage_dirs),
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


def fastest_per_target(report: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """target → role → `fastest` row of that role there, for every target and role with a
    measured row that passed its check."""
    rows = report["latency"]
    passed = [r for r in rows if r["status"] == "ok" and r.get("check", {}).get("passed", True)]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for target in dict.fromkeys(r["target"] for r in passed):
        roles = dict.fromkeys(r["model"] for r in passed if r["target"] == target)
        out[target] = {
            role: row for role in roles if (row := fastest(rows, role, target)) is not None
        }
    return out


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
            "peak_activation_bytes": (model.get("memory") or {}).get("peak_activation_bytes"),
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


def _text(path: Path) -> str | None:
    """The pipeline YAML exactly as run (None when the file is gone)."""
    try:
        return path.read_text()
    except OSError:
        return None


def source_commit() -> dict[str, Any] | None:
    """edgekd's git commit when it runs from a clone (and whether its code had uncommitted
    changes), else None (an installed package)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if head is None:
        return None
    status = git("status", "--porcelain", "--", "edgekd")
    return {"commit": head, "dirty": bool(status)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def final_preprocessing(models: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What a deployment does to an image before the final model sees it."""
    final = next((m for m in models if m["role"] == Role.FINAL), None)
    return final["preprocessing"] if final else None


def load_inputs(onnx_dir: Path, bench_file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return ModelsIndex.read(onnx_dir).model_dump(mode="json"), read_json(bench_file)
