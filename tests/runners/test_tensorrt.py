"""TensorRT: the provenance rules run everywhere; building and timing engines needs an NVIDIA
GPU with TensorRT and is skipped, with the reason, elsewhere."""

import json

import numpy as np
import pytest
import torch

from edgekd.export.onnx import export_onnx
from edgekd.models import zoo
from edgekd.models.specs import ModelSpec
from edgekd.runners.backends.tensorrt import EngineMismatchError, check_engine, mismatch
from edgekd.runners.base import Job, MeasureProtocol, get_runner

HERE = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "cuda": "12.6"}


def test_engine_from_another_gpu_or_version_is_refused(tmp_path):
    engine = tmp_path / "m.int8.engine"
    engine.write_bytes(b"serialized")
    with pytest.raises(EngineMismatchError, match="no provenance manifest"):
        check_engine(engine, HERE)
    engine.with_suffix(".json").write_text(json.dumps({**HERE, "onnx": "m.onnx"}))
    assert check_engine(engine, HERE)["gpu"] == "Orin"
    other = {**HERE, "gpu": "NVIDIA H100", "compute_capability": "9.0"}
    with pytest.raises(EngineMismatchError, match=r"rebuild it from m\.onnx") as err:
        check_engine(engine, other)
    assert "gpu 'Orin' (here 'NVIDIA H100')" in str(err.value)
    assert mismatch(HERE, {**HERE, "cuda": "12.2"}) is None  # CUDA minor: not an engine property
    assert "tensorrt '10.3.0'" in mismatch(HERE, {**HERE, "tensorrt": "10.7.0"})


requires_trt = pytest.mark.skipif(
    get_runner("tensorrt").available("cuda") is not None,
    reason=f"TensorRT path not runnable here: {get_runner('tensorrt').available('cuda')}",
)


@pytest.mark.gpu
@requires_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_matches_pytorch(tmp_path, precision):
    torch.manual_seed(0)
    model = zoo.build(ModelSpec(arch="tiny_cnn"), 1, 10).eval()
    path = tmp_path / "tiny.onnx"
    export_onnx(model, torch.zeros(1, 1, 28, 28), path)
    images = np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    runner = get_runner("tensorrt")
    job = Job(path, precision, 1, "cuda", tmp_path / "engines", max_batch=16)
    session = runner.prepare(job)
    got = runner.infer(session, images)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.99
    stats = runner.measure(
        session, MeasureProtocol(warmup=5, iterations=20, min_seconds=0), images[:1]
    )
    assert stats.extra["engine"]["precision"] == precision and stats.median_ms > 0
    assert runner.prepare(job)["manifest"]["reused"]  # the second prepare loads the cached engine


@pytest.mark.gpu
@pytest.mark.skipif(
    get_runner("onnxruntime").available("cuda") is not None,
    reason=f"CUDA provider not runnable here: {get_runner('onnxruntime').available('cuda')}",
)
def test_onnxruntime_cuda_provider_matches_cpu(tmp_path):
    model = zoo.build(ModelSpec(arch="tiny_cnn"), 1, 10).eval()
    path = tmp_path / "tiny.onnx"
    export_onnx(model, torch.zeros(1, 1, 28, 28), path)
    images = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    runner = get_runner("onnxruntime")
    cpu = runner.infer(runner.prepare(Job(path, "fp32", 1)), images)
    gpu = runner.infer(runner.prepare(Job(path, "fp32", 1, "cuda")), images)
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)
