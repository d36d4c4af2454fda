"""onnxruntime runner (CPU execution provider)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.runners.base import (
    RUNNERS,
    LatencyStats,
    MeasureProtocol,
    missing,
    summarize,
    time_calls,
)


@RUNNERS.register("onnxruntime")
class OnnxRuntimeRunner:
    name = "onnxruntime"

    def available(self) -> str | None:
        return missing("onnxruntime", "pip install onnxruntime")

    def prepare(self, model: Path, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        session.edgekd_threads = threads
        return session

    def infer(self, session: Any, inputs: np.ndarray) -> np.ndarray:
        return session.run(None, {session.get_inputs()[0].name: inputs})[0]

    def measure(
        self, session: Any, protocol: MeasureProtocol, inputs: np.ndarray, precision: str
    ) -> LatencyStats:
        import onnxruntime as ort

        feed = {session.get_inputs()[0].name: inputs}
        times = time_calls(lambda: session.run(None, feed), protocol)
        return summarize(
            times,
            runtime=self.name,
            device="cpu",
            precision=precision,
            batch=inputs.shape[0],
            threads=session.edgekd_threads,
            warmup=protocol.warmup,
            copies_included=False,
            versions={"onnxruntime": ort.__version__},
        )


def logits_function(model: Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function from a float32 NCHW batch to the model's first output, for an ONNX teacher.
    A model exported with a fixed batch of 1 is run image by image."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    fixed_one = spec.shape[0] == 1

    def run(images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if fixed_one and len(images) != 1:
            return np.concatenate([run(images[i : i + 1]) for i in range(len(images))])
        return np.asarray(session.run(None, {spec.name: images})[0], dtype=np.float32)

    return run
