"""The command line: edgekd run | validate | check."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from edgekd import __version__
from edgekd.errors import EdgeKDError


def _run(args: argparse.Namespace, console: Console) -> int:
    from edgekd import pipeline

    plan = pipeline.load_plan(args.pipeline)
    result = pipeline.run(plan, out=args.out, from_stage=args.from_stage, console=console)
    console.print(f"run folder: {result['run_dir']}")
    return 0


def _validate(args: argparse.Namespace, console: Console) -> int:
    from edgekd import pipeline

    plan = pipeline.load_plan(args.pipeline)
    stages = " → ".join(s.name for s in plan.stages)
    console.print(f"{args.pipeline}: ok ({stages}; {len(plan.targets)} targets)")
    return 0


def _check(args: argparse.Namespace, console: Console) -> int:
    from edgekd.artifacts import read_json
    from edgekd.report.gate import Limits, check

    def load(path: Path) -> dict:
        try:
            return dict(read_json(path))
        except (OSError, ValueError) as exc:
            raise EdgeKDError(f"cannot read report {path}: {exc}") from None

    limits = Limits(**{k: getattr(args, k) for k in Limits.__dataclass_fields__})
    results = check(load(args.report), limits, load(args.baseline) if args.baseline else None)
    if not results:
        raise EdgeKDError("no limits given; see `edgekd check --help`")
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return 0 if all(ok for _, ok, _ in results) else 1


def build_parser() -> argparse.ArgumentParser:
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
    run.set_defaults(func=_run)

    validate = sub.add_parser(
        "validate", help="check a pipeline without running it (does not import torch)"
    )
    validate.add_argument("pipeline", type=Path)
    validate.set_defaults(func=_validate)

    gate = sub.add_parser("check", help="gate a report.json for CI: exit 1 when a limit fails")
    gate.add_argument("report", type=Path, help="runs/<name>/report.json")
    gate.add_argument("--baseline", type=Path, help="an earlier report.json to compare with")
    for flag, kind, text in (
        ("min-acc", float, "least final test accuracy, %"),
        ("max-acc-drop", float, "most teacher − final accuracy, points"),
        ("max-params", int, "most final parameters"),
        ("max-bytes-ratio", float, "most final/teacher ONNX bytes"),
        ("max-latency-ms", float, "most final median latency (fastest measured runtime)"),
        ("max-acc-regression", float, "most accuracy lost vs --baseline, points"),
        ("max-latency-regression", float, "most latency ratio vs --baseline, e.g. 1.1"),
    ):
        gate.add_argument(f"--{flag}", type=kind, help=text)
    gate.set_defaults(func=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
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
