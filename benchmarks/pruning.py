"""Benchmark of latency-budget pruning: does the prune stage hit a latency budget on this CPU, and
does ranking channels by importance per MAC beat one uniform ratio that reaches the same
measured latency?

From the flagship's trained student (its teacher and student stages, reused from `--reuse
RUN_DIR` when they match), two pipelines prune to the same `latency_budget_ms` (a fraction of the
unpruned student's INT8 latency, measured first): one with `allocation: latency` (per-layer
ratios by importance per MAC), one with `allocation: uniform` (the same search finds the one
ratio that meets the budget). Both then get the same recovery, INT8 ladder, export and bench;
finally both final files and the unpruned student's are timed again together (interleaved, 5
rounds) so their latencies are compared in one measurement. Writes docs/benchmarks/pruning.md.

    python benchmarks/pruning.py [--fraction 0.75] [--reuse runs/mobilenet_jetson] [--out runs]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from ladder import reuse  # benchmarks/ladder.py
from provenance import commit  # benchmarks/provenance.py

ROOT = Path(__file__).resolve().parents[1]
FLAGSHIP = ROOT / "pipelines" / "mobilenet_jetson.yaml"
ROUNDS = 5
THREADS = 1  # as the prune stage times (TimingConfig.threads' default)


def pipeline(tmp: Path, name: str, budget_ms: float, allocation: str) -> Path:
    config = yaml.safe_load(FLAGSHIP.read_text())
    config["name"], config["targets"] = name, ["targets/cpu-x86.yaml"]
    stages = {s["stage"]: s for s in config["stages"]}
    prune = {k: v for k, v in stages["prune"].items() if k != "ratio"}
    prune |= {"latency_budget_ms": budget_ms, "allocation": allocation, "require_speedup": True}
    config["stages"] = [
        stages["teacher"],
        stages["student"],
        prune,
        stages["qat"],
        {"stage": "export"},
        {"stage": "bench", "rounds": 3},
        {"stage": "report"},
    ]
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def unpruned_int8_ms(student_dir: Path, out: Path) -> tuple[float, Path]:
    """The trained student as the final model ships (INT8 PTQ, edgekd's rewrite), timed."""
    import torch

    from edgekd.bench import bench_file
    from edgekd.config.schema import DataConfig
    from edgekd.data.datasets import batches, load_splits, sample
    from edgekd.models.io import load_model
    from edgekd.runners.base import MeasureProtocol
    from edgekd.search.predict import export_file
    from edgekd.training import for_model

    config = yaml.safe_load(FLAGSHIP.read_text())
    model, meta = load_model(student_dir)
    data = load_splits(DataConfig.model_validate(config["data"]), config["seed"])
    splits = for_model(data, meta)
    inputs = [b.images for b in batches(sample(splits.train, 1024, 0), splits, 128)]
    path, _ = export_file(model.eval().cpu(), inputs, "int8", out / "unpruned_int8.onnx")
    del torch
    result = bench_file(
        path,
        [ROOT / "targets" / "cpu-x86.yaml"],
        ["onnxruntime"],
        ["int8"],
        [1],
        MeasureProtocol(threads=THREADS),
        None,
        out / "engines",
        rounds=3,
    )
    return result["rows"][0]["median_ms"], path


def together(files: dict[str, Path]) -> dict[str, dict]:
    """All files timed in one interleaved measurement (fresh processes, ROUNDS rounds)."""
    import numpy as np

    from edgekd.bench import load_target, restrict
    from edgekd.runners.backends.onnxruntime import logits_function
    from edgekd.runners.base import MeasureProtocol
    from edgekd.runners.targets import BenchModel, BenchPlan, Reference, measure_target

    target = restrict(
        load_target(ROOT / "targets" / "cpu-x86.yaml"), "cpu-x86", "runtimes", ["onnxruntime"]
    )
    images = np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32)
    models = [BenchModel(k, v, "int8") for k, v in files.items()]
    refs = {k: Reference(logits_function(v)(images), "onnxruntime-cpu") for k, v in files.items()}
    plan = BenchPlan(protocol=MeasureProtocol(threads=THREADS), batches=[1], rounds=ROUNDS)
    rows = measure_target(target, "cpu-x86", models, plan, images, refs)
    return {r["model"]: r for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fraction", type=float, default=0.75)
    parser.add_argument("--reuse", type=Path, default=ROOT / "runs" / "mobilenet_jetson")
    parser.add_argument("--out", type=Path, default=ROOT / "runs")
    args = parser.parse_args()
    tmp = args.out / ".benchmarks" / "pruning"
    tmp.mkdir(parents=True, exist_ok=True)
    made_by, start = commit(), time.perf_counter()
    base_ms, base_file = unpruned_int8_ms(args.reuse / "01_student" / "student", tmp)
    budget = round(args.fraction * base_ms, 4)
    reports = {}
    for allocation in ("latency", "uniform"):
        name = f"prune_budget_{allocation}"
        reuse(args.reuse, args.out / name)
        path = pipeline(tmp, name, budget, allocation)
        subprocess.run(
            [sys.executable, "-m", "edgekd.cli", "run", str(path), "--out", str(args.out)],
            check=True,
            cwd=ROOT,
        )
        reports[allocation] = json.loads((args.out / name / "report.json").read_text())
    files = {"unpruned": base_file}
    for allocation in reports:
        files[allocation] = (
            args.out / f"prune_budget_{allocation}" / "04_export" / "onnx" / "final_int8.onnx"
        )
    timed = together(files)
    wall = time.perf_counter() - start
    lines = [
        "# Latency-budget pruning on this CPU",
        "",
        f"Measured at {made_by} by `python benchmarks/pruning.py --fraction {args.fraction}` on "
        f"{reports['latency']['machine']['cpu']}, {reports['latency']['created_utc']} "
        f"({wall / 60:.1f} min). The flagship's KD student (reused from its run), INT8 "
        f"(onnxruntime, batch 1): unpruned {base_ms:.4f} ms; budget {budget} ms "
        f"(×{args.fraction}). Each pipeline: prune to the budget (probes timed in 3 "
        "interleaved rounds beside the unpruned student), 2 epochs of KD recovery, the INT8 "
        "ladder, export, bench.",
        "",
        "| allocation | ratio of channels | probes | budget hit (probe ms, drift-corrected) | "
        "params | final test acc % | final ms, timed together | vs unpruned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    unpruned = timed["unpruned"]["median_ms"]
    for allocation, report in reports.items():
        step = report["steps"]["pruning"][0]
        search = step.get("search") or {}
        chosen = next(
            (p for p in search.get("probes", []) if p["ratio"] == search.get("ratio")), {}
        )
        hit = chosen.get("latency_ms")
        ok = hit is not None and hit <= budget * (1 + chosen.get("noise", 0))
        final = report["summary"]["final"]
        ms = timed[allocation]["median_ms"]
        lines.append(
            f"| {allocation} | {step.get('ratio', '–')} | {len(search.get('probes', []))} | "
            f"{'–' if hit is None else f'{hit:.4f}'} ({'within' if ok else '**outside**'} the "
            f"budget's noise) | {final['params']:,} | {final['test_acc']:.2f} | {ms:.4f} | "
            f"×{ms / unpruned:.3f} |"
        )
    acc = {k: r["summary"]["final"]["test_acc"] for k, r in reports.items()}
    verdict = "met" if acc["latency"] > acc["uniform"] else "**not met**"
    lines += [
        "",
        f"Goal: the latency allocation more accurate than the uniform ratio at the same measured "
        f"latency: {acc['latency']:.2f} vs {acc['uniform']:.2f} % — {verdict} (one seed).",
        "",
        "Probes (ratio → drift-corrected ms):",
        "",
    ]
    for allocation, report in reports.items():
        probes = (report["steps"]["pruning"][0].get("search") or {}).get("probes", [])
        lines.append(
            f"- {allocation}: "
            + ", ".join(f"{p['ratio']:.3f} → {p['latency_ms']:.4f}" for p in probes)
        )
    lines.append("")
    text = "\n".join(lines)
    (ROOT / "docs" / "benchmarks" / "pruning.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
