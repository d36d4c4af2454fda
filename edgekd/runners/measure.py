"""Measures one model with one runtime in a fresh process: `python -m edgekd.runners.measure`.

Timing inside the training process was not repeatable: two pipeline runs' INT8 models with the
same graph measured 0.29 ms and 0.53 ms (onnxruntime, batch 1, 2 threads), while fresh processes
timed them at 0.39 and 0.40 ms. A clean process per measurement has no leftover thread pools,
allocator state or spinning workers from PyTorch; it is also how the same entry point runs on a
remote device.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.runners.base import MeasureProtocol

if TYPE_CHECKING:
    from edgekd.runners.targets import BenchModel

TIMEOUT_S = 600


class MeasureError(RuntimeError):
    """The measuring process failed; the message holds the end of its error output."""


def measure_in_subprocess(
    runtime: str, model: BenchModel, threads: int, protocol: MeasureProtocol, images: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """(outputs on `images`, latency statistics) of `model` under `runtime`, in a new process."""
    with tempfile.TemporaryDirectory(prefix="edgekd-measure-") as tmp:
        inputs, result = Path(tmp) / "inputs.npy", Path(tmp) / "result.json"
        np.save(inputs, images)
        command = [
            sys.executable,
            "-m",
            "edgekd.runners.measure",
            "--runtime",
            runtime,
            "--model",
            str(model.path),
            "--precision",
            model.precision,
            "--threads",
            str(threads),
            "--inputs",
            str(inputs),
            "--out",
            str(result),
            "--protocol",
            json.dumps(asdict(protocol)),
        ]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise MeasureError(f"{runtime} did not finish within {TIMEOUT_S} s") from None
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            raise MeasureError(lines[-1] if lines else f"exit code {proc.returncode}")
        outputs = np.load(Path(tmp) / "outputs.npy")
        return outputs, json.loads(result.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="measure one model with one runtime")
    parser.add_argument("--runtime", required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--precision", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--inputs", type=Path, required=True, help=".npy of real images")
    parser.add_argument("--protocol", required=True, help="MeasureProtocol as JSON")
    parser.add_argument(
        "--out", type=Path, required=True, help="result JSON; outputs.npy is written beside it"
    )
    args = parser.parse_args(argv)
    from edgekd.runners.targets import get_runner

    runner = get_runner(args.runtime)
    if runner is None:
        raise SystemExit(f"no runner named {args.runtime}")
    protocol = MeasureProtocol(**json.loads(args.protocol))
    images = np.load(args.inputs)
    session = runner.prepare(args.model, args.threads)
    np.save(args.out.parent / "outputs.npy", runner.infer(session, images))
    stats = runner.measure(session, protocol, images[: protocol.batch], args.precision)
    args.out.write_text(json.dumps(stats.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
