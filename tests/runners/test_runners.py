"""Real onnxruntime, OpenVINO and PyTorch runs on tiny models: outputs checked against the
reference before timing, rows per runtime × precision × batch, the chosen row, and reasons for
every row that is not measured."""

import numpy as np
import pytest
import torch

from edgekd.config.schema import Connection, TargetProfile
from edgekd.export.onnx import export_onnx
from edgekd.models import zoo
from edgekd.models.io import save_model
from edgekd.models.specs import ModelSpec
from edgekd.runners.backends.onnxruntime import logits_function
from edgekd.runners.base import (
    RUNNERS,
    Job,
    MeasureProtocol,
    batch_of,
    get_runner,
    summarize,
    time_calls,
)
from edgekd.runners.targets import (
    BenchModel,
    BenchPlan,
    Reference,
    choose,
    measure_target,
    unreachable,
)
from tests.conftest import TOL

CPU_TARGET = TargetProfile(
    name="cpu",
    kind="local-cpu",
    runtimes=["onnxruntime", "openvino", "torch"],
    precisions=["fp32", "int8"],
    threads=1,
)
PROTOCOL = MeasureProtocol(warmup=2, iterations=15, min_seconds=0.0, batch=1)
PLAN = BenchPlan(protocol=PROTOCOL, batches=[1])
SPEC = ModelSpec(arch="tiny_cnn")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(ONNX file, model folder, real-looking inputs, eager PyTorch logits on them)."""
    torch.manual_seed(0)
    model = zoo.build(SPEC, 1, 10).eval()
    folder = tmp_path_factory.mktemp("tiny")
    path = folder / "tiny.onnx"
    export_onnx(model, torch.zeros(1, 1, 28, 28), path)
    save_model(
        model, folder / "model", {"spec": SPEC.model_dump(), "in_channels": 1, "num_classes": 10}
    )
    images = np.random.default_rng(0).standard_normal((40, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(images)).numpy()
    return path, folder / "model", images, logits


def test_protocol_runs_at_least_iterations_and_seconds():
    calls = []
    times = time_calls(
        lambda: calls.append(1), MeasureProtocol(warmup=3, iterations=10, min_seconds=0.05)
    )
    assert len(times) >= 10 and len(calls) == len(times) + 3
    calls.clear()
    times = time_calls(
        lambda: calls.append(1), MeasureProtocol(warmup=0, iterations=1, min_seconds=0.05)
    )
    assert len(times) > 1  # one call is far shorter than 50 ms: the seconds floor ruled


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
    assert stats.ci95_ms == pytest.approx(1.96 * np.std([1, 2, 3, 4, 100], ddof=1) / 5**0.5)


def test_batch_of_repeats_real_images():
    images = np.arange(3, dtype=np.float32).reshape(3, 1, 1, 1)
    assert batch_of(images, 5)[:, 0, 0, 0].tolist() == [0, 1, 2, 0, 1]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "torch"])
def test_runner_matches_pytorch_and_records_latency(tiny, runtime):
    path, folder, images, logits = tiny
    runner = get_runner(runtime)
    assert runner.available("cpu") is None
    model = folder if runtime == "torch" else path
    session = runner.prepare(Job(model=model, precision="fp32", threads=1, max_batch=40))
    np.testing.assert_allclose(runner.infer(session, images), logits, atol=TOL["onnx_fp32"])
    stats = runner.measure(session, PROTOCOL, images[:2])
    assert stats.runtime == runtime and stats.threads == 1 and stats.batch == 2
    assert stats.iterations >= 15 and 0 < stats.median_ms <= stats.p99_ms
    assert stats.versions and stats.precision == "fp32"


def test_runners_declare_what_they_take_where_they_run_and_how_remotely():
    table = {
        name: (RUNNERS.get(name).takes, RUNNERS.get(name).devices, RUNNERS.get(name).remote)
        for name in RUNNERS.names()
    }
    assert table == {
        "onnxruntime": ("onnx", ("cpu", "cuda"), "edgekd"),
        "onnxruntime-trt": ("onnx_qdq", ("cuda",), "edgekd"),
        "openvino": ("onnx", ("cpu",), "edgekd"),
        "tensorrt": ("onnx_qdq", ("cuda",), "trtexec"),
        "torch": ("model_dir", ("cpu", "cuda"), "edgekd"),
    }
    assert all(get_runner(name).name == name for name in RUNNERS.names())


def test_a_gpu_runner_on_a_cpu_target_is_a_row_that_says_why(tiny):
    path, folder, images, logits = tiny
    target = CPU_TARGET.model_copy(update={"runtimes": ["tensorrt", "onnxruntime-trt"]})
    rows = measure_target(
        target, "cpu.yaml", [BenchModel("final", path, "fp32", folder)], PLAN, images,
        {"final": Reference(logits, "torch")},
    )  # fmt: skip
    assert [(r["runtime"], r["status"]) for r in rows] == [
        ("tensorrt", "skipped"), ("onnxruntime-trt", "skipped"),
    ]  # fmt: skip
    assert all("runs on cuda, not cpu" in r["reason"] for r in rows)


def test_measure_target_checks_times_and_chooses(tiny):
    path, folder, images, logits = tiny
    models = [BenchModel("final", path, "fp32", folder)]
    plan = BenchPlan(protocol=PROTOCOL, batches=[1, 4])
    rows = measure_target(
        CPU_TARGET, "cpu.yaml", models, plan, images, {"final": Reference(logits, "torch")}
    )
    assert [(r["runtime"], r["batch"]) for r in rows] == [
        (rt, b) for rt in ("onnxruntime", "openvino", "torch") for b in (1, 4)
    ]
    for row in rows:
        assert row["status"] == "ok" and row["check"]["passed"], row
        assert row["check"]["top1_agreement"] == 100.0 and row["check"]["reference"] == "torch"
        assert row["check"]["images"] == len(images) and row["cpus"] == [row["cpus"][0]]
    for batch in (1, 4):
        same = [r for r in rows if r["batch"] == batch]
        chosen = [r for r in same if r.get("chosen")]
        assert len(chosen) == 1 and chosen[0]["median_ms"] == min(r["median_ms"] for r in same)


def test_a_row_that_fails_its_check_is_never_chosen(tiny):
    path, _, images, logits = tiny
    wrong = Reference(np.roll(logits, 1, axis=1), "torch")  # a different top-1 everywhere
    rows = measure_target(
        CPU_TARGET, "cpu.yaml", [BenchModel("final", path, "fp32")], PLAN, images, {"final": wrong}
    )
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(not r["check"]["passed"] and not r.get("chosen") for r in ok)
    torch_row = next(r for r in rows if r["runtime"] == "torch")
    assert torch_row["status"] == "skipped" and "no PyTorch model" in torch_row["reason"]


def test_choose_takes_the_fastest_passing_row():
    def row(runtime, median, passed):
        return {
            "target": "t",
            "model": "final",
            "batch": 1,
            "runtime": runtime,
            "status": "ok",
            "median_ms": median,
            "check": {"passed": passed},
        }

    rows = [row("a", 0.5, True), row("b", 0.1, False), row("c", 0.3, True)]
    choose(rows)
    assert [r.get("chosen", False) for r in rows] == [False, False, True]


def test_precisions_a_target_does_not_allow_are_skipped_with_reason(tiny):
    path, folder, images, logits = tiny
    ref = {"final": Reference(logits, "torch")}
    fp16_only = CPU_TARGET.model_copy(update={"precisions": ["fp16"]})
    rows = measure_target(
        fp16_only, "cpu.yaml", [BenchModel("final", path, "fp32", folder)], PLAN, images, ref
    )
    assert {r["status"] for r in rows} == {"skipped"}
    assert rows[0]["reason"] == "onnxruntime runs a fp32 file as fp32; cpu allows fp16"
    int8 = measure_target(
        CPU_TARGET, "cpu.yaml", [BenchModel("final", path, "int8", folder)], PLAN, images, ref
    )
    torch_row = next(r for r in int8 if r["runtime"] == "torch")
    assert "does not time int8 files" in torch_row["reason"]


def test_fixed_batch_file_skips_other_batches(tmp_path):
    model = zoo.build(SPEC, 1, 10).eval()
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False)
    images = np.random.default_rng(1).standard_normal((5, 1, 28, 28)).astype(np.float32)
    ref = {"m": Reference(logits_function(path)(images), "onnxruntime-cpu")}
    target = CPU_TARGET.model_copy(update={"runtimes": ["onnxruntime"]})
    plan = BenchPlan(protocol=PROTOCOL, batches=[1, 8])
    rows = measure_target(target, "cpu.yaml", [BenchModel("m", path, "fp32")], plan, images, ref)
    assert rows[0]["status"] == "ok" and rows[0]["check"]["passed"]
    assert rows[1]["status"] == "skipped" and "fixed batch of 1" in rows[1]["reason"]


def test_broken_model_becomes_a_failed_row(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    images = np.zeros((1, 1, 28, 28), np.float32)
    target = CPU_TARGET.model_copy(update={"runtimes": ["onnxruntime", "openvino"]})
    rows = measure_target(
        target,
        "cpu.yaml",
        [BenchModel("final", bad, "fp32")],
        PLAN,
        images,
        {"final": Reference(np.zeros((1, 10)), "torch")},
    )
    assert {r["status"] for r in rows} == {"failed"} and all(r["reason"] for r in rows)


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
    no_keys = jetson.model_copy(update={"connection": Connection(host="10.0.0.9")})
    assert "known_hosts is not set" in unreachable(no_keys, "targets/j.yaml")
    gpu = TargetProfile(name="g", kind="local-gpu", runtimes=["tensorrt"], precisions=["fp16"])
    reason = unreachable(gpu, "targets/gpu.yaml")
    if not torch.cuda.is_available():
        assert reason == "no NVIDIA GPU with CUDA on this machine"
    assert unreachable(CPU_TARGET, "cpu.yaml") is None
