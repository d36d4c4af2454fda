"""The Q/DQ rewrites: BatchNorm folded, Clips dropped, per-tensor activations, int32 biases;
the optimized model computes what the exported one did, and onnxruntime fuses it into INT8 ops."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgekd.data.datasets import normalize, sample
from edgekd.export.onnx import export_onnx, onnx_logits, store_int8_weights
from edgekd.export.qdq import optimize_model, optimize_qdq
from edgekd.quant import nncf_qat
from tests.conftest import TOL

CPU = torch.device("cpu")
# The rewrites keep every integer up to float rounding, and the int32 bias moves a value by at
# most half of x_scale * w_scale; a flipped level moves a logit by about one head step
# (x_scale * max|w|). Measured on this model: 2.3 steps at most; a wrong fold, scale or bias
# moves logits by far more (each such mutation of qdq.py fails this file).
LOGIT_STEPS = 4
FUSED = {"QLinearConv", "QLinearAdd", "QLinearGlobalAveragePool", "QGemm"}


class Tiny(nn.Module):
    """A stem conv and one MobileNetV2 inverted residual (expand, depthwise, project; BN and
    ReLU6; residual Add) and a linear head: the patterns NNCF exports for MobileNetV2."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.block = nn.Sequential(
            nn.Conv2d(16, 32, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU6(),
            nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU6(),
            nn.Conv2d(32, 16, 1, bias=False),
            nn.BatchNorm2d(16),
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.block(s) + s, 1), 1))


@pytest.fixture(scope="module")
def exported(splits, tmp_path_factory):
    """Path of the NNCF Q/DQ export of a briefly trained Tiny whose stem BN has a negative
    gamma in channel 0, the optimized copy, and the rewrite report."""
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(3):
        for i in range(0, len(splits.train), 64):
            x = normalize(splits.train.images[i : i + 64], splits)
            loss = nn.functional.cross_entropy(model(x), splits.train.labels[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        # Negating a channel's conv weight, gamma and running mean leaves the function as it
        # was and makes that gamma negative (assumed positive after training; checked below).
        for t in (model.stem[0].weight, model.stem[1].weight, model.stem[1].running_mean):
            t[0] = -t[0]
    assert model.stem[1].weight[0] < 0
    model.eval()
    quantized = nncf_qat.quantize(model, sample(splits.train, 128, 0), splits, 64, CPU)
    example = torch.zeros(1, 1, 28, 28)
    folder = tmp_path_factory.mktemp("qdq")
    path, optimized = folder / "int8.onnx", folder / "int8_opt.onnx"
    export_onnx(nncf_qat.strip(quantized, example), example, path)
    store_int8_weights(path)
    return path, optimized, optimize_qdq(path, optimized)


def ops_after_ort(path, tmp_path) -> Counter:
    """Op types of the graph onnxruntime runs at ORT_ENABLE_ALL."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / f"ort_{path.name}")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def test_batchnorm_and_clips_are_gone(exported):
    path, optimized, report = exported
    before = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    after = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    assert before["BatchNormalization"] == 4 and after["BatchNormalization"] == 0
    assert before["Clip"] == 3 and after["Clip"] == 0
    assert report["batchnorm_folded"] == 4 and report["skipped"] == []
    # NNCF quantizes the depthwise conv's input per channel; QLinearConv needs one scale.
    assert report["per_tensor_activations"] == 1
    onnx.checker.check_model(str(optimized), full_check=True)


def test_optimized_model_computes_the_same_logits(exported, splits):
    path, optimized, _ = exported
    images = normalize(splits.test.images, splits)
    ref, got = onnx_logits(path, images), onnx_logits(optimized, images)
    model = onnx.load(str(optimized))
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    x_dq, w_dq = (next(n for n in model.graph.node if n.output[0] == i) for i in gemm.input[:2])
    step = float(consts[x_dq.input[1]]) * float(
        np.abs(consts[w_dq.input[0]] * consts[w_dq.input[1]][:, None]).max()
    )
    assert np.abs(got - ref).max() <= LOGIT_STEPS * step
    agreement = (got.argmax(1) == ref.argmax(1)).mean() * 100
    assert agreement >= TOL["int8_top1_agreement"]
    labels = splits.test.labels.numpy()
    assert (ref.argmax(1) == labels).mean() > 0.4  # the model really classifies (chance: 0.1)


def test_negative_gamma_channel_is_stored_negated(exported):
    path, optimized, _ = exported

    def stem_weight(p):
        model = onnx.load(str(p))
        consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        conv = next(n for n in model.graph.node if n.op_type == "Conv")
        dq = next(n for n in model.graph.node if n.output[0] == conv.input[1])
        scale = np.broadcast_to(consts[dq.input[1]], (16,))
        return consts[dq.input[0]], scale

    (q0, _), (q1, s1) = stem_weight(path), stem_weight(optimized)
    assert (s1 > 0).all()
    np.testing.assert_array_equal(q1[0], -q0[0])
    np.testing.assert_array_equal(q1[1:], q0[1:])


def test_onnxruntime_fuses_the_optimized_model_into_int8_ops(exported, tmp_path):
    path, optimized, _ = exported
    before, after = ops_after_ort(path, tmp_path), ops_after_ort(optimized, tmp_path)
    assert before["QLinearConv"] == 0 and before["Conv"] == 4
    assert after["QLinearConv"] == 4 and after["Conv"] == 0
    assert {"QLinearAdd", "QGemm"} <= set(after)
    assert not {"DequantizeLinear", "BatchNormalization", "Clip", "Add", "Gemm"} & set(after)


def conv_bn_qdq(weight: np.ndarray, gamma: np.ndarray, clip_hi: float, q_scale: float):
    """DQ(x) , DQ(int8 w) -> Conv -> BN -> Clip(0, clip_hi) -> Q(uint8) -> DQ, built by hand."""
    c = len(gamma)
    consts = {
        "xs": np.array(0.02, np.float32),
        "xz": np.array(0, np.uint8),
        "w": weight,
        "ws": np.full(c, 0.01, np.float32),
        "wz": np.zeros(c, np.int8),
        "g": gamma.astype(np.float32),
        "b": np.linspace(-0.5, 0.5, c).astype(np.float32),
        "m": np.linspace(-1, 1, c).astype(np.float32),
        "v": np.linspace(0.5, 2, c).astype(np.float32),
        "lo": np.array(0, np.float32),
        "hi": np.array(clip_hi, np.float32),
        "ys": np.array(q_scale, np.float32),
        "yz": np.array(0, np.uint8),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
        helper.make_node("Clip", ["n", "lo", "hi"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, weight.shape[1], 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, c, 6, 6])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize(
    ("clip_hi", "q_scale", "clip_kept"),
    [(6.0, 6 / 255, False), (6.0, 0.01, False), (6.0, 0.03, True)],
)
def test_clip_is_dropped_only_when_quantize_saturates_at_its_bounds(clip_hi, q_scale, clip_kept):
    rng = np.random.default_rng(0)
    weight = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    gamma = np.array([1.5, -0.7, 0.3, 2.0])
    model = conv_bn_qdq(weight, gamma, clip_hi, q_scale)
    x = rng.normal(0, 2, (2, 3, 6, 6)).astype(np.float32)
    ref = run(model, x)
    optimized = onnx.ModelProto()
    optimized.CopyFrom(model)
    report = optimize_model(optimized)
    onnx.checker.check_model(optimized, full_check=True)
    ops = {n.op_type for n in optimized.graph.node}
    assert ("Clip" in ops) == clip_kept and "BatchNormalization" not in ops
    assert report["batchnorm_folded"] == 1
    # Same integers: outputs differ only where float rounding moved a value across a level.
    steps = np.rint(np.abs(run(optimized, x) - ref) / q_scale)
    assert steps.max() <= 1 and (steps > 0).mean() < 0.01


def test_minus_128_in_a_negative_gamma_channel_keeps_the_batchnorm():
    weight = np.ones((2, 1, 3, 3), np.int8)
    weight[1, 0, 0, 0] = -128
    model = conv_bn_qdq(weight, np.array([1.0, -1.0]), 6.0, 6 / 255)
    report = optimize_model(model)
    assert report["batchnorm_folded"] == 0
    assert "-128" in report["skipped"][0]
    assert "BatchNormalization" in {n.op_type for n in model.graph.node}
