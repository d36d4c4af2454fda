"""Benchmark of the sensitivity allocation before any recovery training: at the MACs of a uniform
pruning ratio, how accurate is the student pruned where the profile says it costs least, against
the uniform ratio? Both are BatchNorm-recalibrated (2,048 training images) and scored on all
10,000 test images (the profile itself reads 2,000 validation images only). Each pruned model and
the unpruned student are then exported as the final model ships (INT8 PTQ, edgekd's rewrite) and
timed together (onnxruntime, 1 thread, batch 1, interleaved rounds), so accuracy can be read
against measured latency: where a latency budget can tell the allocations apart on this CPU.

From the flagship's trained KD students (one run per seed, `--runs`), as the prune stage does it
(`PruneJob`: group_norm importance, round_to 16). Writes docs/benchmarks/prune_proxy.md.

    python benchmarks/prune_proxy.py [--seeds 0 1 2] [--ratios 0.01 0.15 0.22 0.3 0.4]
        [--runs runs] [--out runs]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from provenance import commit  # benchmarks/provenance.py
from pruning import ROUNDS, flagship_run, int8_file, mean_std, together  # benchmarks/pruning.py

ROOT = Path(__file__).resolve().parents[1]
FLAGSHIP = ROOT / "pipelines" / "mobilenet_jetson.yaml"
RECALIBRATION = 2048


def one_seed(run: Path, seed: int, ratios: list[float], out: Path) -> dict[str, Any]:
    import torch

    from edgekd.config.schema import DataConfig
    from edgekd.data.datasets import load_splits
    from edgekd.distill.trainer import evaluate
    from edgekd.models.io import load_model
    from edgekd.prune import depgraph, importance
    from edgekd.prune.job import PruneJob
    from edgekd.stages.prune import PruneConfig
    from edgekd.training import for_model

    config = yaml.safe_load(FLAGSHIP.read_text())
    model, meta = load_model(run / "01_student" / "student")
    splits = for_model(load_splits(DataConfig.model_validate(config["data"]), seed), meta)
    plan = SimpleNamespace(config=SimpleNamespace(seed=seed), stages=[])
    ctx = SimpleNamespace(plan=plan, index=0, log=print)
    cfg = PruneConfig(ratio=0.25, round_to=16, allocation="sensitivity")
    job = PruneJob(ctx, cfg, model.eval().cpu(), model, splits, {})
    scorer = importance.IMPORTANCE.get("group_norm")()
    ignored = depgraph.classifier_layers(job.model, len(splits.classes))
    job.scores = importance.scores(job.model, job.example, scorer, ignored)
    start = time.perf_counter()
    job._profile()
    profile_s = time.perf_counter() - start
    images = job.train_images(RECALIBRATION)
    out.mkdir(parents=True, exist_ok=True)
    files = {"unpruned": int8_file(model, splits, out / "unpruned.onnx")}
    rows = []
    for ratio in ratios:
        for allocation in ("uniform", "sensitivity"):
            job.allocation = allocation
            pruned = job.pruned(ratio)
            depgraph.recalibrate_batchnorm(pruned, images)
            rows.append(
                {
                    "ratio": ratio,
                    "allocation": allocation,
                    "macs": job._macs(pruned),
                    "params": sum(p.numel() for p in pruned.parameters()),
                    "test_acc": evaluate(pruned, splits.test, splits, torch.device("cpu")),
                }
            )
            name = f"{allocation}_{ratio:g}"
            files[name] = int8_file(pruned, splits, out / f"{name}.onnx")
    timed = together(files)
    for row in rows:
        row["ms"] = timed[f"{row['allocation']}_{row['ratio']:g}"]["median_ms"]
        row["vs_unpruned"] = row["ms"] / timed["unpruned"]["median_ms"]
    return {"profile_s": profile_s, "rows": rows, "macs": job._macs(job.model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.15, 0.22, 0.3, 0.4])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="the flagship's runs")
    parser.add_argument("--out", type=Path, default=ROOT / "runs", help="where the files go")
    args = parser.parse_args()
    made_by, start = commit(), time.perf_counter()
    tmp = args.out / ".benchmarks" / "prune_proxy"
    results = {
        s: one_seed(flagship_run(args.runs, s), s, args.ratios, tmp / f"s{s}") for s in args.seeds
    }
    wall = time.perf_counter() - start
    lines = [
        "# Sensitivity allocation before recovery training",
        "",
        f"Measured at {made_by} by `python benchmarks/prune_proxy.py --seeds "
        f"{' '.join(map(str, args.seeds))} --ratios {' '.join(map(str, args.ratios))} --runs "
        f"{args.runs}`, {time.strftime('%Y-%m-%d', time.gmtime())} ({wall / 60:.1f} min). "
        "Each seed's flagship KD student pruned as the prune stage does (group_norm importance, "
        "round_to 16): `uniform` removes the ratio of every layer's channels, `sensitivity` "
        "the same MACs where its profile (each group pruned alone, 2,000 validation images) "
        f"says they cost least. Both BatchNorm-recalibrated on {RECALIBRATION:,} training "
        "images, no training; test accuracy on all 10,000 test images; latency of the INT8 "
        "export (NNCF PTQ on 1,024 training images, edgekd's rewrite) as a share of the "
        "unpruned student's, all of a seed's files timed together (onnxruntime, 1 thread, "
        f"batch 1, {ROUNDS} interleaved rounds), alone on the machine. Profile time: "
        + ", ".join(f"seed {s} {r['profile_s']:.0f} s" for s, r in results.items())
        + ".",
        "",
        "| ratio | uniform MACs (M) | sensitivity MACs (M) | uniform params | sensitivity "
        "params | uniform test acc % | sensitivity test acc % | gain (points) | uniform "
        "latency ×unpruned | sensitivity latency ×unpruned |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ratio in args.ratios:
        got = {
            (allocation, key): [
                next(
                    r[key]
                    for r in results[s]["rows"]
                    if r["ratio"] == ratio and r["allocation"] == allocation
                )
                for s in args.seeds
            ]
            for allocation in ("uniform", "sensitivity")
            for key in ("macs", "params", "test_acc", "vs_unpruned")
        }
        uniform, sensitive = got["uniform", "test_acc"], got["sensitivity", "test_acc"]
        gain = [b - a for a, b in zip(uniform, sensitive, strict=True)]
        cells = [
            mean_std([m / 1e6 for m in got[a, "macs"]], ".2f") for a in ("uniform", "sensitivity")
        ]
        cells += [mean_std(got[a, "params"], ",.0f") for a in ("uniform", "sensitivity")]
        cells += [mean_std(uniform), mean_std(sensitive), ", ".join(f"{g:+.2f}" for g in gain)]
        cells += [mean_std(got[a, "vs_unpruned"], ".3f") for a in ("uniform", "sensitivity")]
        lines.append(f"| {ratio} | " + " | ".join(cells) + " |")
    unpruned = statistics.mean(r["macs"] for r in results.values()) / 1e6
    lines += [
        "",
        f"Mean ± std over seeds {', '.join(map(str, args.seeds))}; the gain column lists each "
        f"seed's. The unpruned student has {unpruned:.2f} M MACs.",
        "",
    ]
    text = "\n".join(lines)
    (ROOT / "docs" / "benchmarks" / "prune_proxy.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
