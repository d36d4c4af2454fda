"""DLA rows on Jetson profiles: how many cores each profile says it has, the exact trtexec
command lines of the deploy recipe with and without DLA, the rows a DLA profile gets beside its
GPU rows, and trtexec's layer placement log. The rows run over SSH against a stand-in trtexec in
tests/runners/test_ssh.py; on a real Jetson only in the `gpu`-marked test at the end (never run
here: no Jetson was lent)."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.bench import load_target
from edgekd.config.schema import TargetProfile
from edgekd.deploy import recipes
from edgekd.runners import trtexec
from edgekd.runners.remote_ssh import _dla_facts
from edgekd.runners.targets import BenchModel, variants
from tests.conftest import ROOT

NX, NANO = ROOT / "targets" / "jetson-orin-nx.yaml", ROOT / "targets" / "jetson-orin-nano.yaml"
BIN = "/usr/src/tensorrt/bin/trtexec"
HEAD = ["#!/bin/sh", "# written by edgekd; runs on the device", "set -eu", 'cd "$(dirname "$0")"']
SHAPES = "--minShapes=input:1x1x28x28 --optShapes=input:1x1x28x28 --maxShapes=input:1x1x28x28"
TIMED = "--iterations=1000 --duration=5 --warmUp=500 --avgRuns=1 --useSpinWait --percentile=90,99"
# The placement section as trtexec prints it at INFO level while building for DLA
# (TensorRT 8.5+; the same lines in the logs users post of `trtexec --useDLACore`).
PLACEMENT_LOG = """\
[08/31/2023-07:07:49] [I] [TRT] ---------- Layers Running on DLA ----------
[08/31/2023-07:07:49] [I] [TRT] [DlaLayer] {ForeignNode[/cnn/cnn.0/Conv.../cnn/cnn.11/Relu]}
[08/31/2023-07:07:49] [I] [TRT] [DlaLayer] {ForeignNode[/linear/Gemm]}
[08/31/2023-07:07:49] [I] [TRT] ---------- Layers Running on GPU ----------
[08/31/2023-07:07:49] [I] [TRT] [GpuLayer] POOLING: /pool/GlobalAveragePool
[08/31/2023-07:07:49] [I] [TRT] [GpuLayer] SHUFFLE: reshape_after_/linear/Gemm
"""


def test_profiles_say_how_many_dla_cores_each_module_has():
    nx, agx = load_target(NX), load_target(ROOT / "targets" / "jetson-agx-orin.yaml")
    assert (nx.dla_cores, agx.dla_cores, load_target(NANO).dla_cores) == (2, 2, 0)
    assert trtexec.dla_cores(nx) == [0]  # dla_rows: first, the cores being identical
    assert trtexec.dla_cores(nx.model_copy(update={"dla_rows": "each"})) == [0, 1]
    assert trtexec.dla_cores(nx.model_copy(update={"dla_rows": "none"})) == []
    assert trtexec.dla_cores(load_target(NANO).model_copy(update={"dla_rows": "each"})) == []


def test_recipe_for_a_dla_profile_builds_and_times_the_gpu_and_each_dla_core():
    target = load_target(NX).model_copy(update={"dla_rows": "each"})
    scripts = recipes(target, "int8", "input", [1, 28, 28])
    gpu = f"--int8 --fp16 {SHAPES} --timingCacheFile=timing.cache --skipInference"
    assert scripts["build.sh"].splitlines() == [
        *HEAD,
        f"{BIN} --onnx=model.onnx --saveEngine=model.int8.engine {gpu}",
        f"{BIN} --onnx=model.onnx --saveEngine=model.int8.dla0.engine --int8 --fp16 "
        f"--useDLACore=0 --allowGPUFallback {SHAPES} --timingCacheFile=timing.cache "
        "--skipInference",
        f"{BIN} --onnx=model.onnx --saveEngine=model.int8.dla1.engine --int8 --fp16 "
        f"--useDLACore=1 --allowGPUFallback {SHAPES} --timingCacheFile=timing.cache "
        "--skipInference",
    ]
    assert scripts["run.sh"].splitlines() == [
        *HEAD,
        f"{BIN} --loadEngine=model.int8.engine --shapes=input:1x1x28x28 {TIMED} "
        "--exportTimes=times.json",
        f"{BIN} --loadEngine=model.int8.dla0.engine --useDLACore=0 --shapes=input:1x1x28x28 "
        f"{TIMED} --exportTimes=times.dla0.json",
        f"{BIN} --loadEngine=model.int8.dla1.engine --useDLACore=1 --shapes=input:1x1x28x28 "
        f"{TIMED} --exportTimes=times.dla1.json",
    ]


def test_recipe_of_an_fp32_file_builds_fp16_for_dla_and_obeys_no_fallback():
    target = load_target(NX).model_copy(update={"dla_gpu_fallback": False})
    build = recipes(target, "fp32", "input", [1, 28, 28])["build.sh"].splitlines()
    assert build[-1] == (
        f"{BIN} --onnx=model.onnx --saveEngine=model.fp16.dla0.engine --fp16 --useDLACore=0 "
        f"{SHAPES} --timingCacheFile=timing.cache --skipInference"
    )
    with pytest.raises(ValueError, match="DLA runs FP16 and INT8 only"):
        trtexec.build_command("t", "m.onnx", "e", "fp32", "input", [1, 8, 8], 1, 1, "c", 0)


def test_recipe_without_dla_is_the_gpu_engine_alone():
    scripts = recipes(load_target(NANO), "int8", "input", [1, 28, 28])
    assert scripts["build.sh"].splitlines() == [
        *HEAD,
        f"{BIN} --onnx=model.onnx --saveEngine=model.int8.engine --int8 --fp16 {SHAPES} "
        "--timingCacheFile=timing.cache --skipInference",
    ]
    assert scripts["run.sh"].splitlines() == [
        *HEAD,
        f"{BIN} --loadEngine=model.int8.engine --shapes=input:1x1x28x28 {TIMED} "
        "--exportTimes=times.json",
    ]


def test_a_dla_engine_is_built_for_one_static_shape():
    build = trtexec.build_command("t", "m.onnx", "e", "int8", "x", [3, 8, 8], 1, 100, "c", 1)
    assert "--minShapes=x:100x3x8x8" in build and "--optShapes=x:100x3x8x8" in build
    assert "--useDLACore=1" in build and "--allowGPUFallback" in build
    gpu = trtexec.build_command("t", "m.onnx", "e", "int8", "x", [3, 8, 8], 1, 100, "c")
    assert "--minShapes=x:1x3x8x8" in gpu and not any("DLA" in a for a in gpu)


def rows_of(target: TargetProfile, precision: str) -> list[tuple[dict, str | None]]:
    model = BenchModel("final", Path("model.onnx"), precision)
    return list(variants(target, model, [1, 8], None))


def test_dla_rows_stand_beside_the_gpu_rows_and_say_which_core():
    target = load_target(NX).model_copy(update={"dla_rows": "each"})
    rows = rows_of(target, "int8")
    assert [(k["batch"], k.get("device")) for k, _ in rows] == [
        (1, None), (1, "dla0"), (1, "dla1"), (8, None), (8, "dla0"), (8, "dla1"),
    ]  # fmt: skip
    assert all(k["runtime"] == "tensorrt" and k["precision"] == "int8" for k, _ in rows)
    assert [k.get("dla_core") for k, _ in rows[:3]] == [None, 0, 1]
    assert all(reason is None for _, reason in rows)
    fp32 = rows_of(target.model_copy(update={"precisions": ["fp32", "fp16"]}), "fp32")
    reasons = {(k["precision"], k.get("device")): r for k, r in fp32 if k["batch"] == 1}
    assert reasons[("fp32", None)] is None and reasons[("fp16", "dla0")] is None
    assert reasons[("fp32", "dla0")] == "DLA runs fp16 and int8 only, not fp32"


def test_a_profile_without_dla_and_a_local_gpu_get_no_measured_dla_row():
    assert all("device" not in k for k, _ in rows_of(load_target(NANO), "int8"))
    local = TargetProfile(
        name="jetson-local", kind="local-gpu", runtimes=["tensorrt", "onnxruntime"],
        precisions=["fp16", "int8"], dla_cores=1,
    )  # fmt: skip
    dla = [(k, r) for k, r in rows_of(local, "int8") if "device" in k]
    assert len(dla) == 2 and all(k["runtime"] == "tensorrt" for k, _ in dla)
    assert all("built by trtexec on a remote-ssh device" in r for _, r in dla)


def test_layer_placement_from_the_build_log():
    assert trtexec.parse_layer_placement(PLACEMENT_LOG) == {"dla": 2, "gpu": 2}
    assert trtexec.parse_layer_placement("[I] TensorRT version: 10.3.0") is None
    # two builds in one log (a DLA check engine, then the timed one): the last one counts
    timed_last = PLACEMENT_LOG + PLACEMENT_LOG.replace("[DlaLayer] {ForeignNode[/linear", "[x")
    assert trtexec.parse_layer_placement(timed_last) == {"dla": 1, "gpu": 2}
    fell_back = _dla_facts(0, {"gpu_fallback": True, "layers": {"dla": 0, "gpu": 7}})
    assert "timed the GPU" in fell_back["note"]
    assert "note" not in _dla_facts(1, {"gpu_fallback": True, "layers": {"dla": 2, "gpu": 2}})


DLA_TARGET = os.environ.get("EDGEKD_DLA_TARGET")


@pytest.mark.gpu
@pytest.mark.skipif(
    not DLA_TARGET,
    reason="no Jetson with DLA here: set EDGEKD_DLA_TARGET to a profile with connection set",
)
def test_dla_row_on_a_real_jetson(tmp_path):
    """The tiny CNN in FP16 on the board's GPU and its first DLA core; the DLA row must pass
    its check and run at least one layer on DLA."""
    from edgekd.export.onnx import export_onnx
    from edgekd.models import zoo
    from edgekd.models.specs import ModelSpec
    from edgekd.runners.base import MeasureProtocol
    from edgekd.runners.targets import BenchPlan, Reference, measure_target, unreachable

    assert DLA_TARGET is not None
    target = load_target(Path(DLA_TARGET)).model_copy(update={"precisions": ["fp16"]})
    reason = unreachable(target, DLA_TARGET)
    if reason is not None or target.dla_cores == 0:
        pytest.skip(reason or f"{DLA_TARGET} has no DLA cores")
    torch.manual_seed(0)
    model = zoo.build(ModelSpec(arch="tiny_cnn"), 1, 10).eval()
    path = tmp_path / "tiny.onnx"
    export_onnx(model, torch.zeros(1, 1, 28, 28), path)
    images = np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(images)).numpy()
    plan = BenchPlan(MeasureProtocol(warmup=10, iterations=100, min_seconds=0), batches=[1])
    rows = measure_target(
        target.model_copy(update={"runtimes": ["tensorrt"]}), DLA_TARGET,
        [BenchModel("final", path, "fp32")], plan, images, {"final": Reference(logits, "torch")},
    )  # fmt: skip
    dla = next(r for r in rows if r.get("device") == "dla0")
    assert dla["status"] == "ok" and dla["check"]["passed"], dla
    assert dla["extra"]["dla"]["layers"]["dla"] > 0
