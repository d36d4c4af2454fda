"""`edgekd optimize` on INT8 files that other tools made, at 224×224×3: torchvision's
MobileNetV2 ×0.35 quantized by NNCF PTQ and exported as NNCF users do (float weights read
through QuantizeLinear), and the same network quantized by onnxruntime's quantize_static (QDQ,
its defaults; per-tensor and per-channel weights). For each file: latency before and after the
rewrite in onnxruntime and OpenVINO, both files timed by the same command, interleaved in fresh
processes, and the parity of the rewritten file with the input.

The reference figures (issue 12): NNCF's file of this network ran 2.70 ms in onnxruntime vs
0.41 ms in OpenVINO as exported.

    python benchmarks/optimize.py [--rounds 5] [--out docs/benchmarks/optimize.md]
    python benchmarks/optimize.py --smoke --out /tmp/optimize.md   # does it work? (no numbers)

The weights are random (no downloads on the development machines) with BatchNorm statistics
collected on random images; latency does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from provenance import commit  # benchmarks/provenance.py

from edgekd.artifacts import library_versions, write_text
from edgekd.runners.base import MeasureProtocol, cpu_name, default_threads

MADE_BY = commit()
ROOT = Path(__file__).resolve().parents[1]
TARGET_DOC = ROOT / "docs" / "benchmarks" / "optimize.md"
EDGEKD = Path(sys.executable).with_name("edgekd")
SHAPE = (3, 224, 224)
PROTOCOL = MeasureProtocol(warmup=50, iterations=500, min_seconds=2.0)
SMOKE = MeasureProtocol(warmup=2, iterations=10, min_seconds=0.0)
CALIBRATION = 64  # random images for BatchNorm statistics and for both quantizers
RUNTIMES = ("onnxruntime", "openvino")


def random_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


def mobilenet() -> torch.nn.Module:
    """torchvision's MobileNetV2 ×0.35, 1000 classes, BatchNorm statistics from random images."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None, width_mult=0.35).train()
    with torch.no_grad():
        for i in range(0, CALIBRATION, 16):
            model(torch.from_numpy(random_images(16, i)))
    return model.eval()


def nncf_file(model: torch.nn.Module, work: Path) -> Path:
    """NNCF PTQ with its defaults, stripped and exported by torch.onnx as its users do."""
    import nncf

    from edgekd.export.onnx import export_onnx

    batches = [torch.from_numpy(random_images(16, 1000 + i)) for i in range(CALIBRATION // 16)]
    quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=CALIBRATION)
    example = torch.zeros(1, *SHAPE)
    path = work / "mobilenetv2_035_nncf_int8.onnx"
    export_onnx(nncf.strip(quantized, example_input=example), example, path)
    return path


def ort_file(model: torch.nn.Module, work: Path, per_channel: bool) -> Path:
    """onnxruntime's quantize_static on the FP32 export: QDQ, its defaults otherwise."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from edgekd.export.onnx import INPUT, export_onnx

    fp32 = work / "mobilenetv2_035_fp32.onnx"
    if not fp32.exists():
        export_onnx(model, torch.zeros(1, *SHAPE), fp32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT: random_images(1, 2000 + i)} for i in range(CALIBRATION)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    path = work / f"mobilenetv2_035_ort_int8_{'per_channel' if per_channel else 'per_tensor'}.onnx"
    quantize_static(
        str(fp32), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel
    )
    return path


def run_optimize(path: Path, protocol: MeasureProtocol, rounds: int) -> tuple[list[str], dict]:
    """`edgekd optimize` as a user runs it; (the command, its JSON result)."""
    out, result = path.with_name(f"{path.stem}_optimized.onnx"), path.with_suffix(".json")
    command = [str(EDGEKD), "optimize", str(path), "-o", str(out), "--json", str(result)]
    for runtime in RUNTIMES:
        command += ["--runtime", runtime]
    command += ["--warmup", str(protocol.warmup), "--iterations", str(protocol.iterations)]
    command += ["--min-seconds", str(protocol.min_seconds), "--rounds", str(rounds)]
    subprocess.run(command, check=True)
    shown = [Path(command[0]).name, *(c.replace(str(path.parent), "WORK") for c in command[1:])]
    return shown, json.loads(result.read_text())


def rows(name: str, result: dict[str, Any]) -> list[str]:
    """One Markdown row per runtime: before and after, the rounds' medians and the checks."""
    lines = []
    by_key = {(r["model"], r["runtime"]): r for r in result.get("bench") or []}
    for runtime in RUNTIMES:
        before, after = by_key.get(("input", runtime)), by_key.get(("optimized", runtime))
        cells = [name, runtime]
        for row in (before, after):
            if row is None or row["status"] != "ok":
                cells.append("–" if row is None else f"{row['status']}: {row['reason'][:80]}")
            else:
                rounds = ", ".join(f"{m:.3f}" for m in row.get("round_medians_ms", []))
                check = "pass" if row["check"]["passed"] else "FAIL"
                cells.append(f"**{row['median_ms']:.3f}** ({rounds}; {check})")
        ok = before and after and before["status"] == after["status"] == "ok"
        cells.append(f"×{before['median_ms'] / after['median_ms']:.2f}" if ok else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def facts(name: str, result: dict[str, Any]) -> list[str]:
    check, ops = result.get("check") or {}, result["integer_ops"]
    done = {k: v for k, v in (result.get("rewrites") or {}).items() if v}
    lines = [
        f"- **{name}**: "
        + ("rewritten" if result["changed"] else f"left unchanged: {result['reason']}"),
        f"  - weight QuantizeLinear nodes folded: {result['weights_folded']}; rewrites: "
        + (", ".join(f"{k} {v}" for k, v in done.items()) or "none"),
        f"  - integer ops onnxruntime runs: before {ops['before']}, after {ops.get('after', '–')}",
    ]
    if "max_abs_diff" in check:
        lines.append(
            f"  - parity with the input in onnxruntime on {result['checked_on']}: max |diff| "
            f"{check['max_abs_diff']:.3g}, top-1 agreement {check['top1_agreement']:.2f} %"
        )
    lines += [f"  - left as it was: {reason}" for reason in result.get("skipped") or []]
    return lines


def render(
    results: list[tuple[str, list[str], dict]], args: argparse.Namespace, wall: float
) -> str:
    protocol = SMOKE if args.smoke else PROTOCOL
    versions = library_versions()
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    lines = ["# `edgekd optimize` on other tools' INT8 files (MobileNetV2 ×0.35, 224×224×3)", ""]
    if args.smoke:
        lines += [
            "> **Smoke run, not a measurement**: tiny iteration counts on a shared machine; these "
            "timings say only that the script works.",
            "",
        ]
    lines += [
        f"Measured at {MADE_BY} by `python benchmarks/optimize.py"
        + (" --smoke" if args.smoke else "")
        + f" --rounds {args.rounds}` on {cpu_name()} ({default_threads()} cores, "
        f"{platform.machine()}), {now}, in {wall / 60:.1f} min. Batch 1, "
        f"{default_threads()} threads; each row is timed {args.rounds} times in fresh processes, "
        f"the two files' rows interleaved: {protocol.warmup} warm-up runs, then at least "
        f"{protocol.iterations} runs and {protocol.min_seconds:g} s; **ms** is the median of the "
        "rounds' medians (each round's median in brackets). Every row is checked first against "
        "the input file's onnxruntime outputs (≥ 99 % top-1 agreement). Versions: "
        + ", ".join(f"{k} {versions[k]}" for k in ("onnxruntime", "openvino", "nncf", "torch"))
        + ".",
        "",
        "Reference figures (issue 12, NNCF's file of this network as exported): 2.70 ms in "
        "onnxruntime vs 0.41 ms in OpenVINO.",
        "",
        "| file | runtime | as exported, ms | after `edgekd optimize`, ms | speed-up |",
        "|---|---|---|---|---|",
    ]
    for name, _, result in results:
        lines += rows(name, result)
    lines += ["", "## What the rewrite did", ""]
    for name, _, result in results:
        lines += facts(name, result)
    lines += ["", "## Commands", ""]
    lines += [f"- {name}: `{' '.join(cmd)}`" for name, cmd, _ in results]
    lines += ["", "WORK is the script's temporary folder, where it builds the files."]
    lines += [
        "",
        "The network has random weights: on random inputs it predicts few distinct classes, so "
        "top-1 agreement says little; the max |diff| of the logits is the check that matters.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per row")
    parser.add_argument("--smoke", action="store_true", help="tiny iteration counts: no numbers")
    parser.add_argument("--out", type=Path, default=TARGET_DOC)
    args = parser.parse_args()
    start = time.time()
    protocol = SMOKE if args.smoke else PROTOCOL
    with tempfile.TemporaryDirectory(prefix="edgekd-optimize-bench-") as tmp:
        work = Path(tmp)
        model = mobilenet()
        files = {
            "NNCF PTQ": nncf_file(model, work),
            "onnxruntime quantize_static, per-tensor": ort_file(model, work, per_channel=False),
            "onnxruntime quantize_static, per-channel": ort_file(model, work, per_channel=True),
        }
        results = [
            (name, *run_optimize(path, protocol, args.rounds)) for name, path in files.items()
        ]
    write_text(args.out, render(results, args, time.time() - start))
    print(args.out.read_text())


if __name__ == "__main__":
    sys.exit(main())
