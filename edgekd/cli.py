"""The command line: edgekd run | validate | search | profile | bench | optimize | targets | deploy
| report | check."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from edgekd import __version__
from edgekd.errors import EdgeKDError


def _run(args: argparse.Namespace, console: Console) -> int:
    from edgekd import distributed, logs, pipeline

    logs.set_verbose(args.verbose)
    plan = pipeline.load_plan(args.pipeline)
    if distributed.world() > 1:  # started by torchrun: one process of several
        distributed.init(plan.config.device)
        if not distributed.is_main():
            console = Console(quiet=True)  # rank 0 speaks for all
        console.print(f"training on {distributed.world()} processes (torchrun, DDP)")
    try:
        result = pipeline.run(plan, out=args.out, from_stage=args.from_stage, console=console)
        # Every rank leaves together: rank 0 still writes manifests and the summary after the
        # others' last collective, and a gloo group torn down while a peer is already gone can
        # abort the process that is left.
        distributed.barrier()
    finally:
        distributed.close()
    console.print(f"run folder: {result['run_dir']}")
    for label, variant in result.get("variants", {}).items():
        console.print(f"  on {label}: {variant['run_dir']}", highlight=False)
    return 0


def _validate(args: argparse.Namespace, console: Console) -> int:
    from edgekd import pipeline

    plan = pipeline.load_plan(args.pipeline)
    if args.show:
        from edgekd.config.show import render

        print(render(plan), end="")
        return 0
    stages = " → ".join(s.name for s in plan.stages)
    console.print(f"{args.pipeline}: ok ({stages}; {len(plan.targets)} targets)")
    return 0


def _search(args: argparse.Namespace, console: Console) -> int:
    from edgekd import pipeline

    plan = pipeline.load_plan(args.pipeline)
    if not args.dry_run:
        raise EdgeKDError(
            f"`edgekd run {args.pipeline}` runs the search with the rest of the pipeline; "
            "`edgekd search --dry-run` lists the space and its predicted latency range"
        )
    from edgekd.search.dry_run import summary

    print(summary(plan), end="")
    return 0


def _profile(args: argparse.Namespace, console: Console) -> int:
    from edgekd import pipeline, training
    from edgekd.artifacts import write_json
    from edgekd.search import driver, lut

    plan = pipeline.load_plan(args.pipeline)
    spec = next((s for s in plan.stages if s.name == "search"), None)
    if spec is None:
        raise EdgeKDError(f"{args.pipeline} has no search stage: its space is what is profiled")
    cfg = spec.cfg
    if cfg.targets is not None:
        raise EdgeKDError(
            f"{args.pipeline}: its search runs on several targets; a latency table is made on "
            "one: profile each with a copy of the pipeline whose search has that `target:`"
        )
    if cfg.space.family != "mobilenetv2":
        raise EdgeKDError(
            f"{args.pipeline}: latency tables are built for mobilenetv2 spaces, not "
            f"{cfg.space.family}; its search measures each candidate instead"
        )
    size = plan.config.data.image_size or 28
    if cfg.space.resolution != [size]:
        raise EdgeKDError(
            f"{args.pipeline}: a latency table times blocks, not the resize from the data's "
            f"{size} px to {cfg.space.resolution}; profile a space of resolution [{size}]"
        )
    _, data = training.prepare(plan)
    work = args.workdir or Path(".edgekd-profile")
    _, measured = driver.measuring(plan, cfg, data, work, work / "cache")
    out = args.out or (plan.resolve(cfg.lut) if cfg.lut else None)
    if out is None:
        out = Path("luts") / f"{measured.target_name}-{measured.runtime}-{measured.precision}.json"
    profiler = lut.Profiler(measured, (data.input_shape[0], len(data.classes)), work / "blocks")
    table = lut.profile(cfg.space, profiler, console.print)
    write_json(out, table.model_dump(mode="json"))
    for ref in table.references:
        console.print(
            f"  {ref['student']}: measured {ref['measured_ms']:.4f} ms, blocks sum "
            f"{ref['sum_of_blocks_ms']:.4f} ms",
            highlight=False,
        )
    console.print(
        f"{len(table.blocks)} blocks, per-model overhead {table.overhead_ms:.4f} ms: {out}",
        highlight=False,
    )
    return 0


def _check(args: argparse.Namespace, console: Console) -> int:
    import yaml

    from edgekd.artifacts import write_bytes, write_text
    from edgekd.config.schema import GateConfig
    from edgekd.report.gate import Limits, check, junit, markdown

    file, report = _read_report(args.report)
    baseline = _read_report(args.baseline)[1] if args.baseline else None
    # the pipeline's own `gate:` (kept in report.json with the YAML as run), then the flags
    text = (report.get("pipeline") or {}).get("yaml")
    try:
        section = (yaml.safe_load(text) or {}).get("gate") if text else None
        from_yaml = GateConfig.model_validate(section or {}).model_dump(exclude_none=True)
    except (yaml.YAMLError, ValueError) as exc:
        raise EdgeKDError(f"{file}: the pipeline's `gate:` section is not valid: {exc}") from None
    flags = {f: getattr(args, f) for f in Limits.__dataclass_fields__}
    limits = Limits(**(from_yaml | {k: v for k, v in flags.items() if v is not None}))
    defaults: list[str] = []
    if baseline is not None:
        limits, defaults = limits.with_defaults()
    results = check(report, limits, baseline)
    if not results:
        raise EdgeKDError("no limits given; see `edgekd check --help` (or give --baseline)")
    if defaults:
        applied = ", ".join(f"{name} {getattr(limits, name):g}" for name in defaults)
        print(f"defaults applied (no tolerance given): {applied}")
    for result in results:
        print(f"{'PASS' if result.passed else 'FAIL'}  {result.name}: {result.detail}")
    name = (report.get("pipeline") or {}).get("name", str(file))
    if args.markdown is not None:
        write_text(args.markdown, markdown(results, defaults, name))
    if args.junit is not None:
        write_bytes(args.junit, junit(results, name))
    return 0 if all(r.passed for r in results) else 1


def _baseline(args: argparse.Namespace, console: Console) -> int:
    from edgekd.artifacts import write_json
    from edgekd.report.compare import compare

    file, report = _read_report(args.run)
    name = (report.get("pipeline") or {}).get("name", "report")
    target = args.to or Path("baselines") / f"{name}.json"
    if target.is_file():
        _, old = _read_report(target)
        lines = compare(old, report, str(target), str(file))
        changed = next(line for line in lines if line.startswith("## Changed"))
        console.print(f"replacing {target}: {changed[3:]} numbers differ", highlight=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, report)
    console.print(f"wrote baseline {target} from {file}", highlight=False)
    return 0


def _read_report(path: Path) -> tuple[Path, dict[str, Any]]:
    """A run folder's report.json (or the file itself) and its content."""
    from edgekd.artifacts import read_json

    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise EdgeKDError(
            f"no report at {file}: give a run folder (runs/<name>) whose pipeline ended with "
            "the report stage, or its report.json"
        )
    try:
        return file, dict(read_json(file))
    except (OSError, ValueError) as exc:
        raise EdgeKDError(f"cannot read report {file}: {exc}") from None


def _report(args: argparse.Namespace, console: Console) -> int:
    from edgekd.artifacts import write_text
    from edgekd.report.compare import compare
    from edgekd.stages.report import write_report

    file, report = _read_report(args.run)
    if args.other is None:
        write_report(file.parent, report)
        for name in ("report.md", "report.html"):
            console.print(f"wrote {file.parent / name}", highlight=False)
        return 0
    other_file, other = _read_report(args.other)
    text = "\n".join(compare(report, other, str(file), str(other_file)))
    if args.out is not None:
        write_text(args.out, text)
        console.print(f"wrote {args.out}", highlight=False)
    else:
        print(text)
    return 0


def _bench(args: argparse.Namespace, console: Console) -> int:
    from edgekd.artifacts import write_json
    from edgekd.bench import bench_file
    from edgekd.runners.base import MeasureProtocol
    from edgekd.stages.bench import row_line

    protocol = MeasureProtocol(args.warmup, args.iterations, args.min_seconds, 1, args.threads)
    result = bench_file(
        args.model,
        args.target,
        args.runtime,
        args.precision,
        args.batch,
        protocol,
        args.inputs,
        args.workdir or Path(".edgekd-engines"),
        args.rounds,
    )
    console.print(f"{args.model}: checked on {result['checked_on']}", highlight=False)
    for row in result["rows"]:
        console.print(f"  {row['target']:<18} {row_line(row)}", highlight=False, markup=False)
    if args.out:
        write_json(args.out, result)
        console.print(f"rows written to {args.out}")
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    return 0 if ok and all(r["check"]["passed"] for r in ok) else 1


def _optimize(args: argparse.Namespace, console: Console) -> int:
    from edgekd.artifacts import write_json
    from edgekd.export.optimize import BenchSpec, OptimizeJob, default_tolerance, optimize, render
    from edgekd.runners.base import MeasureProtocol

    tolerance = default_tolerance()
    given = {"max_abs_diff": args.max_abs_diff, "top1_agreement": args.min_top1}
    try:  # the flags override the export stage's INT8 gate, checked by its own model
        tolerance = tolerance.model_validate(
            tolerance.model_dump() | {k: v for k, v in given.items() if v is not None}
        )
    except ValueError as exc:
        raise EdgeKDError(f"--max-abs-diff / --min-top1: {exc}") from None
    bench = None
    if not args.no_bench:
        protocol = MeasureProtocol(args.warmup, args.iterations, args.min_seconds, 1, args.threads)
        bench = BenchSpec(args.target or BenchSpec().targets, args.runtime, protocol, args.rounds)
    out = args.out or args.model.with_name(f"{args.model.stem}_optimized.onnx")
    job = OptimizeJob(args.model, out, args.inputs, tolerance, args.int8_weights, bench)
    result = optimize(job)
    render(result, console)
    if args.json:
        write_json(args.json, result)
        console.print(f"result written to {args.json}", highlight=False)
    return 0


def _targets(args: argparse.Namespace, console: Console) -> int:
    from edgekd.bench import describe_targets

    paths = args.profiles or sorted(Path("targets").glob("*.yaml"))
    if not paths:
        raise EdgeKDError("no target profiles given and none in ./targets/")
    for entry in describe_targets(paths, probe=not args.no_probe):
        state = "ready" if entry["reason"] is None else f"not reachable: {entry['reason']}"
        console.print(f"{entry['name']} ({entry['file']}): {state}", highlight=False, markup=False)
        for runtime, reason in entry.get("runtimes", {}).items():
            if entry["reason"] is None:
                text = "available" if reason is None else f"unavailable: {reason}"
                console.print(f"  {runtime}: {text}", highlight=False, markup=False)
    return 0


def _deploy(args: argparse.Namespace, console: Console) -> int:
    from edgekd.bench import load_target
    from edgekd.deploy import deploy

    target = load_target(args.target)
    result = deploy(args.run_dir, target, str(args.target), args.out)
    if result["pushed"]:
        console.print(
            f"bundle {result['bundle']} pushed to {target.name}:{result['remote_dir']} and "
            f"built ({result['engine'] or 'no TensorRT recipe'})",
            highlight=False,
        )
    else:
        console.print(
            f"bundle {result['bundle']}; tarball {result['tarball']} (copy it to the device, "
            f"see README.txt inside)",
            highlight=False,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from edgekd.runners.base import MeasureProtocol

    parser = argparse.ArgumentParser(
        prog="edgekd",
        description="Distill, quantize, prune, export and measure image "
        "classifiers for edge devices, from one YAML pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"edgekd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline (resumes; skips unchanged stages)")
    run.add_argument(
        "pipeline", type=Path, help="pipeline YAML, e.g. pipelines/mobilenet_jetson.yaml"
    )
    run.add_argument(
        "--from",
        dest="from_stage",
        metavar="STAGE",
        help="rerun from this stage on, even if unchanged",
    )
    run.add_argument(
        "--out", type=Path, default=None, help="parent of the run folder (default: runs/)"
    )
    run.add_argument(
        "--verbose",
        action="store_true",
        help="show the libraries' own warnings and logs (by default in each stage's stage.log)",
    )
    run.set_defaults(func=_run)

    validate = sub.add_parser(
        "validate", help="check a pipeline without running it (does not import torch)"
    )
    validate.add_argument("pipeline", type=Path)
    validate.add_argument(
        "--show",
        action="store_true",
        help="print the resolved pipeline: every stage, every default, each key's meaning",
    )
    validate.set_defaults(func=_validate)

    search = sub.add_parser(
        "search", help="a pipeline's search space: size, student sizes, predicted latency"
    )
    search.add_argument("pipeline", type=Path)
    search.add_argument(
        "--dry-run", action="store_true", help="list the space; train and time nothing"
    )
    search.set_defaults(func=_search)

    prof = sub.add_parser(
        "profile", help="time every block of a pipeline's search space on its target (a LUT)"
    )
    prof.add_argument("pipeline", type=Path)
    prof.add_argument("--out", type=Path, help="table file (default: the stage's `lut:`)")
    prof.add_argument("--workdir", type=Path, help="scratch folder (default .edgekd-profile)")
    prof.set_defaults(func=_profile)

    bench = sub.add_parser(
        "bench", help="measure one ONNX file on target profiles (every runtime × precision)"
    )
    bench.add_argument("model", type=Path, help="an ONNX file (FP32, or INT8 with Q/DQ nodes)")
    bench.add_argument(
        "--target", type=Path, action="append", required=True, help="targets/*.yaml (repeatable)"
    )
    bench.add_argument("--runtime", action="append", help="only this runtime (repeatable)")
    bench.add_argument(
        "--precision", action="append", choices=["fp32", "fp16", "int8"], help="only this one"
    )
    bench.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes timed")
    bench.add_argument(
        "--inputs", type=Path, help=".npy of preprocessed images the outputs are checked on"
    )
    protocol = MeasureProtocol()  # the protocol's defaults, kept in runners/base.py
    bench.add_argument("--warmup", type=int, default=protocol.warmup, help="untimed runs first")
    bench.add_argument(
        "--iterations", type=int, default=protocol.iterations, help="at least this many runs"
    )
    bench.add_argument(
        "--min-seconds", type=float, default=protocol.min_seconds, help="and at least this long"
    )
    bench.add_argument("--threads", type=int, help="CPU threads (default: the target's, or all)")
    bench.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time each row this many times in fresh processes, interleaved; report the median "
        "of the medians and their spread",
    )
    bench.add_argument("--workdir", type=Path, help="TensorRT engine cache (.edgekd-engines)")
    bench.add_argument("--out", type=Path, help="write the rows as JSON here")
    bench.set_defaults(func=_bench)

    from edgekd.export.optimize import BenchSpec  # its defaults, kept in one place

    optimize_rounds = BenchSpec().rounds
    opt = sub.add_parser(
        "optimize",
        help="edgekd's exact Q/DQ rewrite for an INT8 ONNX file another tool made (NNCF, "
        "onnxruntime, ModelOpt), checked against it, with latency before and after",
    )
    opt.add_argument("model", type=Path, help="a Q/DQ ONNX file (QuantizeLinear/DequantizeLinear)")
    opt.add_argument(
        "--out", "-o", type=Path, help="the result (default MODEL_optimized.onnx beside MODEL)"
    )
    opt.add_argument(
        "--inputs", type=Path, help=".npy of preprocessed images to check on (default: random)"
    )
    opt.add_argument(
        "--max-abs-diff",
        type=float,
        help="largest output gap allowed (default: export's INT8 gate)",
    )
    opt.add_argument(
        "--min-top1", type=float, help="least top-1 agreement, %% (default: export's INT8 gate)"
    )
    opt.add_argument(
        "--int8-weights",
        choices=["auto", "int8", "uint8"],
        default="auto",
        help="weight type of the result; auto: uint8 on x86 CPUs without VNNI (as export does)",
    )
    opt.add_argument(
        "--target", type=Path, action="append", help="targets/*.yaml (default cpu-x86; repeatable)"
    )
    opt.add_argument("--runtime", action="append", help="only this runtime (repeatable)")
    opt.add_argument("--no-bench", action="store_true", help="do not time the two files")
    opt.add_argument("--warmup", type=int, default=protocol.warmup, help="untimed runs first")
    opt.add_argument(
        "--iterations", type=int, default=protocol.iterations, help="at least this many runs"
    )
    opt.add_argument(
        "--min-seconds", type=float, default=protocol.min_seconds, help="and at least this long"
    )
    opt.add_argument("--threads", type=int, help="CPU threads (default: the target's, or all)")
    opt.add_argument(
        "--rounds",
        type=int,
        default=optimize_rounds,
        help="time each row this many times, the two files interleaved, each in a fresh process",
    )
    opt.add_argument("--json", type=Path, help="write the result as JSON here")
    opt.set_defaults(func=_optimize)

    targets = sub.add_parser("targets", help="list target profiles and whether each is reachable")
    targets.add_argument("profiles", type=Path, nargs="*", help="default: targets/*.yaml")
    targets.add_argument(
        "--no-probe", action="store_true", help="do not try SSH connections to remote devices"
    )
    targets.set_defaults(func=_targets)

    deploy = sub.add_parser(
        "deploy", help="bundle a run's final model for a target; push and build it over SSH"
    )
    deploy.add_argument("run_dir", type=Path, help="runs/<pipeline name>")
    deploy.add_argument("--target", type=Path, required=True, help="targets/*.yaml")
    deploy.add_argument("--out", type=Path, help="bundle folder parent (default RUN_DIR/deploy)")
    deploy.set_defaults(func=_deploy)

    report = sub.add_parser(
        "report",
        help="rebuild report.md and report.html from a run's report.json, or compare two runs",
    )
    report.add_argument("run", type=Path, help="runs/<name> (or its report.json)")
    report.add_argument("other", type=Path, nargs="?", help="a second run: compare the two")
    report.add_argument("--out", type=Path, help="with two runs: write the comparison here")
    report.set_defaults(func=_report)

    gate = sub.add_parser(
        "check",
        help="gate a report.json for CI: exit 0 pass, 1 a limit failed, 2 usage or input error",
    )
    gate.add_argument("report", type=Path, help="runs/<name> or its report.json")
    gate.add_argument(
        "--baseline",
        type=Path,
        help="an earlier report.json (baselines/<name>.json): regressions against it are "
        "checked, with default tolerances where none is given",
    )
    for flag, kind, text in (
        ("min-acc", float, "least final test accuracy, %"),
        ("max-acc-drop", float, "most teacher − final accuracy, points"),
        ("max-params", int, "most final parameters"),
        ("max-bytes-ratio", float, "most final/teacher ONNX bytes"),
        ("max-latency-ms", float, "most final median latency (fastest measured runtime)"),
        ("min-parity-top1", float, "least final ONNX vs PyTorch top-1 agreement, %"),
        ("max-parity-diff", float, "most final ONNX vs PyTorch max |logit difference|"),
        ("max-acc-regression", float, "most accuracy lost vs --baseline, points (default 0.5)"),
        (
            "max-latency-regression",
            float,
            "most growth of the final/teacher latency ratio vs --baseline beyond the noise, % "
            "(default 10)",
        ),
        ("max-size-growth", float, "most growth of the final file's bytes vs --baseline, % (5)"),
    ):
        gate.add_argument(f"--{flag}", type=kind, help=text.replace("%", "%%"))  # argparse
    gate.add_argument("--markdown", type=Path, help="also write a Markdown summary here")
    gate.add_argument("--junit", type=Path, help="also write JUnit XML here (a case per limit)")
    gate.set_defaults(func=_check)

    base = sub.add_parser("baseline", help="manage the baselines `edgekd check` compares with")
    base_sub = base.add_subparsers(dest="action", required=True)
    update = base_sub.add_parser(
        "update", help="make a run's report the baseline (only ever done on purpose)"
    )
    update.add_argument("run", type=Path, help="runs/<name> or its report.json")
    update.add_argument("--to", type=Path, help="baseline file (default baselines/<name>.json)")
    update.set_defaults(func=_baseline)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(soft_wrap=True)
    try:
        return int(args.func(args, console))
    except EdgeKDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
