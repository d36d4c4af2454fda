"""Real onnxruntime and OpenVINO runs on a tiny model; unreachable targets give reasons."""

import numpy as np
import pytest
import torch

from edgekd.config.schema import Connection, TargetProfile
from edgekd.export.onnx import export_onnx, onnx_logits
from edgekd.models import zoo
from edgekd.models.specs import ModelSpec
from edgekd.runners.base import MeasureProtocol, summarize, time_calls
from edgekd.runners.targets import BenchModel, get_runner, measure_target, unreachable

CPU_TARGET = TargetProfile(
    name="cpu",
    kind="local-cpu",
    runtimes=["onnxruntime", "openvino"],
    precisions=["fp32", "int8"],
    threads=1,
)
PROTOCOL = MeasureProtocol(warmup=2, iterations=15, min_seconds=0.0, batch=1)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = zoo.build(ModelSpec(arch="tiny_cnn"), 1, 10).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(model, torch.zeros(1, 1, 28, 28), path)
    return path


def test_protocol_runs_at_least_iterations_and_seconds():
    calls = []
    times = time_calls(
        lambda: calls.append(1), MeasureProtocol(warmup=3, iterations=10, min_seconds=0.05)
    )
    assert len(times) >= 10 and len(calls) == len(times) + 3
    assert sum(times) <= 1000 * 0.05 + 50 or len(times) == 10 or len(times) > 10


def test_summary_statistics_are_ordered():
    stats = summarize(
        [1.0, 2.0, 3.0, 4.0, 100.0],
        runtime="r",
        device="cpu",
        precision="fp32",
        batch=1,
        threads=1,
        warmup=0,
        copies_included=False,
    )
    assert stats.median_ms == 3.0 and stats.mean_ms == 22.0
    assert stats.median_ms <= stats.p90_ms <= stats.p99_ms <= 100.0
    assert stats.ci95_ms > 0


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runner_outputs_match_and_latency_is_recorded(tiny_onnx, runtime):
    runner = get_runner(runtime)
    assert runner is not None and runner.available() is None
    images = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    session = runner.prepare(tiny_onnx, threads=1)
    np.testing.assert_allclose(
        runner.infer(session, images), onnx_logits(tiny_onnx, torch.from_numpy(images)), atol=1e-4
    )
    stats = runner.measure(session, PROTOCOL, images[:1], "fp32")
    assert stats.runtime == runtime and stats.threads == 1 and stats.iterations >= 15
    assert 0 < stats.median_ms <= stats.p99_ms
    assert stats.versions


def test_measure_target_rows(tiny_onnx):
    images = np.zeros((4, 1, 28, 28), np.float32)
    reference = {"final": onnx_logits(tiny_onnx, torch.from_numpy(images))}
    models = [BenchModel("final", tiny_onnx, "fp32")]
    rows = measure_target(CPU_TARGET, "cpu.yaml", models, PROTOCOL, images, reference)
    assert [r["runtime"] for r in rows] == ["onnxruntime", "openvino"]
    assert all(r["status"] == "ok" and r["top1_agreement"] == 100.0 for r in rows)
    fp16_only = CPU_TARGET.model_copy(update={"precisions": ["fp16"]})
    rows = measure_target(fp16_only, "cpu.yaml", models, PROTOCOL, images, reference)
    assert {r["status"] for r in rows} == {"skipped"}
    assert "does not list fp32" in rows[0]["reason"]


def test_broken_model_becomes_a_failed_row(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    images = np.zeros((1, 1, 28, 28), np.float32)
    rows = measure_target(
        CPU_TARGET,
        "cpu.yaml",
        [BenchModel("final", bad, "fp32")],
        PROTOCOL,
        images,
        {"final": np.zeros((1, 10))},
    )
    assert {r["status"] for r in rows} == {"failed"} and rows[0]["reason"]


def test_unreachable_targets_say_why():
    jetson = TargetProfile(
        name="j",
        kind="remote-ssh",
        runtimes=["tensorrt"],
        precisions=["int8"],
        connection=Connection(),
    )
    assert "set connection.host" in unreachable(jetson, "targets/j.yaml")
    assert "targets/j.yaml" in unreachable(jetson, "targets/j.yaml")
    gpu = TargetProfile(name="g", kind="local-gpu", runtimes=["tensorrt"], precisions=["fp16"])
    reason = unreachable(gpu, "targets/gpu.yaml")
    if not torch.cuda.is_available():
        assert reason == "no NVIDIA GPU with CUDA on this machine"
    assert unreachable(CPU_TARGET, "cpu.yaml") is None
