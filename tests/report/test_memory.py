"""Peak activation memory from an ONNX graph: liveness in execution order, hand-computed."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekd.report.memory import graph_memory

FLOAT_4x8x8 = 4 * 8 * 8 * 4  # bytes of one [N, 4, 8, 8] float32 tensor at N = 1


def _save(tmp_path, nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def _tensor(name, batch="N"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, 4, 8, 8])


def test_a_chain_keeps_two_tensors_alive_and_a_symbolic_batch_counts_as_one(tmp_path):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="first"),
        helper.make_node("Relu", ["a"], ["y"], name="second"),
    ]
    memory = graph_memory(_save(tmp_path, nodes, [_tensor("x")], [_tensor("y")]))
    # x dies after `first`: at most an input and an output are alive at once
    assert memory["peak_activation_bytes"] == 2 * FLOAT_4x8x8
    assert memory["weight_bytes"] == 0 and memory["unsized_tensors"] == 0


def test_a_skip_connection_keeps_its_input_alive_until_the_add(tmp_path):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="first"),
        helper.make_node("Relu", ["a"], ["b"], name="second"),
        helper.make_node("Add", ["x", "b"], ["y"], name="add"),
    ]
    memory = graph_memory(_save(tmp_path, nodes, [_tensor("x", 1)], [_tensor("y", 1)]))
    # during `second`: x (for the add), a (its input) and b (its output)
    assert memory["peak_activation_bytes"] == 3 * FLOAT_4x8x8
    assert memory["peak_node"] == "second"


def test_weights_are_initializers_and_constants_not_activations(tmp_path):
    scale = numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32), "scale")
    shift = helper.make_tensor("shift_value", TensorProto.FLOAT, [4], [0.0] * 4)
    nodes = [
        helper.make_node("Constant", [], ["shift"], value=shift),
        helper.make_node("Mul", ["x", "scale"], ["a"]),
        helper.make_node("Reshape", ["shift", "shape"], ["shift4"]),
        helper.make_node("Add", ["a", "shift4"], ["y"]),
    ]
    shape = numpy_helper.from_array(np.array([1, 4, 1, 1], np.int64), "shape")
    path = _save(tmp_path, nodes, [_tensor("x", 1)], [_tensor("y", 1)], [scale, shape])
    memory = graph_memory(path)
    assert memory["weight_bytes"] == 4 * 4 + 4 * 8 + 4 * 4  # scale, shape, the Constant
    # shift4 is computed from weights alone, so a (folded) weight too: x, a, y are what lives
    assert memory["peak_activation_bytes"] == 2 * FLOAT_4x8x8


def test_a_qdq_graph_counts_its_fused_tensors_at_their_integer_size(tmp_path):
    """x → Q → DQ → Relu → Q → DQ → y, as NNCF writes it: an INT8 runtime holds x, the int8
    tensors and y; the float tensors between DQ, Relu and Q exist only as written."""
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("Relu", ["xd"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["y"]),
    ]
    path = _save(tmp_path, nodes, [_tensor("x", 1)], [_tensor("y", 1)], [scale, zero])
    memory = graph_memory(path)
    int8 = FLOAT_4x8x8 // 4
    assert memory["peak_activation_bytes_as_written"] == 2 * FLOAT_4x8x8  # xd and r in Relu
    # fused: xd costs what xq does, r what rq does; the peak is x with xq (the first Q)
    assert memory["peak_activation_bytes"] == FLOAT_4x8x8 + int8
    assert memory["weight_bytes"] == 4 + 1
