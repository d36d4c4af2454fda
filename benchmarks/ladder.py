"""Benchmark of the INT8 ladder on a deliberately fragile case: the flagship student quantized with
one weight scale per tensor (what NPUs and DSPs without per-channel support take), whose PTQ loses
several points, especially in its depthwise layers (Nagel et al., arXiv 2106.08295 §4.1).

Runs the flagship pipeline's teacher and student stages (reused from `--reuse RUN_DIR` when they
match: same YAML sections, same keys), then a qat stage with `weights: per_tensor` and `qat:
never`, so the ladder's result is before any QAT epoch; then export, bench and report. Writes
docs/benchmarks/ladder.md: FP32 → PTQ → fallback validation and test accuracy, the share of the
drop recovered, the layers left in float, each rung's measured latency and the sensitivity
ranking's head.

    python benchmarks/ladder.py [--reuse runs/mobilenet_jetson] [--out runs]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from provenance import commit  # benchmarks/provenance.py

ROOT = Path(__file__).resolve().parents[1]
FLAGSHIP = ROOT / "pipelines" / "mobilenet_jetson.yaml"
NAME = "ladder_per_tensor"


def pipeline(tmp: Path) -> Path:
    config = yaml.safe_load(FLAGSHIP.read_text())
    stages = {s["stage"]: s for s in config["stages"]}
    config["name"] = NAME
    config["targets"] = ["targets/cpu-x86.yaml"]
    config["stages"] = [
        stages["teacher"],
        stages["student"],
        {
            "stage": "qat",
            "calibration": stages["qat"]["calibration"],
            "weights": "per_tensor",
            "max_accuracy_drop": 0.5,
            "qat": "never",
            "fallback": {"max_float_layers": 6, "sensitivity_images": 1000},
        },
        {"stage": "export"},
        {"stage": "bench", "rounds": 3},
        {"stage": "report"},
    ]
    path = tmp / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def reuse(source: Path, target: Path) -> None:
    """Copy the teacher and student stages and the logit cache of an earlier run of the same
    YAML sections: the pipeline reuses them when their keys match, and reruns them otherwise."""
    target.mkdir(parents=True, exist_ok=True)
    for folder in ("00_teacher", "01_student", "cache"):
        if (source / folder).is_dir() and not (target / folder).exists():
            shutil.copytree(source / folder, target / folder, symlinks=True)


def render(report: dict, wall_s: float, made_by: str) -> str:
    ladder = report["steps"]["ladder"]
    rungs = {r["rung"]: r for r in ladder["rungs"]}
    fp32, ptq = rungs["fp32"], rungs["ptq"]
    fallback = rungs.get("fallback")
    lines = [
        "# The INT8 ladder on a fragile case: per-tensor weights",
        "",
        f"Measured at {made_by} by `python benchmarks/ladder.py` on {report['machine']['cpu']} "
        f"({report['machine']['cores']} cores), {report['created_utc']}; {wall_s / 60:.1f} min. "
        "The flagship student (pipelines/mobilenet_jetson.yaml's teacher and student stages) "
        "quantized by NNCF with one scale per weight tensor, budget 0.5 validation points, at "
        "most 6 float layers, `qat: never` (no QAT epoch).",
        "",
        "| rung | val acc % | val drop | test acc % | latency ms (onnxruntime, 3 rounds) |",
        "|---|---|---|---|---|",
    ]
    for r in ladder["rungs"]:
        latency = (r.get("latency") or {}).get("median_ms")
        lines.append(
            f"| {r['rung']} | {r['val_acc']:.2f} | {r.get('drop', 0):+.2f} | "
            f"{r['test_acc']:.2f} | {'–' if latency is None else f'{latency:.4f}'} |"
        )
    lines.append("")
    if fallback is None:
        lines.append("The fallback did not beat PTQ: every layer stayed INT8.")
    else:
        for split in ("val", "test"):
            drop = fp32[f"{split}_acc"] - ptq[f"{split}_acc"]
            got = fallback[f"{split}_acc"] - ptq[f"{split}_acc"]
            share = got / drop if drop > 0 else float("nan")
            goal = "met" if share >= 0.5 else "**not met**"
            lines.append(
                f"- {split}: PTQ lost {drop:.2f} points; the fallback recovered {got:.2f} "
                f"({100 * share:.0f} % of the drop; goal ≥ 50 %: {goal})"
            )
        lines.append(f"- left in float: {', '.join(ladder['float_layers'])}")
        if ladder.get("float_cost_ms") is not None:
            lines.append(
                f"- their latency cost against all-INT8 PTQ: "
                f"{1000 * ladder['float_cost_ms']:+.1f} µs"
            )
    lines += [
        "",
        "Sensitivity (leave one layer out of INT8, 1,000 validation images), the first ten:",
        "",
        "| layer | val acc % with it float | gain (points) | logit SQNR dB |",
        "|---|---|---|---|",
    ]
    for s in ladder["sensitivity"][:10]:
        lines.append(
            f"| {s['module']} | {s['val_acc']:.2f} | {s['gain']:+.2f} | {s['sqnr_db']:.1f} |"
        )
    steps = (ladder.get("fallback") or {}).get("steps", [])
    if steps:
        lines += ["", "Fallback steps (each a real NNCF PTQ with the layers ignored):", ""]
        lines += [
            f"- {len(s['float_layers'])} float: val {s['val_acc']:.2f} % (drop {s['drop']:.2f})"
            for s in steps
        ]
    lines += ["", f"KD-QAT: {ladder['qat']['why']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reuse", type=Path, help="an earlier flagship run folder")
    parser.add_argument("--out", type=Path, default=ROOT / "runs")
    args = parser.parse_args()
    tmp = args.out / ".benchmarks"
    tmp.mkdir(parents=True, exist_ok=True)
    path = pipeline(tmp)
    if args.reuse is not None:
        reuse(args.reuse, args.out / NAME)
    made_by = commit()
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "edgekd.cli", "run", str(path), "--out", str(args.out)],
        check=True,
        cwd=ROOT,
    )
    wall = time.perf_counter() - start
    report = json.loads((args.out / NAME / "report.json").read_text())
    text = render(report, wall, made_by)
    (ROOT / "docs" / "benchmarks" / "ladder.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
