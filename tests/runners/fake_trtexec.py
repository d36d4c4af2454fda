"""A stand-in for NVIDIA's trtexec, for the SSH tests: the real one needs an NVIDIA GPU.

It accepts the arguments edgekd passes and writes what trtexec writes, in trtexec's formats
(build log facts, `--exportOutput` JSON, `--exportTimes` JSON, the performance summary), with
outputs computed by onnxruntime from the ONNX file the "engine" was built from, so the check
against PyTorch is real. `FAKE_TRT_VERSION` in a file beside it simulates a TensorRT upgrade.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    args = dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in argv)
    version_file = Path(__file__).with_name("FAKE_TRT_VERSION")
    version = version_file.read_text().strip() if version_file.exists() else "10.3.0"
    print(
        f"[I] TensorRT version: {version}\n[I] Selected Device: Orin\n[I] Compute Capability: 8.7"
    )
    if "onnx" in args:  # build
        assert "maxShapes" in args and "timingCacheFile" in args, args
        Path(args["saveEngine"]).write_text(str(Path(args["onnx"]).resolve()))
        return 0
    import onnxruntime as ort

    session = ort.InferenceSession(Path(args["loadEngine"]).read_text())
    name, dims = args["shapes"].split(":")
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
