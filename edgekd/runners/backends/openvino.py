"""OpenVINO runner (x86 CPU); it runs NNCF's Q/DQ ONNX as true INT8 kernels."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from edgekd.runners.base import (
    Job,
    LatencyStats,
    MeasureProtocol,
    Remote,
    Takes,
    job_stats,
    missing,
    register,
    time_calls,
)


@register("openvino")
class OpenVINORunner:
    name: ClassVar[str]
    takes: ClassVar[Takes] = "onnx"
    devices: ClassVar[tuple[str, ...]] = ("cpu",)  # edgekd runs OpenVINO on the x86 CPU only
    remote: ClassVar[Remote] = "edgekd"
    why_not: ClassVar[str] = ""

    def available(self, device: str) -> str | None:
        return missing("openvino", "pip install openvino")

    def precisions(self, file_precision: str) -> list[str]:
        return [file_precision]

    def prepare(self, job: Job) -> Any:
        import openvino as ov

        core = ov.Core()
        # f32 precision hint: on CPUs with bf16 support OpenVINO otherwise silently runs
        # "FP32" models in bf16 (measured here: logits off by ~1e-3), which is not what the
        # row claims. INT8 layers stay INT8 either way.
        compiled = core.compile_model(
            str(job.model),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": job.threads,
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
                "INFERENCE_PRECISION_HINT": "f32",
            },
        )
        return {"compiled": compiled, "request": compiled.create_infer_request(), "job": job}

    def infer(self, session: Any, inputs: np.ndarray) -> np.ndarray:
        result = session["request"].infer({0: inputs})
        return np.asarray(next(iter(result.values())))

    def measure(self, session: Any, protocol: MeasureProtocol, inputs: np.ndarray) -> LatencyStats:
        import openvino as ov

        request, job = session["request"], session["job"]
        times = time_calls(lambda: request.infer({0: inputs}), protocol)
        return job_stats(
            times,
            self.name,
            job,
            protocol,
            inputs.shape[0],
            copies_included=False,
            versions={"openvino": ov.__version__},
        )
