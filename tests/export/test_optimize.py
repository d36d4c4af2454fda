"""`edgekd optimize` on Q/DQ files other tools made: NNCF's export as its users run it (float
weights read through QuantizeLinear) and onnxruntime's quantize_static (QDQ, per-channel on and
off). The result agrees with the input, onnxruntime fuses more of it into integer kernels, and a
rewrite that would break the model leaves the file as it was, with the reason."""

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from torch import nn

from edgekd import cli
from edgekd.export import qdq
from edgekd.export.onnx import export_onnx
from edgekd.export.optimize import INTEGER_OPS, OptimizeJob, optimize
from edgekd.quant import nncf_qat
from tests.conftest import TOL

SHAPE = (3, 16, 16)
# The rewrites keep every integer the runtime computes; an int32 bias moves a logit by a
# fraction of one step. 0.05 is far below the export gate's 1.0 and far above float rounding;
# the corrupted rewrite below moves logits by more than 1.
MAX_LOGIT_GAP = 0.05


class Tiny(nn.Module):
    """A stem, one MobileNetV2 inverted residual (BN, ReLU6, depthwise, residual Add) and a
    linear head: the patterns that keep onnxruntime from fusing NNCF's export."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()
        )
        self.block = nn.Sequential(
            nn.Conv2d(8, 16, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
            nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
            nn.Conv2d(16, 8, 1, bias=False),
            nn.BatchNorm2d(8),
        )
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.block(s) + s, 1), 1))


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """Random weights with BatchNorm statistics collected on random images."""
    torch.manual_seed(0)
    net = Tiny().train()
    with torch.no_grad():
        for seed in range(4):
            net(torch.from_numpy(images(32, seed)))
    return net.eval()


@pytest.fixture(scope="module")
def nncf_file(model, tmp_path_factory) -> Path:
    """NNCF PTQ, stripped and exported as NNCF users do: weights stay float, each read through
    a QuantizeLinear."""
    calibration = [torch.from_numpy(images(8, 100 + i)) for i in range(4)]
    quantized = nncf_qat.quantize_inputs(model, calibration, torch.device("cpu"))
    example = torch.zeros(1, *SHAPE)
    path = tmp_path_factory.mktemp("nncf") / "nncf_int8.onnx"
    export_onnx(nncf_qat.strip(quantized, example), example, path)
    return path


class Calibration(CalibrationDataReader):
    def __init__(self) -> None:
        self.batches = iter([{"input": images(4, 200 + i)} for i in range(4)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


@pytest.fixture(scope="module")
def fp32_file(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fp32") / "fp32.onnx"
    export_onnx(model, torch.zeros(1, *SHAPE), path)
    return path


@pytest.fixture(scope="module", params=[False, True], ids=["per_tensor", "per_channel"])
def ort_file(request, fp32_file) -> Path:
    """onnxruntime's static quantizer with its defaults (QDQ, int8 activations and weights)."""
    path = fp32_file.with_name(f"ort_{request.param}.onnx")
    quantize_static(
        str(fp32_file),
        str(path),
        Calibration(),
        quant_format=QuantFormat.QDQ,
        per_channel=request.param,
    )
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def fused(path: Path, tmp_path: Path) -> Counter:
    """Op types of the graph onnxruntime runs (ORT_ENABLE_ALL), as it saves it."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / f"ort_{path.name}")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def integer(ops: Counter) -> int:
    return sum(ops[op] for op in INTEGER_OPS)


def optimized(path: Path, tmp_path: Path, **job) -> tuple[Path, dict]:
    out = tmp_path / f"{path.stem}_optimized.onnx"
    return out, optimize(OptimizeJob(path, out, bench=None, **job))


def assert_agrees_and_fuses_more(src: Path, out: Path, tmp_path: Path) -> None:
    x = images(200, 7)  # not the inputs the command checked on
    before, after = run(src, x), run(out, x)
    assert np.abs(after - before).max() <= MAX_LOGIT_GAP
    assert (after.argmax(1) == before.argmax(1)).mean() * 100 >= TOL["int8_top1_agreement"]
    ops_before, ops_after = fused(src, tmp_path), fused(out, tmp_path)
    convs = Counter(n.op_type for n in onnx.load(str(src)).graph.node)["Conv"]
    assert integer(ops_after) > integer(ops_before)
    assert ops_after["QLinearConv"] == convs and ops_after["Conv"] == 0  # every Conv is INT8
    onnx.checker.check_model(str(out), full_check=True)


def test_nncf_export_is_rewritten_into_integer_kernels(nncf_file, tmp_path):
    graph = onnx.load(str(nncf_file)).graph
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert any(n.op_type == "QuantizeLinear" and n.input[0] in floats for n in graph.node)
    out, result = optimized(nncf_file, tmp_path)
    assert result["changed"] and result["reason"] is None and result["check"]["passed"]
    assert result["weights_folded"] == 5  # 4 convs and the head
    assert result["rewrites"]["batchnorm_folded"] == 4 and result["skipped"] == []
    assert result["checked_on"].startswith("64 random inputs (standard normal, seed 0")
    assert sum(result["integer_ops"]["after"].values()) > sum(
        result["integer_ops"]["before"].values()
    )
    assert_agrees_and_fuses_more(nncf_file, out, tmp_path)
    assert out.stat().st_size < nncf_file.stat().st_size  # weights are stored as int8 now


def test_onnxruntime_quantized_file_is_rewritten_into_integer_kernels(ort_file, tmp_path):
    out, result = optimized(ort_file, tmp_path)
    assert result["changed"] and result["check"]["passed"]
    # onnxruntime converts an int8 activation to uint8 only where one DequantizeLinear reads
    # it, so the stem's output (read by the block and the residual Add) kept its convs in float
    assert result["rewrites"]["unsigned_activations"] > 0
    assert_agrees_and_fuses_more(ort_file, out, tmp_path)


def test_fp32_model_has_nothing_to_optimize(fp32_file, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert cli.main(["optimize", str(fp32_file), "-o", str(out), "--no-bench"]) == 2
    err = capsys.readouterr().err
    assert "nothing to optimize: no QuantizeLinear/DequantizeLinear nodes" in err
    assert not out.exists()


def test_missing_file_and_not_onnx_are_user_errors(tmp_path, capsys):
    assert cli.main(["optimize", str(tmp_path / "absent.onnx"), "--no-bench"]) == 2
    assert "not found" in capsys.readouterr().err
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    assert cli.main(["optimize", str(text), "--no-bench"]) == 2
    assert "is not an ONNX model" in capsys.readouterr().err


def test_inputs_of_the_wrong_shape_are_a_user_error(nncf_file, tmp_path, capsys):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 1, 8, 8), np.float32))
    assert cli.main(["optimize", str(nncf_file), "--inputs", str(wrong), "--no-bench"]) == 2
    assert "--inputs" in capsys.readouterr().err


def test_a_rewrite_that_breaks_parity_leaves_the_file_unchanged(nncf_file, tmp_path, monkeypatch):
    real = qdq.REWRITES["biases_quantized"]

    def corrupt(g) -> int:
        """The real rewrite, then a wrong value: the head's int32 bias of class 0 moved by 5."""
        done = real(g)
        head = next(n for n in g.nodes if n.op_type == "Gemm")
        bias = g.producer[head.input[2]]
        step = float(g.consts[bias.input[1]][0])
        g.consts[bias.input[0]] = g.consts[bias.input[0]].copy()
        g.consts[bias.input[0]][0] += round(5 / step)
        return done

    monkeypatch.setitem(qdq.REWRITES, "biases_quantized", corrupt)
    out, result = optimized(nncf_file, tmp_path)
    assert not result["changed"] and not result["check"]["passed"]
    assert "disagrees with the input on the 64 check inputs" in result["reason"]
    assert result["check"]["max_abs_diff"] > 1.0
    assert out.read_bytes() == nncf_file.read_bytes()  # the input, byte for byte
    assert "after" not in result["integer_ops"]


def test_a_rewrite_that_breaks_the_graph_leaves_the_file_unchanged(
    nncf_file, tmp_path, monkeypatch
):
    def dangle(g) -> int:
        """Point a node at a value nothing produces: onnx.checker (or the topological sort)
        must refuse the graph."""
        conv = next(n for n in g.nodes if n.op_type == "Conv")
        conv.input[0] = "nowhere"
        return 1

    monkeypatch.setitem(qdq.REWRITES, "biases_quantized", dangle)
    out, result = optimized(nncf_file, tmp_path)
    assert not result["changed"] and result["reason"].startswith("the rewrite failed")
    assert out.read_bytes() == nncf_file.read_bytes()


def test_cli_checks_on_given_inputs_times_both_files_and_writes_json(nncf_file, tmp_path, capsys):
    inputs, report, out = tmp_path / "x.npy", tmp_path / "result.json", tmp_path / "out.onnx"
    np.save(inputs, images(16, 3))
    argv = ["optimize", str(nncf_file), "-o", str(out), "--inputs", str(inputs), "--json"]
    argv += [str(report), "--runtime", "onnxruntime", "--warmup", "1", "--iterations", "5"]
    argv += ["--min-seconds", "0", "--rounds", "2"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "rewrites: batchnorm_folded 4" in printed and "latency" in printed
    import json

    result = json.loads(report.read_text())
    assert result["checked_on"] == str(inputs) and result["check"]["images"] == 16
    rows = {row["model"]: row for row in result["bench"]}
    assert set(rows) == {"input", "optimized"}
    for row in rows.values():  # timed in the same run, interleaved, each checked first
        assert row["status"] == "ok" and row["rounds"] == 2 and row["check"]["passed"]
        assert row["check"]["reference"] == "onnxruntime-cpu (input file)"
