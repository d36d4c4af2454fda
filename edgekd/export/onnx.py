"""ONNX export (FP32 and INT8 QDQ) and the onnxruntime-vs-PyTorch parity check."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.artifacts import atomic_path

OPSET = 17
INPUT, OUTPUT = "input", "logits"


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """TorchScript-based export (dynamo=False keeps NNCF's Q/DQ nodes), batch axis dynamic,
    checked with onnx.checker before it is renamed into place."""
    import onnx

    with atomic_path(path) as tmp:
        torch.onnx.export(
            model.eval().cpu(),
            (example.cpu(),),
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )
        onnx.checker.check_model(str(tmp), full_check=True)


def store_int8_weights(path: Path) -> None:
    """Rewrite a Q/DQ model so weights are stored as int8 tensors, not float + QuantizeLinear.

    NNCF's export keeps each weight in float and quantizes it at run time, so the INT8 file is
    larger than the FP32 one. onnxruntime's basic (ONNX-only, portable) optimisations fold those
    constant QuantizeLinear nodes into int8 initializers and drop Identity nodes, leaving
    DequantizeLinear in place; the result is still a standard Q/DQ model.
    """
    import onnx
    import onnxruntime as ort

    with atomic_path(path) as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(tmp)
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        onnx.checker.check_model(str(tmp), full_check=True)


def export_deployable(
    model: nn.Module, example: torch.Tensor, path: Path
) -> tuple[Path, Path | None, nn.Module]:
    """`model` as the export stage writes it: an NNCF-quantized model as NNCF's Q/DQ file with
    int8 weights (`<stem>_qdq.onnx`, what TensorRT takes) and edgekd's exact rewrite of it at
    `path` (what CPU runtimes take, uint8 weights where this CPU needs them); a float model as
    plain ONNX at `path`. Returns the file, the Q/DQ file (None for FP32) and the PyTorch model
    the files must agree with."""
    from edgekd.export.qdq import optimize_qdq, u8s8_saturates
    from edgekd.quant import nncf_qat

    if not nncf_qat.is_quantized(model):
        export_onnx(model, example, path)
        return path, None, model
    stripped = nncf_qat.strip(model, example)
    portable = path.with_name(f"{path.stem}_qdq.onnx")
    export_onnx(stripped, example, portable)
    store_int8_weights(portable)
    optimize_qdq(portable, path, u8s8_saturates())  # the export stage's `int8_weights: auto`
    return path, portable, stripped


def onnx_logits(
    path: Path, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 500
) -> np.ndarray:
    """Logits of `images` (a tensor, or its batches one after another) from onnxruntime's CPU
    provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if isinstance(images, torch.Tensor):
        images = images.split(batch_size)
    return np.concatenate([session.run([OUTPUT], {INPUT: b.numpy()})[0] for b in images])


def torch_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Eager PyTorch logits on the CPU: the reference every runtime is checked against."""
    model = model.eval().cpu()
    with torch.no_grad():
        return torch.cat(
            [model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        ).numpy()


def parity(
    path: Path, model: nn.Module, images: torch.Tensor, expected: np.ndarray | None = None
) -> dict[str, Any]:
    """Max |onnxruntime − PyTorch| over the logits and top-1 agreement (%) on `images`;
    `expected` are the model's logits when the caller already has them."""
    ref = torch_logits(model, images) if expected is None else expected
    got = onnx_logits(path, images)
    return {
        "images": len(images),
        "max_abs_diff": float(np.abs(got - ref).max()),
        "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean() * 100),
    }
