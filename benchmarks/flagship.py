"""Benchmark of the README's main job: wall time, teacher vs final student, and what KD adds.

Runs `edgekd run pipelines/mobilenet_jetson.yaml` (timed end to end, as a user would), then the
same pipeline with the distillation terms removed (plain cross-entropy, same budget), and writes
docs/benchmarks/flagship.md from the two report.json files. Numbers are measured, never edited.

    python benchmarks/flagship.py [--skip-run] [--out runs]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from provenance import commit  # benchmarks/provenance.py

from edgekd.report.markdown import summary_table

ROOT = Path(__file__).resolve().parents[1]
FLAGSHIP = ROOT / "pipelines" / "mobilenet_jetson.yaml"
PRUNE_FIRST = ROOT / "pipelines" / "mobilenet_prune_first.yaml"
GOALS = {
    "teacher_acc": 93.5,
    "final_acc": 92.5,
    "final_params": 100_000,
    "bytes_ratio": 0.1,
    "latency_ratio": 0.2,
}


def run(pipeline: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "edgekd.cli", "run", str(pipeline), "--out", str(out)],
        check=True,
        cwd=ROOT,
    )
    return time.perf_counter() - start


def no_kd_variant(tmp: Path) -> Path:
    """The flagship YAML with only the cross-entropy term: the student without KD."""
    config = yaml.safe_load(FLAGSHIP.read_text())
    config["name"] = "mobilenet_jetson_nokd"
    config["distill"]["losses"] = [{"name": "ce", "weight": 1.0}]
    path = tmp / "mobilenet_jetson_nokd.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def mark(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(
    report: dict,
    nokd: dict,
    wall_s: float | None,
    nokd_wall_s: float | None,
    prune_first: dict | None = None,
    made_by: str = "an unrecorded commit",
) -> str:
    s, n = report["summary"], nokd["summary"]
    t, f, r = s["teacher"], s["final"], s["ratios"]
    best = f["best"]
    latency_ratio = r["best_latency_vs_teacher_onnxruntime"]
    stages = {st["stage"]: st for st in report["stages"]}
    lines = [
        "# Flagship benchmark: `edgekd run pipelines/mobilenet_jetson.yaml`",
        "",
        f"Measured at {made_by} by `python benchmarks/flagship.py` on "
        f"{report['machine']['cpu']} "
        f"({report['machine']['cores']} cores, no GPU), {report['created_utc']}. "
        "Dataset and packages were installed beforehand.",
        "",
        "## Wall time",
        "",
        f"- whole default run, end to end: **{wall_s / 60:.1f} min** (goal ≤ 15 min: "
        f"{mark(wall_s <= 900)})"
        if wall_s
        else "- whole run: not timed (--skip-run)",
        "- per stage (s): " + ", ".join(f"{k} {v['wall_s']}" for k, v in stages.items()),
        "- PyTorch test accuracy after each stage (%): "
        + ", ".join(
            f"{k} {v['metrics']['test_acc']}"
            for k, v in stages.items()
            if "test_acc" in v["metrics"]
        ),
        "",
        "## Teacher vs final student (all 10,000 test images, accuracy by onnxruntime)",
        "",
        *summary_table(s),
    ]
    lines += [
        "",
        "## Goals (issue #2)",
        "",
        f"- teacher ≥ {GOALS['teacher_acc']} %: {t['test_acc']:.2f} % — "
        f"{mark(t['test_acc'] >= GOALS['teacher_acc'])}",
        f"- final INT8 pruned student ≥ {GOALS['final_acc']} %: {f['test_acc']:.2f} % — "
        f"{mark(f['test_acc'] >= GOALS['final_acc'])}",
        f"- under 100K parameters: {f['params']:,} — {mark(f['params'] < GOALS['final_params'])}",
        f"- ≤ 1/10 of the teacher's bytes: ×{r['bytes']:.3f} — "
        f"{mark(r['bytes'] <= GOALS['bytes_ratio'])}",
        f"- ≤ 1/5 of the teacher's FP32 CPU latency: same runtime (onnxruntime) "
        f"×{r['onnxruntime_latency']:.3f} — {mark(r['onnxruntime_latency'] <= 0.2)}; "
        f"fastest measured runtime for the final model ({best['runtime']}) "
        f"×{latency_ratio:.3f} — {mark(latency_ratio <= 0.2)}",
        "",
        "## What KD adds (same student, same budget, cross-entropy only)",
        "",
        "| | final test acc % | student FP32 test acc % | wall time |",
        "|---|---|---|---|",
    ]
    fp32 = {m["role"]: m for m in report["models"]}.get("student_fp32", {})
    fp32_nokd = {m["role"]: m for m in nokd["models"]}.get("student_fp32", {})
    for label, summary, student, wall in (
        ("with KD", s, fp32, wall_s),
        ("without KD", n, fp32_nokd, nokd_wall_s),
    ):
        lines.append(
            f"| {label} | {summary['final']['test_acc']:.2f} | "
            f"{student.get('test_acc', float('nan')):.2f} | "
            f"{wall / 60:.1f} min |"
            if wall
            else f"| {label} | {summary['final']['test_acc']:.2f} | {student.get('test_acc')} | – |"
        )
    delta = s["final"]["test_acc"] - n["final"]["test_acc"]
    lines += [
        "",
        f"KD changed the final model's test accuracy by {delta:+.2f} points "
        "(one seed; the spread between seeds is not measured here).",
        "",
    ]
    if prune_first is not None:
        lines += [
            "## Stage order: qat → prune (flagship) vs prune → qat",
            "",
            "`pipelines/mobilenet_prune_first.yaml`, run by this benchmark with `edgekd run` "
            "after the flagship (same teacher, student and budget).",
            "",
            "| order | final test acc % | params | ONNX bytes | PyTorch acc after each stage % "
            "| sum of stage times |",
            "|---|---|---|---|---|---|",
        ]
        for label, rep in (("qat → prune", report), ("prune → qat", prune_first)):
            fin = rep["summary"]["final"]
            per_stage = ", ".join(
                f"{st['stage']} {st['metrics']['test_acc']}"
                for st in rep["stages"]
                if "test_acc" in st["metrics"]
            )
            lines.append(
                f"| {label} | {fin['test_acc']:.2f} | {fin['params']:,} | {fin['bytes']:,} | "
                f"{per_stage} | {rep['total_wall_s'] / 60:.1f} min |"
            )
        lines.append("")
    lines += ["Full per-stage and per-runtime tables: `runs/mobilenet_jetson/report.md`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-run", action="store_true", help="only re-render from runs/")
    parser.add_argument(
        "--skip-nokd",
        action="store_true",
        help="rerun only the flagship; keep the no-KD run and its time from before",
    )
    parser.add_argument(
        "--skip-prune-first", action="store_true", help="do not rerun the prune → qat order"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs")
    args = parser.parse_args()
    tmp = args.out / ".benchmarks"
    tmp.mkdir(parents=True, exist_ok=True)
    nokd_yaml = no_kd_variant(tmp)
    walls_file = tmp / "walls.json"
    walls = json.loads(walls_file.read_text()) if walls_file.exists() else {}
    if not args.skip_run:
        walls["commit"] = commit()
        walls["kd"] = run(FLAGSHIP, args.out)
        if not args.skip_nokd:
            walls["nokd"] = run(nokd_yaml, args.out)
        if not args.skip_prune_first:
            walls["prune_first"] = run(PRUNE_FIRST, args.out)
        walls_file.write_text(json.dumps(walls))
    wall, nokd_wall = walls.get("kd"), walls.get("nokd")
    report = json.loads((args.out / "mobilenet_jetson" / "report.json").read_text())
    nokd_file = args.out / "mobilenet_jetson_nokd" / "report.json"
    if not nokd_file.exists():  # --skip-nokd with no earlier no-KD run: nothing to compare with
        print(f"{nokd_file} not found: docs/benchmarks/flagship.md not rendered")
        return
    nokd = json.loads(nokd_file.read_text())
    prune_first_file = args.out / "mobilenet_prune_first" / "report.json"
    prune_first = json.loads(prune_first_file.read_text()) if prune_first_file.exists() else None
    text = render(report, nokd, wall, nokd_wall, prune_first, walls.get("commit", "unrecorded"))
    target = ROOT / "docs" / "benchmarks" / "flagship.md"
    target.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
