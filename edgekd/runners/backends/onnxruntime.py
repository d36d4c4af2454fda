"""onnxruntime runners: the CPU provider, the CUDA provider on a GPU, and the TensorRT provider."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
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


def _provider_missing(provider: str) -> str | None:
    import onnxruntime as ort

    if provider in ort.get_available_providers():
        return None
    return (
        f"onnxruntime {ort.__version__} has no {provider} (it has "
        f"{', '.join(ort.get_available_providers())}): pip install onnxruntime-gpu"
    )


@register("onnxruntime")
class OnnxRuntimeRunner:
    """The ONNX file as it is: FP32, or INT8 Q/DQ run by onnxruntime's own INT8 kernels."""

    name: ClassVar[str]
    takes: ClassVar[Takes] = "onnx"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    remote: ClassVar[Remote] = "edgekd"
    why_not: ClassVar[str] = ""

    def available(self, device: str) -> str | None:
        reason = missing("onnxruntime", "pip install onnxruntime")
        if reason is None and device == "cuda":
            reason = _provider_missing("CUDAExecutionProvider")
        return reason

    def precisions(self, file_precision: str) -> list[str]:
        return [file_precision]

    def providers(self, job: Job) -> list[Any]:
        if job.device == "cuda":
            return ["CUDAExecutionProvider"]
        return ["CPUExecutionProvider"]

    def prepare(self, job: Job) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = job.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(job.model), options, providers=self.providers(job))
        return {"session": session, "job": job}

    def infer(self, session: Any, inputs: np.ndarray) -> np.ndarray:
        ort_session = session["session"]
        return ort_session.run(None, {ort_session.get_inputs()[0].name: inputs})[0]

    def measure(self, session: Any, protocol: MeasureProtocol, inputs: np.ndarray) -> LatencyStats:
        import onnxruntime as ort

        ort_session, job = session["session"], session["job"]
        feed = {ort_session.get_inputs()[0].name: inputs}
        times = time_calls(lambda: ort_session.run(None, feed), protocol)
        # numpy in, numpy out: on a GPU every timed run includes both copies
        return job_stats(
            times,
            self.name,
            job,
            protocol,
            inputs.shape[0],
            copies_included=job.device == "cuda",
            versions={"onnxruntime": ort.__version__},
            extra={"providers": ort_session.get_providers()},
        )


@register("onnxruntime-trt")
class OnnxRuntimeTensorRTRunner(OnnxRuntimeRunner):
    """onnxruntime's TensorRT provider: FP32, FP16 built from an FP32 file, or Q/DQ INT8."""

    takes: ClassVar[Takes] = "onnx_qdq"  # TensorRT folds and fuses NNCF's Q/DQ itself
    devices: ClassVar[tuple[str, ...]] = ("cuda",)

    def available(self, device: str) -> str | None:
        return missing("onnxruntime", "pip install onnxruntime-gpu") or _provider_missing(
            "TensorrtExecutionProvider"
        )

    def precisions(self, file_precision: str) -> list[str]:
        return ["fp32", "fp16"] if file_precision == "fp32" else [file_precision]

    def providers(self, job: Job) -> list[Any]:
        options: dict[str, Any] = {"trt_fp16_enable": job.precision in ("fp16", "int8")}
        if job.workdir is not None:
            options.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=str(job.workdir),
                trt_timing_cache_enable=True,
                trt_timing_cache_path=str(job.workdir),
            )
        return [("TensorrtExecutionProvider", options), "CUDAExecutionProvider"]


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
