"""Measures one model with one runtime in a fresh process: `python -m edgekd.runners.measure`.

Timing inside the training process was not repeatable: two pipeline runs' INT8 models with the
same graph measured 0.29 ms and 0.53 ms (onnxruntime, batch 1, 2 threads), while fresh processes
timed them at 0.39 and 0.40 ms. A clean process per measurement has no leftover thread pools,
allocator state or spinning workers from PyTorch; it is also the entry point a remote device
runs over SSH (`runner: onnxruntime` in a remote profile).

The process writes `outputs.npy` (the model's outputs on every given image, for the check against
the reference) and the result JSON (latency statistics) beside each other.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.runners.base import (
    Job,
    MeasureProtocol,
    batch_of,
    get_runner,
    in_chunks,
    pin_threads,
)

TIMEOUT_S = 900


class MeasureError(RuntimeError):
    """The measuring process failed; the message holds the end of its error output."""


def command_args(
    runtime: str, job: Job, protocol: MeasureProtocol, inputs: str, out: str
) -> list[str]:
    """Arguments after `python -m edgekd.runners.measure`; paths as the measuring side sees them."""
    args = [
        "--runtime",
        runtime,
        "--model",
        str(job.model),
        "--precision",
        job.precision,
        "--threads",
        str(job.threads),
        "--device",
        job.device,
        "--max-batch",
        str(job.max_batch),
        "--inputs",
        inputs,
        "--out",
        out,
        "--protocol",
        json.dumps(asdict(protocol)),
    ]
    if job.workdir is not None:
        args += ["--workdir", str(job.workdir)]
    return args


def last_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit code {proc.returncode}"


def measure_in_subprocess(
    runtime: str, job: Job, protocol: MeasureProtocol, images: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """(outputs on `images`, latency statistics) of `job` under `runtime`, in a new process."""
    with tempfile.TemporaryDirectory(prefix="edgekd-measure-") as tmp:
        inputs, result = Path(tmp) / "inputs.npy", Path(tmp) / "result.json"
        np.save(inputs, images)
        command = [
            sys.executable,
            "-m",
            "edgekd.runners.measure",
            *command_args(runtime, job, protocol, str(inputs), str(result)),
        ]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise MeasureError(f"{runtime} did not finish within {TIMEOUT_S} s") from None
        if proc.returncode != 0:
            raise MeasureError(last_error_line(proc))
        outputs = np.load(Path(tmp) / "outputs.npy")
        return outputs, json.loads(result.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="measure one model with one runtime")
    parser.add_argument("--runtime", required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--precision", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--inputs", type=Path, required=True, help=".npy of real images")
    parser.add_argument("--protocol", required=True, help="MeasureProtocol as JSON")
    parser.add_argument(
        "--out", type=Path, required=True, help="result JSON; outputs.npy is written beside it"
    )
    args = parser.parse_args(argv)
    cpus = pin_threads(args.threads) if args.device == "cpu" else []
    runner = get_runner(args.runtime)
    protocol = MeasureProtocol(**json.loads(args.protocol))
    images = np.load(args.inputs)
    job = Job(
        model=args.model,
        precision=args.precision,
        threads=args.threads,
        device=args.device,
        workdir=args.workdir,
        max_batch=args.max_batch,
    )
    session = runner.prepare(job)
    outputs = in_chunks(lambda x: runner.infer(session, x), images, args.max_batch)
    np.save(args.out.parent / "outputs.npy", outputs)
    stats = runner.measure(session, protocol, batch_of(images, protocol.batch)).to_json()
    stats["cpus"] = cpus
    args.out.write_text(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
