"""The command line: edgekd run | validate | targets | check."""

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
