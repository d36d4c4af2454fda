"""uint8 weights: the same dequantized weights, and onnxruntime's fused kernels then compute
what the unfused graph does even where uint8 × int8 would saturate (x86 without VNNI)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgekd.export.qdq import optimize_model, u8s8_saturates

CHANNELS = 64


def saturating_conv() -> onnx.ModelProto:
    """x → Q(uint8) → DQ → Conv 1×1 (int8 weights of +127, per-channel scale) → Q → DQ: with
    inputs near 255 every pair of products is 2 · 255 · 127 = 64,770, over int16's 32,767."""
    w = np.full((CHANNELS, CHANNELS, 1, 1), 127, np.int8)
    w[:, ::3] = -127
    inits = [
        numpy_helper.from_array(np.array(1 / 255, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.full(CHANNELS, 0.001, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(CHANNELS, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(0.05, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "y_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zero"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, CHANNELS, 4, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def run(model: onnx.ModelProto, x: np.ndarray, fused: bool) -> np.ndarray:
    options = ort.SessionOptions()
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def weights(model: onnx.ModelProto) -> np.ndarray:
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq = next(
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in consts and consts[n.input[0]].ndim == 4
    )
    q, scale, zero = (consts[name] for name in dq.input)
    return (q.astype(np.float32) - zero.reshape(-1, 1, 1, 1)) * scale.reshape(-1, 1, 1, 1)


def test_uint8_weights_dequantize_to_the_same_values_and_do_not_saturate():
    x = np.random.default_rng(0).uniform(0.95, 1.0, (1, CHANNELS, 4, 4)).astype(np.float32)
    signed, unsigned = saturating_conv(), saturating_conv()
    assert optimize_model(signed, uint8_weights=False)["weights_uint8"] == 0
    report = optimize_model(unsigned, uint8_weights=True)
    assert report["weights_uint8"] == 1
    np.testing.assert_array_equal(weights(signed), weights(unsigned))
    consts = {i.name: numpy_helper.to_array(i) for i in unsigned.graph.initializer}
    assert {c.dtype for c in consts.values() if c.ndim == 4} == {np.dtype(np.uint8)}

    exact = run(signed, x, fused=False)  # float Conv between Q/DQ: no integer kernel
    np.testing.assert_allclose(run(unsigned, x, fused=True), exact, atol=0.05 + 1e-6)
    gap = np.abs(run(signed, x, fused=True) - exact).max()
    if u8s8_saturates():  # this machine's uint8 × int8 kernel really saturates here
        assert gap > 1.0
    else:
        assert gap <= 0.05 + 1e-6
