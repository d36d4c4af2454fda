"""OpenVINO runner (x86 CPU); it runs NNCF's Q/DQ ONNX as true INT8 kernels."""

from __future__ import annotations

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


@RUNNERS.register("openvino")
class OpenVINORunner:
    name = "openvino"

    def available(self) -> str | None:
        return missing("openvino", "pip install openvino")

    def prepare(self, model: Path, threads: int) -> Any:
        import openvino as ov

        core = ov.Core()
        # f32 precision hint: on CPUs with bf16 support OpenVINO otherwise silently runs
        # "FP32" models in bf16 (measured here: logits off by ~1e-3), which is not what the
        # row claims. INT8 layers stay INT8 either way.
        compiled = core.compile_model(
            str(model),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
                "INFERENCE_PRECISION_HINT": "f32",
            },
        )
        return {
            "compiled": compiled,
            "request": compiled.create_infer_request(),
            "threads": threads,
        }

    def infer(self, session: Any, inputs: np.ndarray) -> np.ndarray:
        result = session["request"].infer({0: inputs})
        return np.asarray(next(iter(result.values())))

    def measure(
        self, session: Any, protocol: MeasureProtocol, inputs: np.ndarray, precision: str
    ) -> LatencyStats:
        import openvino as ov

        request = session["request"]
        times = time_calls(lambda: request.infer({0: inputs}), protocol)
        return summarize(
            times,
            runtime=self.name,
            device="cpu",
            precision=precision,
            batch=inputs.shape[0],
            threads=session["threads"],
            warmup=protocol.warmup,
            copies_included=False,
            versions={"openvino": ov.__version__},
        )
