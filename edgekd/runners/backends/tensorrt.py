"""TensorRT runner (local NVIDIA GPU, Python API): engines built from ONNX with a timing cache
and a provenance manifest, and refused on a GPU or TensorRT version they were not built for.

INT8 is explicit quantization: the Q/DQ nodes of the exported ONNX carry the scales, so no
calibrator runs and TensorRT's INT8 matches what NNCF trained. FP16 is built from the FP32 file.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgekd.artifacts import atomic_path, sha256_path, write_json
from edgekd.errors import BackendMissingError, EdgeKDError
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

# Facts of a build that must match the machine an engine runs on (TensorRT's own rule: engines
# are specific to the GPU model and the TensorRT version that built them).
DEVICE_KEYS = ("tensorrt", "gpu", "compute_capability")
TIMING_CACHE = "timing.cache"


class EngineMismatchError(EdgeKDError):
    """A serialized engine was built for another GPU or TensorRT version."""


def build_flags(precision: str) -> list[str]:
    """Builder flags per precision. INT8 keeps FP16 on so layers without Q/DQ need not fall
    back to FP32 (what `trtexec --int8 --fp16` does)."""
    return {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]


def jetpack_release() -> str | None:
    """The L4T release line of a Jetson (/etc/nv_tegra_release), None elsewhere."""
    try:
        return Path("/etc/nv_tegra_release").read_text().splitlines()[0].strip("# ").strip()
    except (OSError, IndexError):
        return None


def device_facts() -> dict[str, Any]:
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {
        "tensorrt": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
        "compute_capability": f"{major}.{minor}",
        "cuda": torch.version.cuda,
        "jetpack": jetpack_release(),
        "host": platform.node(),
    }


def mismatch(manifest: dict[str, Any], here: dict[str, Any]) -> str | None:
    """Why an engine with `manifest` must not run on a machine with `here`, or None."""
    diffs = [
        f"{key} {manifest.get(key)!r} (here {here.get(key)!r})"
        for key in DEVICE_KEYS
        if manifest.get(key) != here.get(key)
    ]
    return "built for " + ", ".join(diffs) if diffs else None


def check_engine(engine: Path, here: dict[str, Any]) -> dict[str, Any]:
    """The engine's manifest, after refusing an engine built elsewhere or without a manifest."""
    manifest_path = engine.with_suffix(".json")
    if not manifest_path.exists():
        raise EngineMismatchError(
            f"{engine}: no provenance manifest ({manifest_path.name}); edgekd does not run an "
            f"engine it cannot match to this GPU. Rebuild it from the ONNX file."
        )
    manifest = json.loads(manifest_path.read_text())
    reason = mismatch(manifest, here)
    if reason is not None:
        raise EngineMismatchError(
            f"{engine}: {reason}. TensorRT engines only run on the GPU model and TensorRT "
            f"version that built them: rebuild it from {manifest.get('onnx', 'the ONNX file')} "
            f"on this machine (edgekd bench MODEL.onnx --target ... builds one)."
        )
    return manifest


def engine_path(job: Job, onnx_hash: str, here: dict[str, Any]) -> Path:
    key = hashlib.sha256(
        json.dumps(
            [onnx_hash, job.precision, job.max_batch, *[here[k] for k in DEVICE_KEYS]]
        ).encode()
    ).hexdigest()[:16]
    assert job.workdir is not None
    return job.workdir / f"{job.model.stem}.{job.precision}.{key}.engine"


def build_engine(job: Job, out: Path, here: dict[str, Any]) -> dict[str, Any]:
    """Build `job.model` into `out` (+ manifest beside it), reusing the workdir's timing cache."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(job.model.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgeKDError(f"TensorRT cannot parse {job.model}: {errors}")
    config = builder.create_builder_config()
    for flag in build_flags(job.precision):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        rest = shape[1:]
        opt = 1 if shape[0] == -1 else shape[0]
        high = job.max_batch if shape[0] == -1 else shape[0]
        profile.set_shape(tensor.name, [opt, *rest], [opt, *rest], [high, *rest])
    config.add_optimization_profile(profile)
    cache_file = out.parent / TIMING_CACHE
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgeKDError(f"TensorRT could not build {job.model} at {job.precision}")
    build_s = time.perf_counter() - start
    with atomic_path(cache_file) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    with atomic_path(out) as tmp:
        tmp.write_bytes(bytes(serialized))
    manifest = {
        **here,
        "onnx": str(job.model),
        "onnx_sha256": sha256_path(job.model),
        "precision": job.precision,
        "builder_flags": build_flags(job.precision),
        "max_batch": job.max_batch,
        "build_s": round(build_s, 2),
        "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(out.with_suffix(".json"), manifest)
    return manifest


@register("tensorrt")
class TensorRTRunner:
    name: ClassVar[str]
    takes: ClassVar[Takes] = "onnx_qdq"  # TensorRT folds and fuses NNCF's Q/DQ itself
    devices: ClassVar[tuple[str, ...]] = ("cuda",)
    remote: ClassVar[Remote] = "trtexec"  # engines are built on the device that runs them
    why_not: ClassVar[str] = ""

    def available(self, device: str) -> str | None:
        import torch

        if not torch.cuda.is_available():
            return "PyTorch sees no CUDA device (edgekd drives TensorRT's buffers through it)"
        return missing("tensorrt", "pip install tensorrt")

    def precisions(self, file_precision: str) -> list[str]:
        return ["fp32", "fp16"] if file_precision == "fp32" else [file_precision]

    def prepare(self, job: Job) -> Any:
        import tensorrt as trt
        import torch

        if self.available(job.device) is not None:
            raise BackendMissingError(str(self.available(job.device)))
        here = device_facts()
        if job.model.suffix == ".engine":
            engine_file, manifest = job.model, check_engine(job.model, here)
        else:
            if job.workdir is None:
                raise EdgeKDError("the TensorRT runner needs a work folder for its engines")
            job.workdir.mkdir(parents=True, exist_ok=True)
            engine_file = engine_path(job, sha256_path(job.model), here)
            if engine_file.exists() and engine_file.with_suffix(".json").exists():
                manifest = check_engine(engine_file, here)
                manifest["reused"] = True
            else:
                manifest = build_engine(job, engine_file, here)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if engine is None:
            raise EngineMismatchError(f"{engine_file}: TensorRT could not load it; rebuild it")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        return {
            "engine": engine,
            "context": engine.create_execution_context(),
            "input": inputs[0],
            "output": outputs[0],
            "stream": torch.cuda.Stream(),
            "manifest": {**manifest, "engine": str(engine_file)},
            "job": job,
        }

    def _bind(self, session: Any, x: Any) -> Any:
        """Bind device tensor `x` as input and return a device tensor bound as output."""
        import tensorrt as trt
        import torch

        context, engine = session["context"], session["engine"]
        context.set_input_shape(session["input"], tuple(x.shape))
        out_shape = tuple(context.get_tensor_shape(session["output"]))
        dtype = torch.from_numpy(
            np.zeros(1, dtype=trt.nptype(engine.get_tensor_dtype(session["output"])))
        ).dtype
        y = torch.empty(out_shape, dtype=dtype, device="cuda")
        context.set_tensor_address(session["input"], x.data_ptr())
        context.set_tensor_address(session["output"], y.data_ptr())
        return y

    def infer(self, session: Any, inputs: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(inputs)).cuda()
        y = self._bind(session, x)
        stream = session["stream"]
        session["context"].execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return y.float().cpu().numpy()

    def measure(self, session: Any, protocol: MeasureProtocol, inputs: np.ndarray) -> LatencyStats:
        import tensorrt as trt
        import torch

        x = torch.from_numpy(np.ascontiguousarray(inputs)).cuda()
        self._bind(session, x)
        context, stream = session["context"], session["stream"]

        def call() -> None:
            context.execute_async_v3(stream.cuda_stream)
            stream.synchronize()

        times = time_calls(call, protocol)
        job = session["job"]
        return job_stats(
            times,
            self.name,
            job,
            protocol,
            inputs.shape[0],
            copies_included=False,  # inputs stay on the GPU; enqueue + execution are timed
            versions={"tensorrt": trt.__version__, "torch": torch.__version__},
            extra={"engine": session["manifest"]},
        )
