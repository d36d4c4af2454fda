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
# Hand-built graphs end in Q -> DQ and the rewrites keep their integers: an output may move only
# where float rounding carried a value across a level, by one level, in under 1% of the outputs.
MAX_LEVELS_MOVED = 1
MOVED_SHARE = 0.01
# A float bias made int32 moves a float output by at most half of x_scale * w_scale.
BIAS_ROUNDING = 0.5


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
        zero = consts[dq.input[2]] if len(dq.input) > 2 else np.zeros(1, np.int8)
        # the integer levels, whether stored int8 or uint8 (+128, see u8s8_saturates)
        levels = consts[dq.input[0]].astype(np.int16) - zero.astype(np.int16).reshape(-1, 1, 1, 1)
        return levels, scale

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


def conv_bn_qdq(
    weight: np.ndarray,
    gamma: np.ndarray,
    clip_hi: float,
    q_scale: float,
    conv_bias: np.ndarray | None = None,
    weight_zero: np.ndarray | None = None,
):
    """DQ(x) , DQ(int8 w) -> Conv -> BN -> Clip(0, clip_hi) -> Q(uint8) -> DQ, built by hand;
    the Conv output is named "c"."""
    c = len(gamma)
    consts = {
        "xs": np.array(0.02, np.float32),
        "xz": np.array(0, np.uint8),
        "w": weight,
        "ws": np.full(c, 0.01, np.float32),
        "wz": np.zeros(c, np.int8) if weight_zero is None else weight_zero,
        "g": gamma.astype(np.float32),
        "b": np.linspace(-0.5, 0.5, c).astype(np.float32),
        "m": np.linspace(-1, 1, c).astype(np.float32),
        "v": np.linspace(0.5, 2, c).astype(np.float32),
        "lo": np.array(0, np.float32),
        "hi": np.array(clip_hi, np.float32),
        "ys": np.array(q_scale, np.float32),
        "yz": np.array(0, np.uint8),
    }
    if conv_bias is not None:
        consts["cb"] = conv_bias.astype(np.float32)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
        helper.make_node(
            "Conv", ["xd", "wd", *(["cb"] if "cb" in consts else [])], ["c"], pads=[1] * 4
        ),
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


def run_all(model: onnx.ModelProto, x: np.ndarray, fuse: bool = True) -> list[np.ndarray]:
    """All outputs; `fuse=False` runs the graph as written (no onnxruntime graph rewrites)."""
    options = ort.SessionOptions()
    if not fuse:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"x": x})


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return run_all(model, x)[0]


def assert_same_levels(got: np.ndarray, ref: np.ndarray, step: float) -> None:
    """Same integers: outputs differ only where float rounding moved a value across a level."""
    levels = np.rint(np.abs(got - ref) / step)
    assert levels.max() <= MAX_LEVELS_MOVED and (levels > 0).mean() < MOVED_SHARE


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
    assert_same_levels(run(optimized, x), ref, q_scale)


def test_minus_128_in_a_negative_gamma_channel_keeps_the_batchnorm():
    weight = np.ones((2, 1, 3, 3), np.int8)
    weight[1, 0, 0, 0] = -128
    model = conv_bn_qdq(weight, np.array([1.0, -1.0]), 6.0, 6 / 255)
    report = optimize_model(model)
    assert report["batchnorm_folded"] == 0
    assert "-128" in report["skipped"][0]
    assert "BatchNormalization" in {n.op_type for n in model.graph.node}


def optimized_copy(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """The rewritten copy of `model` (checked by onnx.checker) and the rewrite report."""
    optimized = onnx.ModelProto()
    optimized.CopyFrom(model)
    report = optimize_model(optimized)
    onnx.checker.check_model(optimized, full_check=True)
    return optimized, report


def consts_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def producer(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if name in n.output)


def op_types(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def attr_names(node: onnx.NodeProto) -> set[str]:
    return {a.name for a in node.attribute}


def set_axis(node: onnx.NodeProto, axis: int) -> None:
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("axis", axis))


def small_graph(nodes, consts, x_shape, outputs=("y",), opset=17):
    """A graph of `nodes` reading input "x"; `outputs` names (or (name, element type) pairs)."""
    outs = [(o, TensorProto.FLOAT) if isinstance(o, str) else o for o in outputs]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(name, t, None) for name, t in outs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
    )
    return typed(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def typed(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the shapes of its outputs filled in (onnx.checker requires them)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    del inferred.graph.value_info[:]
    return inferred


def test_conv_bias_is_folded_into_the_batchnorm_bias():
    rng = np.random.default_rng(1)
    weight = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    gamma, conv_bias = np.array([1.5, -0.7, 0.3, 2.0]), np.array([0.4, -0.3, 0.8, -0.6])
    model = conv_bn_qdq(weight, gamma, 6.0, 6 / 255, conv_bias=conv_bias)
    optimized, report = optimized_copy(model)
    assert report["batchnorm_folded"] == 1 and "BatchNormalization" not in op_types(optimized)
    # 8 batches: the share of moved levels is measured on enough outputs (0.2% on 28,800).
    xs = [rng.normal(0, 2, (2, 3, 6, 6)).astype(np.float32) for _ in range(8)]
    got, ref = (np.concatenate([run(m, x) for x in xs]) for m in (optimized, model))
    assert_same_levels(got, ref, 6 / 255)
    # The Conv's bias is now int32 at x_scale * w_scale and holds BN applied to the old bias.
    consts, c = consts_of(model), consts_of(optimized)
    conv = next(n for n in optimized.graph.node if n.op_type == "Conv")
    bias_dq = producer(optimized, conv.input[2])
    assert c[bias_dq.input[0]].dtype == np.int32
    bias = c[bias_dq.input[0]] * c[bias_dq.input[1]]
    f = consts["g"] / np.sqrt(consts["v"] + 1e-5)
    expected = (conv_bias - consts["m"]) * f + consts["b"]
    step = c[bias_dq.input[1]].max()
    assert np.abs(bias - expected).max() <= BIAS_ROUNDING * step * (1 + TOL["fp32"])


def test_zero_gamma_keeps_the_batchnorm():
    rng = np.random.default_rng(2)
    weight = rng.integers(-127, 128, (2, 3, 3, 3)).astype(np.int8)
    model = conv_bn_qdq(weight, np.array([1.0, 0.0]), 6.0, 6 / 255)
    x = rng.normal(0, 2, (2, 3, 6, 6)).astype(np.float32)
    optimized, report = optimized_copy(model)
    assert report["batchnorm_folded"] == 0 and "scale <= 0" in report["skipped"][0]
    assert op_types(optimized)["BatchNormalization"] == 1
    assert_same_levels(run(optimized, x), run(model, x), 6 / 255)


@pytest.mark.parametrize("reader", ["graph_output", "second_node"])
def test_batchnorm_is_kept_when_the_conv_output_has_other_readers(reader):
    rng = np.random.default_rng(3)
    weight = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    model = conv_bn_qdq(weight, np.array([1.5, -0.7, 0.3, 2.0]), 6.0, 6 / 255)
    if reader == "graph_output":
        model.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    else:
        model.graph.node.append(helper.make_node("Neg", ["c"], ["c_neg"]))
        model.graph.output.append(helper.make_tensor_value_info("c_neg", TensorProto.FLOAT, None))
    model = typed(model)
    x = rng.normal(0, 2, (2, 3, 6, 6)).astype(np.float32)
    optimized, report = optimized_copy(model)
    assert report["batchnorm_folded"] == 0 and "other readers" in report["skipped"][0]
    assert op_types(optimized)["BatchNormalization"] == 1
    (y0, c0), (y1, c1) = run_all(model, x), run_all(optimized, x)
    assert_same_levels(y1, y0, 6 / 255)
    np.testing.assert_allclose(c1, c0, rtol=TOL["onnx_fp32"], atol=TOL["onnx_fp32"])


def set_const(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    init = next(t for t in model.graph.initializer if t.name == name)
    init.CopyFrom(numpy_helper.from_array(value, name))


@pytest.mark.parametrize(
    "weight_kind", ["nonzero_zero_point", "uint8", "input_channel_scales", "shared_by_two_convs"]
)
def test_batchnorm_is_kept_unless_its_conv_alone_reads_symmetric_int8_weights(weight_kind):
    rng = np.random.default_rng(4)
    weight = rng.integers(-100, 100, (4, 4, 3, 3)).astype(np.int8)
    zero = None
    if weight_kind == "nonzero_zero_point":
        zero = np.array([0, 5, -3, 0], np.int8)
    elif weight_kind == "uint8":
        weight, zero = (weight.astype(np.int16) + 128).astype(np.uint8), np.zeros(4, np.uint8)
    gamma = np.array([1.5, -0.7, 0.3, -2.0])
    model = conv_bn_qdq(weight, gamma, 6.0, 6 / 255, weight_zero=zero)
    if weight_kind == "input_channel_scales":
        # One scale per input channel (axis 1): not the per-output-channel scale BN folds into.
        set_const(model, "ws", np.array([0.004, 0.01, 0.02, 0.008], np.float32))
        set_axis(producer(model, "wd"), 1)
    elif weight_kind == "shared_by_two_convs":
        model.graph.node.append(helper.make_node("Conv", ["xd", "wd"], ["c2"], pads=[1] * 4))
        model.graph.output.append(helper.make_tensor_value_info("c2", TensorProto.FLOAT, None))
        model = typed(model)
    x = rng.normal(0, 2, (2, 4, 6, 6)).astype(np.float32)
    optimized, report = optimized_copy(model)
    assert report["batchnorm_folded"] == 0 and "not DQ(int8 constant)" in report["skipped"][0]
    assert op_types(optimized)["BatchNormalization"] == 1
    (y0, *rest0), (y1, *rest1) = run_all(model, x), run_all(optimized, x)
    assert_same_levels(y1, y0, 6 / 255)
    for got, ref in zip(rest1, rest0, strict=True):  # the other Conv reads the same weights
        np.testing.assert_allclose(got, ref, rtol=TOL["onnx_fp32"], atol=TOL["onnx_fp32"])


def clamp_qdq(clamp: list[onnx.NodeProto], consts: dict, zero: np.ndarray, opset: int = 17):
    """x -> `clamp` nodes (ending in "r") -> Q(scale 6/255, `zero`) -> DQ -> y."""
    consts = {**consts, "ys": np.array(6 / 255, np.float32), "yz": zero}
    nodes = [
        *clamp,
        helper.make_node("QuantizeLinear", ["r", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    return small_graph(nodes, consts, [2, 3, 8, 8], opset=opset)


@pytest.mark.parametrize(
    ("zero", "kept"),
    [(np.array(0, np.uint8), False), (np.array(0, np.int8), True), (np.array(3, np.uint8), True)],
    ids=["uint8_zero_0", "int8_zero_0", "uint8_zero_3"],
)
def test_relu_is_dropped_only_when_quantize_saturates_at_zero(zero, kept):
    model = clamp_qdq([helper.make_node("Relu", ["x"], ["r"])], {}, zero)
    x = np.random.default_rng(5).normal(0, 2, (2, 3, 8, 8)).astype(np.float32)
    optimized, report = optimized_copy(model)
    assert ("Relu" in op_types(optimized)) == kept and report["clamps_removed"] == (not kept)
    assert_same_levels(run(optimized, x), run(model, x), 6 / 255)


def clip_bounds_model(how: str) -> onnx.ModelProto:
    u8 = np.array(0, np.uint8)
    lo, hi = np.array(0, np.float32), np.array(6, np.float32)
    if how.startswith("opset10"):
        top = 6.0 if how == "opset10_attributes" else 3.0
        clip = helper.make_node("Clip", ["x"], ["r"], min=0.0, max=top)
        return clamp_qdq([clip], {}, u8, opset=10)
    if how == "constant_node":
        const = helper.make_node("Constant", [], ["hi"], value=numpy_helper.from_array(hi))
        return clamp_qdq(
            [const, helper.make_node("Clip", ["x", "lo", "hi"], ["r"])], {"lo": lo}, u8
        )
    if how == "absent_max":
        return clamp_qdq([helper.make_node("Clip", ["x", "lo"], ["r"])], {"lo": lo}, u8)
    # how == "computed_max": half the input's maximum, known only at run time.
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
        helper.make_node("Mul", ["top", "half"], ["hi"]),
        helper.make_node("Clip", ["x", "lo", "hi"], ["r"]),
    ]
    return clamp_qdq(nodes, {"lo": lo, "half": np.array(0.5, np.float32)}, u8)


@pytest.mark.parametrize(
    ("how", "kept"),
    [
        ("opset10_attributes", False),
        ("opset10_attributes_inside", True),
        ("constant_node", False),
        ("absent_max", False),
        ("computed_max", True),
    ],
)
def test_clip_bounds_from_attributes_constant_nodes_absent_or_computed_inputs(how, kept):
    model = clip_bounds_model(how)
    x = np.random.default_rng(6).normal(0, 2, (2, 3, 8, 8)).astype(np.float32)
    optimized, report = optimized_copy(model)
    assert ("Clip" in op_types(optimized)) == kept and report["clamps_removed"] == (not kept)
    ref = run(model, x)
    if how == "computed_max":
        assert ref.max() < 6 / 255 * 250  # the computed bound clips inside Q's range
    assert_same_levels(run(optimized, x), ref, 6 / 255)


@pytest.mark.parametrize("reader", ["graph_output", "mul"])
def test_clip_read_by_more_than_quantize_is_kept(reader):
    consts = {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    model = clamp_qdq([helper.make_node("Clip", ["x", "lo", "hi"], ["r"])], consts, np.uint8(0))
    if reader == "graph_output":
        model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    else:
        # Mul(r, 0.01) reads like a QuantizeLinear saturating at 0 and 6 (inputs 0 and 1):
        # only its op type keeps the Clip.
        model.graph.initializer.append(numpy_helper.from_array(np.array(0.01, np.float32), "k"))
        model.graph.node.append(helper.make_node("Mul", ["r", "k"], ["z"]))
        model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    model = typed(model)
    x = np.random.default_rng(7).normal(0, 4, (2, 3, 8, 8)).astype(np.float32)
    optimized, report = optimized_copy(model)
    assert op_types(optimized)["Clip"] == 1 and report["clamps_removed"] == 0
    (y0, r0), (y1, r1) = run_all(model, x), run_all(optimized, x)
    assert_same_levels(y1, y0, 6 / 255)
    np.testing.assert_allclose(r1, r0, rtol=TOL["onnx_fp32"], atol=TOL["onnx_fp32"])


ACT_SCALE = np.array([0.05, 0.1, 0.15, 0.08], np.float32)
DW_Y_SCALE = 0.2


def conv_then_conv_qdq(group: int, multiplier: int, zero=(0, 0, 0, 0)) -> onnx.ModelProto:
    """DQ(x) -> Conv(4 channels, bias) -> Q/DQ(per channel, axis 1) -> Conv(`group`, 4 *
    `multiplier` outputs) -> Q/DQ -> y: NNCF's per-channel input quantizer of a depthwise Conv."""
    rng = np.random.default_rng(8)
    c, out = 4, 4 * multiplier
    consts = {
        "xs": np.array(0.03, np.float32),
        "xz": np.array(128, np.uint8),
        "w1": rng.integers(-127, 128, (c, 3, 3, 3)).astype(np.int8),
        "w1s": np.linspace(0.005, 0.012, c).astype(np.float32),
        "w1z": np.zeros(c, np.int8),
        "b1": np.linspace(-1, 1, c).astype(np.float32),
        "as": ACT_SCALE,
        "az": np.array(zero, np.int8),
        "w2": rng.integers(-127, 128, (out, c // group, 3, 3)).astype(np.int8),
        "w2s": np.linspace(0.004, 0.01, out).astype(np.float32),
        "w2z": np.zeros(out, np.int8),
        "ys": np.array(DW_Y_SCALE, np.float32),
        "yz": np.array(128, np.uint8),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w1", "w1s", "w1z"], ["w1d"], axis=0),
        helper.make_node("Conv", ["xd", "w1d", "b1"], ["c"], pads=[1] * 4),
        helper.make_node("QuantizeLinear", ["c", "as", "az"], ["a"], axis=1),
        helper.make_node("DequantizeLinear", ["a", "as", "az"], ["ad"], axis=1),
        helper.make_node("DequantizeLinear", ["w2", "w2s", "w2z"], ["w2d"], axis=0),
        helper.make_node("Conv", ["ad", "w2d"], ["d"], pads=[1] * 4, group=group),
        helper.make_node("QuantizeLinear", ["d", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    return small_graph(nodes, consts, [2, 3, 6, 6])


def test_depthwise_conv_with_channel_multiplier_gets_a_per_tensor_input_scale():
    model = conv_then_conv_qdq(group=4, multiplier=2)
    x = np.random.default_rng(9).normal(0, 1, (2, 3, 6, 6)).astype(np.float32)
    optimized, report = optimized_copy(model)
    assert report["per_tensor_activations"] == 1
    consts = consts_of(optimized)
    for name in ("a", "ad"):
        node = producer(optimized, name)
        assert consts[node.input[1]].size == 1 and attr_names(node) == set()
    np.testing.assert_allclose(consts[producer(optimized, "a").input[1]], ACT_SCALE.max())
    assert_same_levels(run(optimized, x), run(model, x), DW_Y_SCALE)


@pytest.mark.parametrize("case", ["dense_reader", "writer_output_read_elsewhere", "uneven_zeros"])
def test_per_channel_activation_is_kept_unless_a_conv_writes_it_for_depthwise_convs(case):
    if case == "dense_reader":
        model = conv_then_conv_qdq(group=1, multiplier=2)
    elif case == "uneven_zeros":
        # Zero points far apart: the activations saturate at different values per channel.
        model = conv_then_conv_qdq(group=4, multiplier=1, zero=(0, 60, -50, 30))
    else:
        model = conv_then_conv_qdq(group=4, multiplier=1)
        model.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    model = typed(model)
    x = np.random.default_rng(10).normal(0, 1, (2, 3, 6, 6)).astype(np.float32)
    optimized, report = optimized_copy(model)
    assert report["per_tensor_activations"] == 0
    assert any("per-channel activation scale" in s for s in report["skipped"])
    assert consts_of(optimized)[producer(optimized, "a").input[1]].size == 4
    # Unfused, to compare levels without onnxruntime's fusions (they are tested below).
    ref, got = run_all(model, x, fuse=False), run_all(optimized, x, fuse=False)
    assert_same_levels(got[0], ref[0], DW_Y_SCALE)
    if case == "writer_output_read_elsewhere":
        # The writer's own (float) output is what it was, up to its bias now being int32.
        consts = consts_of(model)
        bias_step = float(consts["xs"]) * consts["w1s"].max()
        atol = BIAS_ROUNDING * bias_step + TOL["onnx_fp32"]
        np.testing.assert_allclose(got[1], ref[1], rtol=0, atol=atol)


@pytest.mark.parametrize("case", ["dense_reader", "writer_output_read_elsewhere"])
def test_a_kept_per_channel_activation_runs_in_onnxruntime_with_its_fusions(case):
    # A kept per-channel activation stays int8: made uint8, onnxruntime 1.32 fused it into a
    # QLinearConv that rejected the per-channel zero point at run time (found by this test).
    model = conv_then_conv_qdq(group=1 if case == "dense_reader" else 4, multiplier=2)
    if case == "writer_output_read_elsewhere":
        model.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
        model = typed(model)
    x = np.random.default_rng(10).normal(0, 1, (2, 3, 6, 6)).astype(np.float32)
    ref = run_all(model, x, fuse=False)[0]  # cannot raise: nothing fused
    optimized, _ = optimized_copy(model)
    assert_same_levels(run(optimized, x), ref, DW_Y_SCALE)


def test_int8_activation_that_is_a_graph_output_stays_int8():
    consts = {"s": np.array(0.02, np.float32), "z": np.array(0, np.int8)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["y"]),
    ]
    model = small_graph(nodes, consts, [2, 3, 4, 4], outputs=("y", ("xq", TensorProto.INT8)))
    x = np.random.default_rng(11).normal(0, 1, (2, 3, 4, 4)).astype(np.float32)
    optimized, report = optimized_copy(model)
    assert report["unsigned_activations"] == 0 and "int8 activation" in report["skipped"][0]
    (y0, q0), (y1, q1) = run_all(model, x), run_all(optimized, x)
    assert q1.dtype == np.int8
    np.testing.assert_array_equal(q1, q0)
    np.testing.assert_array_equal(y1, y0)


@pytest.mark.parametrize("scale", ["per_tensor", "per_channel"])
def test_flatten_moves_before_a_per_tensor_dequantize_only(scale):
    per_channel = scale == "per_channel"
    s = np.array([0.02, 0.03, 0.01, 0.04] if per_channel else 0.02, np.float32)
    z = np.zeros(4, np.int8) if per_channel else np.array(0, np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], axis=1),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], axis=1),
        helper.make_node("Flatten", ["xd"], ["y"]),
    ]
    model = small_graph(nodes, {"s": s, "z": z}, [2, 4, 3, 3])
    x = np.random.default_rng(12).normal(0, 1, (2, 4, 3, 3)).astype(np.float32)
    optimized, report = optimized_copy(model)
    flatten = next(n for n in optimized.graph.node if n.op_type == "Flatten")
    reads_q = producer(optimized, flatten.input[0]).op_type == "QuantizeLinear"
    assert reads_q == (not per_channel) and report["shape_ops_moved"] == (not per_channel)
    assert (producer(optimized, "y").op_type == "DequantizeLinear") == (not per_channel)
    np.testing.assert_array_equal(run(optimized, x), run(model, x))


def gemm_qdq(trans_b: int, per_channel: bool, bias: np.ndarray, w_scale=(0.01, 0.02, 0.015)):
    """DQ(x [64, 5]) , DQ(int8 w) -> Gemm(bias, transB) -> Q/DQ -> y, 3 outputs."""
    rng = np.random.default_rng(13)
    k, n = 5, 3
    consts = {
        "xs": np.array(0.03, np.float32),
        "xz": np.array(128, np.uint8),
        "w": rng.integers(-127, 128, (n, k) if trans_b else (k, n)).astype(np.int8),
        "ws": np.array(w_scale if per_channel else w_scale[0], np.float32),
        "wz": np.zeros(n, np.int8) if per_channel else np.array(0, np.int8),
        "b": bias.astype(np.float32),
        "ys": np.array(0.05, np.float32),
        "yz": np.array(128, np.uint8),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0 if trans_b else 1),
        helper.make_node("Gemm", ["xd", "wd", "b"], ["g"], transB=trans_b),
        helper.make_node("QuantizeLinear", ["g", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    return small_graph(nodes, consts, [64, k])


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel_w", "per_tensor_w"])
@pytest.mark.parametrize("trans_b", [0, 1], ids=["transB0", "transB1"])
def test_gemm_bias_becomes_int32_along_the_weight_output_axis(trans_b, per_channel):
    bias = np.array([0.5, -0.25, 1.0])
    model = gemm_qdq(trans_b, per_channel, bias)
    x = np.random.default_rng(14).normal(0, 1, (64, 5)).astype(np.float32)
    optimized, report = optimized_copy(model)
    assert report["biases_quantized"] == 1
    consts = consts_of(optimized)
    gemm = next(n for n in optimized.graph.node if n.op_type == "Gemm")
    bias_dq = producer(optimized, gemm.input[2])
    q, scale = consts[bias_dq.input[0]], consts[bias_dq.input[1]]
    assert q.dtype == np.int32 and scale.shape == (3,)
    w_scale = consts_of(model)["ws"]
    np.testing.assert_allclose(scale, np.broadcast_to(0.03 * w_scale, 3), rtol=TOL["fp32"])
    assert np.abs(q * scale - bias).max() <= BIAS_ROUNDING * scale.max() * (1 + TOL["fp32"])
    assert_same_levels(run(optimized, x), run(model, x), 0.05)


def test_bias_that_overflows_int32_stays_float():
    # Channel 1's weights are all but pruned (scale 1e-9): its bias is 1e11 steps of 3e-11.
    bias = np.array([0.5, 3.0, -0.5])
    model = gemm_qdq(1, True, bias, w_scale=(0.01, 1e-9, 0.02))
    x = np.random.default_rng(15).normal(0, 1, (64, 5)).astype(np.float32)
    optimized, report = optimized_copy(model)
    assert report["biases_quantized"] == 0 and "int32" in report["skipped"][0]
    gemm = next(n for n in optimized.graph.node if n.op_type == "Gemm")
    np.testing.assert_array_equal(consts_of(optimized)[gemm.input[2]], bias.astype(np.float32))
    # Unfused: onnxruntime 1.32's own Gemm fusions lose this bias (channel 1 comes out ~0, not 3).
    ref, got = run_all(model, x, fuse=False)[0], run_all(optimized, x, fuse=False)[0]
    np.testing.assert_allclose(ref[:, 1], bias[1])
    assert_same_levels(got, ref, 0.05)


def test_models_with_control_flow_are_left_as_they_are():
    rng = np.random.default_rng(16)
    weight = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    model = conv_bn_qdq(weight, np.array([1.5, -0.7, 0.3, 2.0]), 6.0, 6 / 255)
    # A branch reads the Conv output from the outer scope: no node input names it.
    branch = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["t"])],
        "branch",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 4, 6, 6])],
    )
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(
        helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch)
    )
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    model = typed(model)
    x = rng.normal(0, 2, (2, 3, 6, 6)).astype(np.float32)
    optimized, report = optimized_copy(model)
    assert report["skipped"] == ["model has control flow (If/Loop)"]
    assert not any(v for k, v in report.items() if k != "skipped")
    assert optimized.SerializeToString() == model.SerializeToString()
    for got, ref in zip(run_all(optimized, x), run_all(model, x), strict=True):
        np.testing.assert_array_equal(got, ref)
