"""Benchmark of the README's main job over 3 seeds: what each stage buys, and what KD adds.

Runs `edgekd run pipelines/mobilenet_jetson.yaml` once per seed (timed end to end, as a user
would; the seed changes training only: the pipeline fixes `data.split_seed`), then the same
pipeline with the distillation terms removed (plain cross-entropy, same budget) per seed, and
writes docs/benchmarks/flagship.md from their report.json files: teacher → KD student → pruned →
INT8, each with test accuracy, latency and bytes as mean ± std over the seeds, and the goals of
issue #12. Numbers are measured, never edited; each run's numbers go into results.json beside
the runs, so an interrupted benchmark resumes and a re-render reruns nothing.

    python benchmarks/flagship.py [--seeds 0 1 2] [--skip-nokd] [--baseline-wall-s S] [--out runs]

`--baseline-wall-s`: the wall time of the previous default pipeline, measured in the same
session on the same machine (the goal is not to be slower; machines here differ by 2×).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from provenance import commit  # benchmarks/provenance.py

ROOT = Path(__file__).resolve().parents[1]
FLAGSHIP = ROOT / "pipelines" / "mobilenet_jetson.yaml"
GOALS = {"final_acc": 93.0, "final_params": 100_000, "latency_ratio": 0.2}


def variant(seed: int, kd: bool, tmp: Path) -> Path:
    """The flagship YAML for one seed, with or without its distillation terms."""
    config = yaml.safe_load(FLAGSHIP.read_text())
    name = config["name"] + ("" if kd else "_nokd") + (f"_s{seed}" if seed else "")
    config["name"], config["seed"] = name, seed
    if not kd:
        config["distill"] = {"losses": [{"name": "ce", "weight": 1.0}]}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(pipeline: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "edgekd.cli", "run", str(pipeline), "--out", str(out)],
        check=True,
        cwd=ROOT,
    )
    return time.perf_counter() - start


def row(report: dict[str, Any], role: str) -> dict[str, Any]:
    """`role`'s fastest measured row on cpu-x86 that passed its check."""
    rows = [
        r
        for r in report["latency"]
        if r["model"] == role
        and r["target"] == "cpu-x86"
        and r["status"] == "ok"
        and r.get("check", {}).get("passed", True)
    ]
    return min(rows, key=lambda r: r["median_ms"]) if rows else {}


def facts(report: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """What the doc needs from one run's report.json."""
    models = {m["role"]: m for m in report["models"]}
    stages = {s["stage"]: s["metrics"] for s in report["stages"]}
    steps = report.get("steps") or {}
    pruning = (steps.get("pruning") or [{}])[0]
    ladder = steps.get("ladder") or {}
    teacher, final = row(report, "teacher"), row(report, "final")
    student = row(report, "student_fp32")
    return {
        "wall_s": round(wall_s, 1),
        "stage_s": {s["stage"]: s["wall_s"] for s in report["stages"]},
        "teacher": _model(models.get("teacher"), teacher),
        "student": _model(models.get("student_fp32"), student),
        "pruned": {
            "test_acc": stages.get("prune", {}).get("test_acc"),
            "params": stages.get("prune", {}).get("params"),
            "bytes": stages.get("prune", {}).get("bytes"),
            "ms": (pruning.get("after") or {}).get("median_ms"),
            "kept": pruning.get("kept"),
            "why": pruning.get("why"),
        },
        "final": _model(models.get("final"), final),
        "ladder": {
            "rungs": [
                {k: r.get(k) for k in ("rung", "val_acc", "drop", "test_acc")}
                for r in ladder.get("rungs", [])
            ],
            "float_layers": ladder.get("float_layers", []),
            "qat": ladder.get("qat"),
        },
        "latency_ratio": final["median_ms"] / teacher["median_ms"] if teacher and final else None,
        "created_utc": report["created_utc"],
        "machine": report["machine"],
    }


def _model(model: dict[str, Any] | None, fastest: dict[str, Any]) -> dict[str, Any]:
    if model is None:
        return {}
    return {
        "test_acc": model["test_acc"],
        "params": model["params"],
        "bytes": model["bytes"],
        "precision": model["precision"],
        "ms": fastest.get("median_ms"),
        "runtime": fastest.get("runtime"),
    }


def spread(values: list[float | None], fmt: str = ".2f") -> str:
    """`mean ± std` over the seeds (sample std), or the one value."""
    got = [v for v in values if v is not None]
    if not got:
        return "–"
    if len(got) == 1:
        return format(got[0], fmt)
    return f"{format(statistics.mean(got), fmt)} ± {format(statistics.stdev(got), fmt)}"


def mark(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(
    results: dict[str, Any], seeds: list[int], baseline_s: float | None, note: str | None = None
) -> str:
    kd = [results["kd"][str(s)] for s in seeds if str(s) in results["kd"]]
    nokd = [results["nokd"][str(s)] for s in seeds if str(s) in results.get("nokd", {})]
    first = kd[0]
    lines = [
        "# Flagship benchmark: `edgekd run pipelines/mobilenet_jetson.yaml`",
        "",
        f"Measured at {results['commit']} by `python benchmarks/flagship.py --seeds "
        f"{' '.join(map(str, seeds))}` on {first['machine']['cpu']} ({first['machine']['cores']}"
        f" cores, no GPU), runs from {min(r['created_utc'] for r in kd + nokd)} to "
        f"{max(r['created_utc'] for r in kd + nokd)}. Mean ± sample standard deviation over "
        f"{len(kd)} seeds (the seed changes training; the split is fixed). Test accuracy on all "
        "10,000 test images (the exported ONNX files in onnxruntime; the pruned model in "
        "PyTorch); latency batch 1 on this CPU, each model's fastest runtime that passed its "
        "check, as the bench stage measured it.",
        "",
        "## What each stage buys",
        "",
        "| | precision | test acc % | params | bytes | latency ms |",
        "|---|---|---|---|---|---|",
    ]
    for label, key in (
        ("teacher", "teacher"),
        ("KD student", "student"),
        ("pruned (latency: the prune stage's INT8 timing, 1 thread)", "pruned"),
        ("final: pruned, INT8", "final"),
    ):
        vals = [r[key] for r in kd]
        lines.append(
            f"| {label} | {vals[0].get('precision', 'fp32 (timed as int8)')} | "
            f"{spread([v.get('test_acc') for v in vals])} | "
            f"{spread([v.get('params') for v in vals], ',.0f')} | "
            f"{spread([v.get('bytes') for v in vals], ',.0f')} | "
            f"{spread([v.get('ms') for v in vals], '.4f')} |"
        )
    lines += ["", "Per seed, what the prune and qat stages decided:", ""]
    for seed, r in zip(seeds, kd, strict=False):
        rungs = ", ".join(
            f"{g['rung']} {g['test_acc']}" + (f" (val drop {g['drop']})" if g.get("drop") else "")
            for g in r["ladder"]["rungs"]
        )
        qat = r["ladder"]["qat"] or {}
        lines.append(
            f"- seed {seed}: prune: {r['pruned']['why']}; ladder (test acc %): {rungs}; "
            f"KD-QAT {'ran' if qat.get('run') else 'skipped'} ({qat.get('why')})"
            + (
                f"; float layers {', '.join(r['ladder']['float_layers'])}"
                if r["ladder"]["float_layers"]
                else ""
            )
        )
    final_acc = [r["final"]["test_acc"] for r in kd]
    ratios = [r["latency_ratio"] for r in kd if r["latency_ratio"] is not None]
    walls = [r["wall_s"] for r in kd]
    params = max(r["final"]["params"] for r in kd)
    lines += [
        "",
        "## Goals (issue #12)",
        "",
        f"- final INT8 student ≥ {GOALS['final_acc']} % on all 10,000 test images: "
        f"{spread(final_acc)} % (lowest {min(final_acc):.2f}) — "
        f"{mark(min(final_acc) >= GOALS['final_acc'])}",
        f"- under 100K parameters: {params:,} — {mark(params < GOALS['final_params'])}",
        f"- ≤ 1/5 of the teacher's fastest FP32 latency (same run): ×{spread(ratios, '.3f')} — "
        f"{mark(bool(ratios) and max(ratios) <= GOALS['latency_ratio'])}",
    ]
    if baseline_s:
        lines.append(
            f"- whole default run no longer than the previous default's on this machine "
            f"(`--baseline-wall-s`): {spread([w / 60 for w in walls], '.1f')} min vs "
            f"{baseline_s / 60:.1f} min{f' ({note})' if note else ''} — "
            f"{mark(max(walls) <= baseline_s)}"
        )
    else:
        lines.append(f"- whole default run: {spread([w / 60 for w in walls], '.1f')} min")
    lines.append(
        "- per stage (s, seed "
        f"{seeds[0]}): " + ", ".join(f"{k} {v}" for k, v in first["stage_s"].items())
    )
    if nokd:
        kd_spread = statistics.stdev(final_acc) if len(final_acc) > 1 else 0.0
        nokd_acc = [r["final"]["test_acc"] for r in nokd]
        nokd_spread = statistics.stdev(nokd_acc) if len(nokd_acc) > 1 else 0.0
        gain = statistics.mean(final_acc) - statistics.mean(nokd_acc)
        bar = max(kd_spread, nokd_spread)
        lines += [
            f"- KD beats no-KD by more than the larger seed spread: {gain:+.2f} points vs "
            f"{bar:.2f} — {mark(gain > bar)}",
            "",
            "## What KD adds (same pipeline, cross-entropy only)",
            "",
            "| | KD student FP32 test acc % | final INT8 test acc % | whole run min |",
            "|---|---|---|---|",
            f"| with KD | {spread([r['student']['test_acc'] for r in kd])} | {spread(final_acc)} | "
            f"{spread([w / 60 for w in walls], '.1f')} |",
            f"| without KD | {spread([r['student']['test_acc'] for r in nokd])} | "
            f"{spread(nokd_acc)} | {spread([r['wall_s'] / 60 for r in nokd], '.1f')} |",
        ]
    lines += [
        "",
        "Levers tried on the way to this default, with their numbers: "
        "[flagship_levers.md](flagship_levers.md). Full per-stage and per-runtime tables: "
        "`runs/mobilenet_jetson/report.md`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-nokd", action="store_true", help="the KD runs only")
    parser.add_argument("--render-only", action="store_true", help="rerun nothing")
    parser.add_argument(
        "--baseline-note", help="where --baseline-wall-s was measured (commit, when, where)"
    )
    parser.add_argument("--baseline-wall-s", type=float, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "runs")
    args = parser.parse_args()
    tmp = args.out / ".benchmarks"
    tmp.mkdir(parents=True, exist_ok=True)
    store = tmp / "flagship_results.json"
    results = json.loads(store.read_text()) if store.exists() else {"kd": {}, "nokd": {}}
    if args.baseline_wall_s is not None:
        results["baseline_wall_s"] = args.baseline_wall_s
    if args.baseline_note:
        results["baseline_note"] = args.baseline_note
    kinds = [True] if args.skip_nokd else [True, False]
    for kd in kinds:
        for seed in args.seeds:
            key, slot = str(seed), results["kd" if kd else "nokd"]
            if args.render_only or key in slot:
                continue
            pipeline = variant(seed, kd, tmp)
            results["commit"] = commit()
            wall = run(pipeline, args.out)
            name = yaml.safe_load(pipeline.read_text())["name"]
            report = json.loads((args.out / name / "report.json").read_text())
            slot[key] = facts(report, wall)
            store.write_text(json.dumps(results, indent=1))
    text = render(results, args.seeds, results.get("baseline_wall_s"), results.get("baseline_note"))
    (ROOT / "docs" / "benchmarks" / "flagship.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
