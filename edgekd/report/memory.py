"""Peak activation memory and weight bytes of an ONNX model, from its graph.

Microcontroller and small-NPU users choose a model by RAM as much as by latency: what must fit
is the weights plus the largest set of intermediate tensors alive at one time. This reads that
from the graph as written: ONNX's own shape inference gives every tensor's shape (a symbolic
dimension, the batch, counts as 1), the nodes run in the graph's order (ONNX requires it to be
topological), a tensor lives from the node that makes it (the graph's inputs from the start)
to the last node that reads it (the graph's outputs to the end), and while a node runs its
inputs and outputs are all alive. In a Q/DQ graph the float tensors between a
DequantizeLinear, its op and the next QuantizeLinear exist only as written: INT8 runtimes fuse
them, so `peak_activation_bytes` counts them at their integer size (the figure as written is
kept beside it). A runtime that also fuses other nodes or works in place needs less; the figure
is the graph's, before any runtime's own planning.
No library computes this for ONNX graphs (onnxruntime plans its arena privately), hence these
few lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def graph_memory(path: Path) -> dict[str, Any]:
    """{peak_activation_bytes, peak_node, weight_bytes, unsized_tensors} of the ONNX file at
    `path`."""
    import onnx
    from onnx import helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path)), data_prop=True)
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    weight_bytes = sum(_initializer_bytes(t) for t in weights.values())
    sizes: dict[str, int] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        kind = info.type.tensor_type
        if not kind.HasField("shape") or kind.elem_type == 0:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in kind.shape.dim]
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(kind.elem_type)).itemsize
        sizes[info.name] = int(np.prod(dims, dtype=np.int64)) * itemsize
    constants = set(weights)
    for node in graph.node:
        if node.op_type == "Constant":  # Constant nodes hold weights too
            constants.update(node.output)
            weight_bytes += sum(sizes.get(o, 0) for o in node.output)
        elif node.input and all(i in constants for i in node.input if i):
            # computed from weights alone (a weight's DequantizeLinear, a shape): folded by
            # runtimes, and not an activation
            constants.update(node.output)
    written, _ = _peak(graph, sizes, constants)
    fused, fused_node = _peak(graph, _fused_sizes(graph, sizes), constants)
    unsized = sum(1 for n in graph.node for o in n.output if o and o not in sizes)
    return {
        "peak_activation_bytes": fused,
        "peak_node": fused_node,
        "peak_activation_bytes_as_written": written,
        "weight_bytes": weight_bytes,
        "unsized_tensors": unsized,  # shape inference gave no shape: counted as 0 bytes
    }


def _peak(graph: Any, sizes: dict[str, int], constants: set[str]) -> tuple[int, str]:
    """The largest total size of the tensors alive at once, and the node where it is reached."""
    last_use: dict[str, int] = {}
    for step, node in enumerate(graph.node):
        for name in node.input:
            last_use[name] = step
    outputs = {o.name for o in graph.output}
    alive = {i.name for i in graph.input if i.name not in constants}
    peak, peak_node = sum(sizes.get(n, 0) for n in alive), "(inputs)"
    for step, node in enumerate(graph.node):
        alive.update(o for o in node.output if o and o not in constants)
        now = sum(sizes.get(n, 0) for n in alive)
        if now > peak:
            peak, peak_node = now, node.name or f"{node.op_type} #{step}"
        alive = {n for n in alive if n in outputs or last_use.get(n, -1) > step}
    return peak, peak_node


def _fused_sizes(graph: Any, sizes: dict[str, int]) -> dict[str, int]:
    """Tensor sizes as an INT8 runtime holds them: it fuses each DequantizeLinear into the op
    that reads it and each QuantizeLinear into the op that feeds it, so a DequantizeLinear's
    float output costs what its integer input does, and a float tensor read only by
    QuantizeLinear nodes costs what their integer output does; the model's own inputs and
    outputs stay float. A float graph is unchanged."""
    made_by = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    ends = {i.name for i in graph.input} | {o.name for o in graph.output}
    fused = dict(sizes)
    for name in sizes.keys() - ends:  # the model's inputs and outputs stay float
        producer, users = made_by.get(name), readers.get(name, [])
        if producer is not None and producer.op_type == "DequantizeLinear":
            fused[name] = sizes.get(producer.input[0], sizes[name])
        elif users and all(u.op_type == "QuantizeLinear" for u in users):
            fused[name] = min(sizes.get(u.output[0], sizes[name]) for u in users)
    return fused


def _initializer_bytes(tensor: Any) -> int:
    from onnx import helper

    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
