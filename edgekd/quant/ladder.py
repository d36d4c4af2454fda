"""The INT8 ladder's sensitivity analysis and precision fallback: which layers stay in float.

NNCF's accuracy-controlled quantization (`nncf.quantize_with_accuracy_control`) does this work
for its OpenVINO and ONNX backends only: NNCF 3.4 raises UnsupportedBackendError for a torch
model. So edgekd drives the same idea (rank layers by what quantizing them costs, keep the worst
in float until the accuracy budget is met, as NNCF's accuracy restorer and Nagel et al., arXiv
2106.08295 §4, describe) on the PyTorch model, with NNCF doing every quantization:

- `layers`: every weighted layer NNCF quantizes, found in NNCF's own graph of the model, with
  the quantizers that make it INT8 (its weight quantizer and the activation quantizer on its
  input, walking back over shape-only ops such as Flatten).
- `sensitivity`: leave one layer out at a time. Its quantizers are switched off in a copy of the
  PTQ model (NNCF's `disable_quantization`), the copy is scored on validation images, and the
  accuracy it regains and the SQNR of its logits against the FP32 model's are recorded. An
  activation quantizer shared with another reader (a residual branch) is switched off for both,
  so the figure is an estimate; the fallback below checks every choice with a real NNCF run.
- `fallback`: the most sensitive layers go into NNCF's ignored scope one more at a time (a real
  `nncf.quantize`, so the exported Q/DQ graph leaves exactly those layers float), until the
  validation drop is within budget or the limit on float layers is reached.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

# NNCF metatypes of ops that only move or reshape values: an activation quantizer placed before
# them serves the weighted layer after them.
PASS_THROUGH = ("Flatten", "Reshape", "View", "Squeeze", "Unsqueeze", "Dropout", "Identity")
HOOKS = "__nncf_hooks."


@dataclass(frozen=True)
class Layer:
    """A weighted layer NNCF quantizes: its NNCF node name (what an ignored scope takes), its
    module path in the user's model, and the hook names of the quantizers that make it INT8."""

    node: str
    module: str
    quantizers: tuple[str, ...]


@dataclass
class Sensitivity:
    """What leaving one layer in float (all else INT8) did on the validation images."""

    module: str
    node: str
    val_acc: float  # % with this layer float
    gain: float  # points regained against the all-INT8 model
    sqnr_db: float  # logits against the FP32 model's, 10·log10(Σf² / Σ(f − q)²)


@dataclass
class Step:
    """One fallback step: the layers left in float so far and the real PTQ model's score."""

    float_layers: list[str]  # module paths, as the user knows them
    nodes: list[str]  # NNCF node names, as its ignored scope takes them
    val_acc: float
    drop: float


@dataclass
class Fallback:
    steps: list[Step] = field(default_factory=list)
    met: bool = False

    @property
    def last(self) -> Step | None:
        return self.steps[-1] if self.steps else None

    @property
    def best(self) -> Step | None:
        """The step with the highest validation accuracy (the fewer float layers on a tie)."""
        return max(self.steps, key=lambda s: (s.val_acc, -len(s.nodes)), default=None)

    def to_json(self) -> dict[str, Any]:
        return {"met": self.met, "steps": [asdict(s) for s in self.steps]}


def module_path(node: str) -> str:
    """`features/3/conv/0/0/conv2d/0` (an NNCF node) → `features.3.conv.0.0` (the module)."""
    return ".".join(node.split("/")[:-2])


def quantizers(model: nn.Module) -> dict[str, Any]:
    """Hook name (`pre_hooks.<node>__<port>`, `post_hooks.<node>__<port>`) → NNCF quantizer."""
    from nncf.torch.quantization.layers import BaseQuantizer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseQuantizer) and name.startswith(HOOKS):
            out[name[len(HOOKS) :].rsplit(".", 1)[0]] = module
    return out


def layers(float_model: nn.Module, quantized: nn.Module, example: torch.Tensor) -> list[Layer]:
    """The weighted layers of `quantized` (an NNCF PTQ model of `float_model`) in graph order."""
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph

    graph = build_nncf_graph(copy.deepcopy(float_model).eval().cpu(), example.cpu())
    present = quantizers(quantized)
    found = []
    for node in graph.get_all_nodes():
        edges = graph.get_input_edges(node)
        weight = [e for e in edges if _is_constant(e.from_node)]
        data = [e for e in edges if not _is_constant(e.from_node)]
        hooks = [f"pre_hooks.{node.node_name}__{e.input_port_id}" for e in weight]
        hooks = [h for h in hooks if h in present]  # its weight's (a bias is not quantized)
        if not hooks:
            continue  # not a weighted layer NNCF quantized
        for edge in data:
            hooks += _input_quantizer(graph, edge, present)
        found.append(Layer(node.node_name, module_path(node.node_name), tuple(hooks)))
    return found


def _is_constant(node: Any) -> bool:
    return "Const" in node.metatype.__name__


def _input_quantizer(graph: Any, edge: Any, present: dict[str, Any]) -> list[str]:
    """The quantizer on the value `edge` carries: a pre-hook on the reader's port, else a
    post-hook on its producer, looking through shape-only producers."""
    pre = f"pre_hooks.{edge.to_node.node_name}__{edge.input_port_id}"
    if pre in present:
        return [pre]
    for _ in range(8):  # a few Flatten/Dropout hops at most
        post = f"post_hooks.{edge.from_node.node_name}__{edge.output_port_id}"
        if post in present:
            return [post]
        source = edge.from_node
        ins = [e for e in graph.get_input_edges(source) if not _is_constant(e.from_node)]
        if len(ins) != 1 or not any(p in source.metatype.__name__ for p in PASS_THROUGH):
            return []
        edge = ins[0]
    return []


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    noise = float((reference - approx).double().pow(2).sum())
    signal = float(reference.double().pow(2).sum())
    return math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) * 100


def sensitivity(
    quantized: nn.Module,
    found: list[Layer],
    logits: Callable[[nn.Module], torch.Tensor],
    fp32_logits: torch.Tensor,
    labels: torch.Tensor,
) -> list[Sensitivity]:
    """Leave-one-out sensitivity of every layer in `found`, most sensitive first (accuracy
    regained, then SQNR). `logits(model)`: the model's logits on the validation images whose
    FP32 logits and labels are given."""
    probe = copy.deepcopy(quantized)
    hooks = quantizers(probe)
    base = accuracy(logits(probe), labels)
    out = []
    for layer in found:
        chosen = [hooks[h] for h in layer.quantizers]
        saved = [q.is_enabled_quantization() for q in chosen]
        for q in chosen:
            q.disable_quantization()
        out.append(_score(layer, logits(probe), fp32_logits, labels, base))
        for q, was in zip(chosen, saved, strict=True):
            if was:
                q.enable_quantization()
    return sorted(out, key=lambda s: (-s.gain, -s.sqnr_db))


def _score(
    layer: Layer, got: torch.Tensor, fp32: torch.Tensor, labels: torch.Tensor, base: float
) -> Sensitivity:
    acc = accuracy(got, labels)
    return Sensitivity(
        layer.module, layer.node, round(acc, 2), round(acc - base, 2), sqnr(fp32, got)
    )


def sqnr(reference: torch.Tensor, approx: torch.Tensor) -> float:
    value = sqnr_db(reference, approx)
    return round(value, 2) if math.isfinite(value) else 999.0


def estimates(
    quantized: nn.Module,
    ranking: list[Sensitivity],
    found: list[Layer],
    limit: int,
    logits: Callable[[nn.Module], torch.Tensor],
    labels: torch.Tensor,
) -> list[float]:
    """Validation accuracy with the first 1, 2, … `limit` layers of `ranking` switched to float
    together in a copy of the PTQ model: where the real fallback should start."""
    probe = copy.deepcopy(quantized)
    hooks = quantizers(probe)
    by_node = {layer.node: layer for layer in found}
    out = []
    for s in ranking[:limit]:
        for name in by_node[s.node].quantizers:
            hooks[name].disable_quantization()
        out.append(round(accuracy(logits(probe), labels), 2))
    return out


def start_at(estimated: list[float], fp32_acc: float, budget: float) -> int:
    """The fewest float layers whose estimated accuracy meets the budget (all when none do)."""
    return next(
        (k for k, acc in enumerate(estimated, 1) if fp32_acc - acc <= budget), len(estimated)
    )


def fallback(
    ranking: list[Sensitivity],
    start: int,
    limit: int,
    fp32_acc: float,
    budget: float,
    quantize: Callable[[list[str]], nn.Module],
    score: Callable[[nn.Module], float],
) -> tuple[Fallback, nn.Module | None]:
    """Leave the first k layers of `ranking` in float for real (`quantize(nodes)`: NNCF PTQ with
    them ignored; `score`: its validation accuracy), k from `start` (`start_at`) up by one until
    the drop from `fp32_acc` is at most `budget` points or k reaches `limit`; the steps and the
    last step's model."""
    result, model = Fallback(), None
    for k in range(max(start, 1), limit + 1):
        chosen = ranking[:k]
        model = quantize([s.node for s in chosen])
        acc = score(model)
        step = Step(
            [s.module for s in chosen], [s.node for s in chosen], acc, round(fp32_acc - acc, 2)
        )
        result.steps.append(step)
        if step.drop <= budget:
            result.met = True
            break
    return result, model
