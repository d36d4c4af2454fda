"""Benchmark of latency-budget pruning: does the prune stage hit a latency budget on this CPU, and
is choosing per-layer ratios more accurate than one uniform ratio that reaches the same measured
latency?

From the flagship's trained KD students (its teacher and student stages, one run per seed, reused
from `--runs`: mobilenet_jetson, mobilenet_jetson_s1, ...), one pipeline per allocation prunes to
the same `latency_budget_ms` (a fraction of that seed's unpruned student's INT8 latency, measured
first): `sensitivity` (each layer pruned alone and scored on validation images, then the MACs of a
uniform ratio removed where they cost the least loss), `latency` (channels ranked by importance per
MAC) and `uniform` (the same search finds the one ratio that meets the budget). All then get the
flagship's recovery, INT8 ladder, export and bench; finally each seed's final files and its
unpruned student's are timed again together (interleaved, 5 rounds) so their latencies are
compared in one measurement. Writes docs/benchmarks/pruning.md; runs resume where they stopped,
and a seed's budget is measured once (kept in its folder under `--out`), so a later invocation that
adds seeds reruns only the new ones and the final timing.

    python benchmarks/pruning.py [--fraction 0.85] [--seeds 0 1 2]
        [--allocations sensitivity uniform] [--runs runs] [--out runs] [--doc pruning.md]
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
from ladder import reuse  # benchmarks/ladder.py
from provenance import commit  # benchmarks/provenance.py

from edgekd.artifacts import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]
FLAGSHIP = ROOT / "pipelines" / "mobilenet_jetson.yaml"
ROUNDS = 5
THREADS = 1  # as the prune stage times (TimingConfig.threads' default)


def pipeline(tmp: Path, name: str, seed: int, budget_ms: float, allocation: str) -> Path:
    config = yaml.safe_load(FLAGSHIP.read_text())
    config["name"], config["seed"], config["targets"] = name, seed, ["targets/cpu-x86.yaml"]
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


def int8_file(model: Any, splits: Any, path: Path) -> Path:
    """`model` exported as the final model ships: NNCF PTQ on 1,024 training images, Q/DQ ONNX,
    edgekd's rewrite (on a copy: NNCF may change the model it quantizes)."""
    import copy

    from edgekd.data.datasets import batches, sample
    from edgekd.search.predict import export_file

    inputs = [b.images for b in batches(sample(splits.train, 1024, 0), splits, 128)]
    return export_file(copy.deepcopy(model).eval().cpu(), inputs, "int8", path)[0]


def unpruned_int8_ms(student_dir: Path, path: Path) -> float:
    """The trained student as the final model ships (INT8 PTQ, edgekd's rewrite) written to
    `path`, and its median batch-1 latency."""
    from edgekd.bench import bench_file
    from edgekd.config.schema import DataConfig
    from edgekd.data.datasets import load_splits
    from edgekd.models.io import load_model
    from edgekd.runners.base import MeasureProtocol
    from edgekd.training import for_model

    config = yaml.safe_load(FLAGSHIP.read_text())
    model, meta = load_model(student_dir)
    data = load_splits(DataConfig.model_validate(config["data"]), config["seed"])
    int8_file(model, for_model(data, meta), path)
    result = bench_file(
        path,
        [ROOT / "targets" / "cpu-x86.yaml"],
        ["onnxruntime"],
        ["int8"],
        [1],
        MeasureProtocol(threads=THREADS),
        None,
        path.parent / "engines",
        rounds=3,
    )
    return result["rows"][0]["median_ms"]


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


def flagship_run(runs: Path, seed: int) -> Path:
    """The flagship benchmark's run of `seed` (benchmarks/flagship.py names them so)."""
    return runs / ("mobilenet_jetson" + (f"_s{seed}" if seed else ""))


def one_seed(args: argparse.Namespace, seed: int, tmp: Path) -> dict[str, Any]:
    """Every allocation's pipeline for one seed, and their final files timed together."""
    out = tmp / f"x{args.fraction:g}_s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    source = flagship_run(args.runs, seed)
    base_file = out / "unpruned_int8.onnx"
    kept = out / "unpruned.json"  # the budget stays what it was, so a rerun resumes the seed
    if kept.exists():
        base_ms = read_json(kept)["ms"]
    else:
        base_ms = unpruned_int8_ms(source / "01_student" / "student", base_file)
        write_json(kept, {"ms": base_ms})
    budget = round(args.fraction * base_ms, 4)
    reports: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for allocation in args.allocations:
        name = f"prune_budget_{allocation}_x{args.fraction:g}" + (f"_s{seed}" if seed else "")
        reuse(source, args.out / name)
        path = pipeline(tmp, name, seed, budget, allocation)
        done = subprocess.run(
            [sys.executable, "-m", "edgekd.cli", "run", str(path), "--out", str(args.out)],
            cwd=ROOT,
        )
        if done.returncode:  # a budget this allocation cannot reach stops the prune stage
            log = args.out / name / "02_prune" / "stage.log"
            failed[allocation] = log.read_text().strip().splitlines()[-1] if log.exists() else ""
            continue
        reports[allocation] = json.loads((args.out / name / "report.json").read_text())
        reports[allocation]["_dir"] = str(args.out / name)
    files = {"unpruned": base_file} | {
        a: Path(r["_dir"]) / "04_export" / "onnx" / "final_int8.onnx" for a, r in reports.items()
    }
    timed = together(files)
    rows: dict[str, Any] = {a: {"failed": why} for a, why in failed.items()}
    for allocation, report in reports.items():
        step = report["steps"]["pruning"][0]
        search = step.get("search") or {}
        chosen: dict[str, Any] = next(
            (p for p in search.get("probes", []) if p["ratio"] == search.get("ratio")), {}
        )
        hit = chosen.get("latency_ms")
        final = report["summary"]["final"]
        prune_s = next(s["wall_s"] for s in report["stages"] if s["stage"] == "prune")
        rows[allocation] = {
            "ratio": step.get("ratio"),
            "kept": step.get("kept"),
            "probes": search.get("probes", []),
            "hit_ms": hit,
            "within": hit is not None and hit <= budget * (1 + chosen.get("noise", 0)),
            "params": final["params"],
            "test_acc": final["test_acc"],
            "ms": timed[allocation]["median_ms"],
            "vs_unpruned": timed[allocation]["median_ms"] / timed["unpruned"]["median_ms"],
            "layer_ratios": step.get("layer_ratios"),
            "prune_s": prune_s,
        }
    return {
        "base_ms": base_ms,
        "budget_ms": budget,
        "unpruned_ms": timed["unpruned"]["median_ms"],
        "rows": rows,
        "cpu": next(iter(reports.values()))["machine"]["cpu"],
    }


def mean_std(values: list[float], fmt: str = ".2f") -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def render(args: argparse.Namespace, results: dict[int, dict], made_by: str, wall: float) -> str:
    first = results[args.seeds[0]]
    lines = [
        "# Latency-budget pruning on this CPU",
        "",
        f"Measured at {made_by} by `python benchmarks/pruning.py --fraction {args.fraction} "
        f"--seeds {' '.join(map(str, args.seeds))} --allocations {' '.join(args.allocations)} "
        f"--runs {args.runs} --doc {args.doc}` on {first['cpu']}, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())} "
        f"({wall / 60:.1f} min for this invocation; seeds whose runs an earlier one made "
        "resumed from them), alone on the machine. Each seed starts from that seed's "
        "flagship KD student (its run reused), INT8 (onnxruntime, batch 1); the budget is "
        f"×{args.fraction} of that student's latency. Each pipeline: prune to the budget (probes "
        "timed in 3 interleaved rounds beside the unpruned student), the flagship's KD "
        "recovery, INT8 ladder, export, bench. Then each seed's final files and its unpruned "
        f"student's were timed together ({ROUNDS} interleaved rounds).",
        "",
        "| seed | allocation | budget ms | probe ms at the chosen amount | ratio | params | "
        "final test acc % | final ms, timed together | vs unpruned | prune stage s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for seed in args.seeds:
        got = results[seed]
        for allocation, row in got["rows"].items():
            if "failed" in row:
                lines.append(
                    f"| {seed} | {allocation} | {got['budget_ms']} | not reached: "
                    f"{row['failed']} | | | | | | |"
                )
                continue
            hit = "–" if row["hit_ms"] is None else f"{row['hit_ms']:.4f}"
            lines.append(
                f"| {seed} | {allocation} | {got['budget_ms']} | {hit} "
                f"({'within' if row['within'] else '**outside**'} the budget's noise) | "
                f"{row['ratio']} | {row['params']:,} | {row['test_acc']:.2f} | "
                f"{row['ms']:.4f} | ×{row['vs_unpruned']:.3f} | {row['prune_s']:.0f} |"
            )
    reached = [
        a
        for a in args.allocations
        if all("failed" not in results[seed]["rows"][a] for seed in args.seeds)
    ]
    acc = {a: [results[s]["rows"][a]["test_acc"] for s in args.seeds] for a in reached}
    speed = {a: [results[s]["rows"][a]["vs_unpruned"] for s in args.seeds] for a in reached}
    lines += ["", "Over the seeds (mean ± std):", ""]
    for allocation in [a for a in args.allocations if a not in reached]:
        lines.append(f"- {allocation}: the budget was not reached on every seed")
    for allocation in reached:
        lines.append(
            f"- {allocation}: final test acc {mean_std(acc[allocation])} %, final latency "
            f"×{mean_std(speed[allocation], '.3f')} of the unpruned student's"
        )
    if "uniform" in acc:
        lines += [
            "",
            "Goal: a per-layer allocation more accurate than the uniform ratio that "
            "reaches the same measured latency:",
            "",
        ]
        for allocation in [a for a in args.allocations if a not in reached]:
            lines.append(f"- {allocation}: **not met** (the budget was not reached)")
        for allocation in [a for a in reached if a != "uniform"]:
            gain = [x - u for x, u in zip(acc[allocation], acc["uniform"], strict=True)]
            pair = (acc[allocation], acc["uniform"])
            spread = max(statistics.stdev(v) if len(v) > 1 else 0.0 for v in pair)
            met = statistics.mean(gain) > spread
            verdict = (
                ("met" if met else "**not met**")
                + " (met: the mean gain exceeds the larger seed spread, the KD goal's rule)"
                if len(args.seeds) > 1
                else "not judged: one seed has no spread to exceed"
            )
            lines.append(
                f"- {allocation} − uniform: {', '.join(f'{g:+.2f}' for g in gain)} points by "
                f"seed (mean {statistics.mean(gain):+.2f}, larger seed spread {spread:.2f}); "
                f"budget hit on every seed: "
                f"{all(results[s]['rows'][allocation]['within'] for s in args.seeds)} — " + verdict
            )
    lines += ["", "Probes (ratio → drift-corrected ms):", ""]
    for seed in args.seeds:
        for allocation, row in results[seed]["rows"].items():
            if "failed" in row:
                continue
            lines.append(
                f"- seed {seed}, {allocation}: "
                + ", ".join(f"{p['ratio']:.3f} → {p['latency_ms']:.4f}" for p in row["probes"])
            )
    lines += ["", f"Per-layer ratios the allocations chose (seed {args.seeds[0]}):", ""]
    for allocation, row in first["rows"].items():
        if row.get("layer_ratios"):
            kept = {k: v for k, v in row["layer_ratios"].items() if v}
            lines.append(f"- {allocation}: " + ", ".join(f"{k} {v:g}" for k, v in kept.items()))
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fraction", type=float, default=0.85)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--allocations",
        nargs="+",
        default=["sensitivity", "uniform"],
        choices=["sensitivity", "latency", "uniform"],
    )
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="the flagship's runs")
    parser.add_argument("--out", type=Path, default=ROOT / "runs")
    parser.add_argument(
        "--doc", default="pruning.md", help="the file written under docs/benchmarks/"
    )
    args = parser.parse_args()
    tmp = args.out / ".benchmarks" / "pruning"
    tmp.mkdir(parents=True, exist_ok=True)
    made_by, start = commit(), time.perf_counter()
    results = {seed: one_seed(args, seed, tmp) for seed in args.seeds}
    (tmp / f"results_x{args.fraction:g}.json").write_text(json.dumps(results, indent=1))
    text = render(args, results, made_by, time.perf_counter() - start)
    (ROOT / "docs" / "benchmarks" / args.doc).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
