"""A stand-in for NVIDIA's trtexec, for the SSH tests: the real one needs an NVIDIA GPU.

It accepts the arguments edgekd passes and writes what trtexec writes, in trtexec's formats
(build log facts, `--exportOutput` JSON, `--exportTimes` JSON, the performance summary), with
outputs computed by onnxruntime from the ONNX file the "engine" was built from, so the check
against PyTorch is real. `FAKE_TRT_VERSION` in a file beside it simulates a TensorRT upgrade.

DLA builds (`--useDLACore=N`) follow TensorRT's rules for DLA: FP16 or INT8 only, min = opt =
max shapes, and the engine runs only at the shape it was built for; the build log lists the
layers on DLA and on the GPU as TensorRT prints them. Every call's arguments are appended to
`calls.jsonl` beside it, so the tests can read what reached the "device".
"""

import json
import sys
import time
from pathlib import Path

import numpy as np


def fail(message: str) -> int:
    print(f"[E] {message}")
    return 1


def build(args: dict[str, str]) -> int:
    assert "maxShapes" in args and "timingCacheFile" in args, args
    shapes = [args[k].split(":")[1] for k in ("minShapes", "optShapes", "maxShapes")]
    engine = {"onnx": str(Path(args["onnx"]).resolve()), "shapes": shapes, "dla_core": None}
    if "useDLACore" in args:
        if "fp16" not in args and "int8" not in args:
            return fail("DLA supports only FP16 and INT8 precision")
        if len(set(shapes)) != 1:
            return fail("DLA does not support dynamic shapes: min, opt and max must be equal")
        engine["dla_core"] = int(args["useDLACore"])
        print("[I] [TRT] ---------- Layers Running on DLA ----------")
        print("[I] [TRT] [DlaLayer] {ForeignNode[/features/features.0/Conv.../head/Gemm]}")
        print("[I] [TRT] ---------- Layers Running on GPU ----------")
        if "allowGPUFallback" in args:  # the reshape after the head: a GPU layer
            print("[I] [TRT] [GpuLayer] SHUFFLE: reshape_after_/head/Gemm")
    Path(args["saveEngine"]).write_text(json.dumps(engine))
    return 0


def main(argv: list[str]) -> int:
    args = dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in argv)
    with Path(__file__).with_name("calls.jsonl").open("a") as log:
        log.write(json.dumps(argv) + "\n")
    version_file = Path(__file__).with_name("FAKE_TRT_VERSION")
    version = version_file.read_text().strip() if version_file.exists() else "10.3.0"
    print(
        f"[I] TensorRT version: {version}\n[I] Selected Device: Orin\n[I] Compute Capability: 8.7"
    )
    if "onnx" in args:
        return build(args)
    import onnxruntime as ort

    engine = json.loads(Path(args["loadEngine"]).read_text())
    name, dims = args["shapes"].split(":")
    if engine["dla_core"] is not None and dims != engine["shapes"][0]:
        return fail(f"DLA engine built for {engine['shapes'][0]} cannot run {dims}")
    session = ort.InferenceSession(engine["onnx"])
    shape = [int(d) for d in dims.split("x")]
    if "loadInputs" in args:
        x = np.fromfile(args["loadInputs"].split(":", 1)[1], np.float32).reshape(shape)
        y = session.run(None, {name: x})[0]
        dims_text = "x".join(str(d) for d in y.shape)
        out = [{"name": "logits", "dimensions": dims_text, "values": y.ravel().tolist()}]
        Path(args["exportOutput"]).write_text(json.dumps(out))
        return 0
    x = np.zeros(shape, np.float32)
    times = []
    for _ in range(int(args["iterations"])):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1000)
    entries = [{"count": len(times)}] + [{"latencyMs": t, "computeMs": t * 0.9} for t in times]
    Path(args["exportTimes"]).write_text(json.dumps(entries))
    med = float(np.median(times))
    print("[I] === Performance summary ===\n[I] Throughput: 1000 qps")
    print(
        f"[I] Latency: min = {min(times)} ms, max = {max(times)} ms, mean = {np.mean(times)} ms, "
        f"median = {med} ms, percentile(90%) = {np.percentile(times, 90)} ms, "
        f"percentile(99%) = {np.percentile(times, 99)} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
