"""What the search stage's latency predictors are worth on this machine's CPU, and what the
search buys against the hand-written flagship student.

Part 1, predictors (`--part predictors`): `--candidates` students of
`pipelines/mobilenet_search.yaml`'s space (its smallest, its largest, then seeded random ones)
are each exported the way the final model is (INT8: NNCF PTQ → Q/DQ ONNX → edgekd's rewrite)
and timed by the target's runner in a fresh process, under the search stage's own protocol
(`measure:`, one fresh process: `measured`, what the search itself sees), and again as the
reference: the bench protocol (50 warm-up runs, at least 500 runs and 2 s) in 3 fresh processes,
the median of their medians, so that one slowed process on this shared machine does not become
the truth the predictors are scored against. The latency table is built in between by the code
`edgekd profile` runs (every block of the space, the per-model overhead from 4 whole students of
its own); the roofline uses this CPU's peak figures, derived below (the target profile has
none); FLOPs are MACs scaled by the smallest student's reference. Each predictor is compared
with the reference: the share of candidates within ±10 %, Spearman's rank correlation (what a
search needs to rank candidates), and the median |error|.

Part 2, budgets (`--part budgets`, after `python benchmarks/flagship.py`): the flagship student
(which is one of the space's students) is timed like a candidate; `edgekd run` of the search
pipeline at that budget and at half of it; every run's final INT8 model is then timed again in
one sitting, the three files interleaved, `--repeats` fresh processes each, so the latencies
compare on one machine state. The searched students get the flagship's student, QAT and prune
training; the proxy trainings of the search are its extra cost, reported with the stage's wall
time and how it splits between timing candidates and training proxies.

    python benchmarks/search.py [--part predictors|budgets|all] [--candidates 32] [--repeats 3]

Results are kept in `runs/search_benchmark/results.json` (and each measurement in the search's
latency cache), so an interrupted benchmark resumes and `--skip-run` re-renders the doc.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from provenance import commit  # benchmarks/provenance.py

from edgekd.artifacts import read_json, write_json, write_text
from edgekd.config.schema import Peak
from edgekd.runners.base import MeasureProtocol, cpu_name, default_threads

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "mobilenet_search.yaml"
FLAGSHIP = ROOT / "pipelines" / "mobilenet_jetson.yaml"
TARGET_DOC = ROOT / "docs" / "benchmarks" / "search.md"
FINAL_PROTOCOL = MeasureProtocol(warmup=50, iterations=500, min_seconds=2.0)  # runtimes.py's
WITHIN = 0.10


def search_setup(path: Path) -> tuple[Any, Any, Any, tuple[int, int]]:
    """A search pipeline's plan, its search stage's settings, the data and (channels, classes)."""
    from edgekd import pipeline, training

    plan = pipeline.load_plan(path)
    spec = next(s for s in plan.stages if s.name == "search")
    _, data = training.prepare(plan)
    return plan, spec.cfg, data, (data.input_shape[0], len(data.classes))


def cpu_peak() -> tuple[Peak, dict[str, Any]]:
    """Peak figures for this CPU, which has no data sheet here: compute from its clock and
    vector width (AVX2: two 256-bit FMA pipes, 32 FP32 FLOP per cycle and core; INT8 through
    VPMADDUBSW, 32 multiply-adds per instruction and pipe, 128 ops per cycle and core), memory
    bandwidth from a 256 MiB numpy copy (read + write), best of 5."""
    mhz = max(
        float(line.split(":")[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("cpu MHz")
    )
    cores = default_threads()
    a = np.ones(32 * 2**20, dtype=np.float64)
    b = np.empty_like(a)
    best = min(_copy_seconds(a, b) for _ in range(5))
    gbps = 2 * a.nbytes / best / 1e9
    int8_tops = cores * mhz * 1e6 * 128 / 1e12
    facts = {
        "mhz": mhz,
        "cores": cores,
        "fp32_gflops": cores * mhz * 1e6 * 32 / 1e9,
        "int8_tops": int8_tops,
        "mem_gbps": gbps,
    }
    return Peak(int8_tops=int8_tops, mem_gbps=gbps), facts


def _copy_seconds(a: np.ndarray, b: np.ndarray) -> float:
    start = time.perf_counter()
    np.copyto(b, a)
    return time.perf_counter() - start


def agreement(reference: list[float], predicted: list[float]) -> dict[str, float]:
    """Share within ±10 %, Spearman's ρ and median |error| of `predicted` against `reference`."""
    from scipy.stats import spearmanr

    errors = [abs(p - r) / r for p, r in zip(predicted, reference, strict=True)]
    return {
        "within": sum(e <= WITHIN for e in errors) / len(errors),
        "spearman": float(spearmanr(reference, predicted).statistic),
        "median_error": statistics.median(errors),
        "n": len(errors),
    }


def predictors(pipeline: Path, out: Path, count: int, seed: int, results: dict[str, Any]) -> None:
    from edgekd.search import driver, lut
    from edgekd.search.cost import cost
    from edgekd.search.predict import Flops, Roofline, SearchError

    work = out / "predictors"
    plan, cfg, data, shape = search_setup(pipeline)
    _, first = driver.measuring(plan, cfg, data, work / "first", work / "first")
    from edgekd.search.config import SearchMeasure

    robust = cfg.model_copy(
        update={"measure": SearchMeasure(warmup=50, iterations=500, min_seconds=2.0, repeats=3)}
    )
    _, reference = driver.measuring(plan, robust, data, work / "reference", work / "reference")
    _, for_table = driver.measuring(plan, cfg, data, work / "table", work / "table")
    unique = {c.key(): c for c in cfg.space.sample(count, seed)}
    candidates = list(unique.values())
    rows: dict[str, dict[str, Any]] = results.setdefault("candidates", {})
    seconds = results.setdefault("seconds", {})

    def measure_all(predictor: Any, column: str) -> None:
        start = time.perf_counter()
        for i, candidate in enumerate(candidates):
            row = rows.setdefault(candidate.key(), {"student": candidate.describe()})
            if column in row or "failed" in row:
                continue
            try:
                row[column] = predictor.predict(candidate).ms
            except SearchError as exc:
                row["failed"] = str(exc)
            print(f"{column} {i + 1}/{len(candidates)} {candidate.describe()}: {row}", flush=True)
            write_json(out / "results.json", results)
        seconds[column] = seconds.get(column, 0) + time.perf_counter() - start

    measure_all(first, "measured")
    table_file = work / "lut.json"
    if not table_file.exists():
        start = time.perf_counter()
        profiler = lut.Profiler(for_table, shape, work / "blocks")
        table = lut.profile(cfg.space, profiler, print)
        write_json(table_file, table.model_dump(mode="json"))
        seconds["profile"] = time.perf_counter() - start
    table = lut.Table.model_validate(read_json(table_file))
    results["lut"] = {
        "blocks": len(table.blocks),
        "overhead_ms": table.overhead_ms,
        "per_block_ms": table.per_block_ms,
        "references": table.references,
        "fingerprint": table.fingerprint,
    }
    measure_all(reference, "reference")
    peak, facts = cpu_peak()
    results["peak"] = facts
    smallest = next(c for c in candidates if "failed" not in rows[c.key()])  # the FLOPs anchor
    roofline = Roofline(peak, first.precision, shape)
    flops = Flops(smallest, rows[smallest.key()]["reference"], shape)
    for candidate in candidates:
        row = rows[candidate.key()]
        size = cost(candidate, *shape)
        row |= {"params": size.params, "macs": size.macs}
        if "failed" in row:
            continue
        row["lut"] = lut.LookupTable(table, shape).predict(candidate).ms
        row["roofline"] = roofline.predict(candidate).ms
        row["flops"] = flops.predict(candidate).ms
    results["setup"] = {
        "target": first.target_name,
        "runtime": first.runtime,
        "precision": first.precision,
        "protocol": cfg.measure.model_dump(),
        "space_size": cfg.space.size,
        "pipeline": str(pipeline.relative_to(ROOT))
        if pipeline.is_relative_to(ROOT)
        else str(pipeline),
        "seed": seed,
    }
    write_json(out / "results.json", results)


def flagship_params(space: Any) -> dict[str, Any]:
    """The flagship student as a choice of the space's settings (it must be one of them)."""
    doc = yaml.safe_load(FLAGSHIP.read_text())
    model = next(s for s in doc["stages"] if s["stage"] == "student")["model"]
    rows = model["blocks"]
    assert [r[1] for r in rows] == space.channels and [r[3] for r in rows] == space.strides
    params: dict[str, Any] = {"width": model["width"], "resolution": 28}
    params["last_channel"] = model["last_channel"]
    for i, (t, _, n, _, *k) in enumerate(rows):
        params |= {f"depth{i}": n, f"kernel{i}": k[0] if k else 3}
        params |= {f"expand{i}": t} if i else {}
    choices = space.params()
    outside = {k: v for k, v in params.items() if v not in choices[k]}
    assert not outside, f"the flagship student is outside the search space: {outside}"
    return params


class PipelineFailed(Exception):
    """`edgekd run` exited with an error; the message is edgekd's own `error:` line."""


def run_pipeline(path: Path, runs: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "edgekd.cli", "run", str(path), "--out", str(runs)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        raise PipelineFailed(errors[-1][7:] if errors else f"exit status {proc.returncode}")
    return time.perf_counter() - start


def final_onnx(run: Path) -> Path:
    from edgekd.artifacts import find_output
    from edgekd.contracts import ModelsIndex, Role

    found = find_output(run, "onnx")
    assert found is not None, f"{run}: no export stage finished"
    folder = run / found[1].path
    final = ModelsIndex.read(folder).get(Role.FINAL)
    assert final is not None
    return folder / final.file


def budgets(
    pipeline: Path,
    out: Path,
    runs: Path,
    repeats: int,
    results: dict[str, Any],
    teacher_space: bool = False,
) -> None:
    from edgekd.bench import bench_file
    from edgekd.search import driver

    flagship_run = runs / "mobilenet_jetson"
    if not (flagship_run / "report.json").exists():
        raise SystemExit(f"{flagship_run}/report.json not found: run benchmarks/flagship.py first")
    plan, cfg, data, _ = search_setup(pipeline)
    _, measured = driver.measuring(plan, cfg, data, out / "flagship", out / "flagship")
    flagship = cfg.space.candidate(flagship_params(cfg.space))
    budget = results.setdefault("budgets", {})
    if "flagship_ms" not in budget:
        budget["flagship_ms"] = measured.predict(flagship).ms
        budget["flagship_student"] = flagship.describe()
    runs_of = budget.setdefault("runs", {})
    doc = yaml.safe_load(pipeline.read_text())
    variants: list[tuple[str, float, dict[str, Any] | None]] = [
        ("same", 1.0, None),
        ("half", 0.5, None),
    ]
    if teacher_space:  # students cut from the teacher, from its weights, at the same budget
        variants.append(("teacher_cut_same", 1.0, {"family": "teacher"}))
    for label, factor, space in variants:
        name = f"mobilenet_search_{label}"
        if name in runs_of:
            continue
        variant = dict(doc, name=name)
        variant["stages"] = [dict(s) for s in doc["stages"]]
        stage = next(s for s in variant["stages"] if s["stage"] == "search")
        stage["latency_budget_ms"] = round(budget["flagship_ms"] * factor, 4)
        if space is not None:
            stage["space"] = space
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(variant, sort_keys=False))
        try:
            wall = run_pipeline(path, runs)
            runs_of[name] = {"budget_ms": stage["latency_budget_ms"], "wall_s": wall}
        except PipelineFailed as exc:
            runs_of[name] = {"budget_ms": stage["latency_budget_ms"], "failed": str(exc)}
        write_json(out / "results.json", results)
    files = {"flagship": final_onnx(flagship_run)}
    files |= {n: final_onnx(runs / n) for n, r in runs_of.items() if "failed" not in r}
    timings: dict[str, list[float]] = {name: [] for name in files}
    target = ROOT / cfg.target_path
    for _ in range(repeats):  # interleaved, so drift between files averages out
        for name, file in files.items():
            row = bench_file(
                file, [target], [measured.runtime], ["int8"], [1], FINAL_PROTOCOL, None, out
            )["rows"][0]
            timings[name].append(row["median_ms"])
    budget["final_ms"] = timings
    for name in files:
        report = read_json((flagship_run if name == "flagship" else runs / name) / "report.json")
        final = report["summary"]["final"]
        budget.setdefault("reports", {})[name] = {
            "final_acc": final["test_acc"],
            "params": final["params"],
            "macs": final["macs"],
            "search": report.get("search"),
            "stage_s": {s["stage"]: s["wall_s"] for s in report["stages"]},
            "total_s": report["total_wall_s"],
        }
    write_json(out / "results.json", results)


def pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def render(results: dict[str, Any]) -> str:
    lines = ["# Search: latency predictors and what the searched student buys", ""]
    for part, key in (("predictors", "candidates"), ("budgets", "budgets")):
        if key not in results:
            continue
        # each part records where it ran (results from before that: the top-level fields)
        made = results.get("made", {}).get(part, results)
        lines += [
            f"`--part {part}` measured at {made.get('commit', 'unrecorded')} by "
            f"`python benchmarks/search.py --part {part}` on {made.get('cpu', '?')} "
            f"({made.get('threads', '?')} cores, no GPU), {made.get('date', '?')}.",
            "",
        ]
    if "candidates" in results:
        lines += render_predictors(results)
    if "budgets" in results:
        lines += render_budgets(results["budgets"])
    return "\n".join(lines) + "\n"


PREDICTORS = (
    ("measured", "measured (the search's protocol, one process)"),
    ("lut", "predicted (latency table)"),
    ("roofline", "predicted (roofline)"),
    ("flops", "predicted (FLOPs)"),
)


def render_predictors(results: dict[str, Any]) -> list[str]:
    setup, rows = results["setup"], list(results["candidates"].values())
    ok = [r for r in rows if "failed" not in r]
    failed = [r for r in rows if "failed" in r]
    reference = [r["reference"] for r in ok]
    p = setup["protocol"]
    lines = [
        "## Latency predictors against measurement",
        "",
        f"{len(rows)} students of the search space "
        f"({setup['space_size']:,} students): its smallest, its largest and random ones "
        f"(seed {setup['seed']}), batch 1, {setup['precision'].upper()}, {setup['runtime']} on "
        f"{setup['target']}, the search stage's protocol ({p['warmup']} warm-up runs, then at "
        f"least {p['iterations']} runs and {p['min_seconds']} s, median), each in a fresh "
        "process (`measured`, what a search sees). Reference: the bench protocol (50 warm-up "
        "runs, at least 500 runs and 2 s) in 3 fresh processes, the median of their medians. "
        f"Pipeline: `{setup['pipeline']}`.",
        "",
        "| predictor | within ±10 % | Spearman ρ | median abs error |",
        "|---|---|---|---|",
    ]
    for key, label in PREDICTORS:
        a = agreement(reference, [r[key] for r in ok])
        lines.append(
            f"| {label} | {pct(a['within'])} ({round(a['within'] * a['n'])}/{a['n']}) | "
            f"{a['spearman']:.3f} | {pct(a['median_error'])} |"
        )
    lut_share = agreement(reference, [r["lut"] for r in ok])["within"]
    lines += [
        "",
        f"Goal (issue #10): the latency table within ±10 % for ≥ 90 % of the students: "
        f"{pct(lut_share)}, **{'met' if lut_share >= 0.9 else 'not met'}** (nn-Meter reports "
        "about 99 % on mobile CPUs for its kernel-level predictor).",
    ]
    lut, peak = results["lut"], results["peak"]
    seconds = results["seconds"]
    lines += [
        "",
        f"- latency table: {lut['blocks']} blocks timed alone; per-model overhead "
        f"{lut['overhead_ms']:.4f} ms and per-block cost of timing a block alone "
        f"{lut.get('per_block_ms', 0):.4f} ms, fitted by least squares to "
        f"{len(lut['references'])} whole students measured for the table (not the reference "
        "above); built in "
        f"{seconds.get('profile', float('nan')) / 60:.1f} min",
        f"- roofline: this CPU's figures derived here (no data sheet): {peak['cores']} cores × "
        f"{peak['mhz']:.0f} MHz × 128 INT8 ops/cycle = {peak['int8_tops']:.3f} TOPS; memory "
        f"{peak['mem_gbps']:.1f} GB/s (numpy copy, best of 5)",
        "- FLOPs: MACs × the smallest student's reference ms ÷ its MACs",
        f"- measuring every candidate once took {seconds.get('measured', 0) / 60:.1f} min "
        f"({seconds.get('measured', 0) / max(len(rows), 1):.1f} s each, export included)",
    ]
    if failed:
        lines.append(f"- failed candidates (recorded, not compared): {len(failed)}")
        lines += [f"  - {r['student']}: {r['failed'][:200]}" for r in failed]
    lines += [
        "",
        "| student | params | MACs | reference ms (3 processes) | measured ms | LUT ms | "
        "roofline ms | FLOPs ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(ok, key=lambda r: r["reference"]):
        lines.append(
            f"| {r['student']} | {r['params']:,} | {r['macs']:,} | {r['reference']:.4f} | "
            f"{r['measured']:.4f} | {r['lut']:.4f} | {r['roofline']:.5f} | "
            f"{r['flops']:.4f} |"
        )
    return [*lines, ""]


def render_budgets(budget: dict[str, Any]) -> list[str]:
    lines = [
        "## The searched student against the flagship student",
        "",
        f"The flagship student ({budget['flagship_student']}) measures "
        f"{budget['flagship_ms']:.4f} ms as a search candidate (INT8, before pruning). The "
        "search pipeline ran at that budget and at half of it; every pipeline then trained its "
        "student, QAT and pruning the same way (the flagship's budget). Final latency: the "
        "final INT8 files timed again together, interleaved, "
        f"{FINAL_PROTOCOL.warmup} warm-up runs, at least {FINAL_PROTOCOL.iterations} runs and "
        f"{FINAL_PROTOCOL.min_seconds} s per process, median of the repeats' medians.",
        "",
        "| pipeline | budget ms | student | final INT8 test acc % | params | final ms "
        "(repeats) | whole run min | search stage min | of it: timing / proxy training s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    reports, finals = budget.get("reports", {}), budget.get("final_ms", {})
    for name in ["flagship", *budget["runs"]]:
        run = budget["runs"].get(name, {})
        if "failed" in run:
            lines.append(f"| {name} | {run['budget_ms']} | failed: {run['failed']} |||||||")
            continue
        rep = reports.get(name)
        if rep is None:
            continue
        search = rep.get("search") or {}
        chosen, spent = search.get("chosen", {}), search.get("seconds", {})
        times = finals.get(name, [])
        stage_s = rep["stage_s"].get("search")
        cost = (
            f"{stage_s / 60:.1f} | {spent['latency']} / {spent['proxy_training']}"
            if stage_s and spent
            else "– | –"
        )
        lines.append(
            f"| {name} | {run.get('budget_ms', '–')} | {chosen.get('student', 'hand-written')} "
            f"| {rep['final_acc']} | {rep['params']:,} | "
            f"{statistics.median(times):.4f} ({', '.join(f'{t:.4f}' for t in times)}) | "
            f"{rep['total_s'] / 60:.1f} | {cost} |"
        )
    acc = {n: r["final_acc"] for n, r in reports.items()}
    if "flagship" in acc:
        lines.append("")
        for name, goal, ok in (
            ("mobilenet_search_same", "at the flagship's latency, more accurate than it",
             lambda a: a > acc["flagship"]),
            ("mobilenet_search_half", "at half of it, less than 1 point below it",
             lambda a: a > acc["flagship"] - 1),
        ):  # fmt: skip
            if name in acc:
                verdict = "met" if ok(acc[name]) else "not met"
                lines.append(f"- Goal: {goal}: {acc[name]} % vs {acc['flagship']} %, **{verdict}**")
            elif "failed" in budget["runs"].get(name, {}):
                failed = budget["runs"][name]["failed"]
                lines.append(f"- Goal: {goal}: **not met**: the search found no student: {failed}")
            else:
                lines.append(f"- Goal: {goal}: not measured ({name} did not finish)")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", type=Path, default=PIPELINE, help="a search pipeline")
    parser.add_argument("--part", choices=["predictors", "budgets", "all"], default="all")
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument(
        "--teacher-space",
        action="store_true",
        help="also search students cut from the teacher (family: teacher) at the same budget",
    )
    parser.add_argument("--skip-run", action="store_true", help="only re-render the doc")
    parser.add_argument("--doc", type=Path, default=TARGET_DOC)
    args = parser.parse_args()
    out = args.runs / "search_benchmark"
    out.mkdir(parents=True, exist_ok=True)
    file = out / "results.json"
    # The committed raw results beside the doc seed a fresh clone, so rerunning one part keeps
    # the other part's rows.
    kept = args.doc.with_suffix(".json")
    seed = file if file.exists() else kept if kept.exists() else None
    results: dict[str, Any] = dict(read_json(seed)) if seed is not None else {}
    if not args.skip_run:
        made = {
            "commit": commit(),
            "cpu": cpu_name(),
            "threads": default_threads(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        parts = ["predictors", "budgets"] if args.part == "all" else [args.part]
        results.setdefault("made", {}).update(dict.fromkeys(parts, made))
        if args.part in ("predictors", "all"):
            predictors(args.pipeline.resolve(), out, args.candidates, args.seed, results)
        if args.part in ("budgets", "all"):
            budgets(
                args.pipeline.resolve(), out, args.runs, args.repeats, results, args.teacher_space
            )
    write_text(args.doc, render(results))
    write_json(kept, results)
    print(f"wrote {args.doc} and {kept}")


if __name__ == "__main__":
    main()
