"""NNCF post-training quantization, its JSON config round trip, and stripping for export.

The QAT itself is the ordinary KD training loop run on the quantized model: NNCF's fake
quantizers are torch modules whose scales train with the weights.

NNCF compiles its CPU quantization kernels on first use and gives up after 60 s by default
(NNCF_EXTENSION_LOAD_TIMEOUT). On a 2-core machine busy with training the build took 2 min
(measured here), so a first QAT run failed; edgekd waits up to 15 min unless the user set it.

torch builds such kernels in one folder per user (~/.cache/torch_extensions), and the build file
names the Python environment's include paths, so two environments (a clone's own .venv and
another's, CI's and a developer's) rebuild it in turn, each time the other ran last (seen here:
build.ninja held /work/main/.venv's paths after a run from a fresh clone's). Unless the user set
TORCH_EXTENSIONS_DIR, edgekd gives each environment (sys.prefix) its own folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd import distributed
from edgekd.data.datasets import ImageSet, Splits, batches

NNCF_KEY_PREFIX = "__nncf"
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")
_ENVIRONMENT = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR",
    str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "torch_extensions"
        / _ENVIRONMENT
    ),
)


def quantize(
    model: nn.Module,
    calibration: ImageSet,
    splits: Splits,
    batch_size: int,
    device: torch.device,
    preset: str = "performance",
    ignored: list[str] | None = None,
    per_channel: bool = True,
) -> nn.Module:
    """INT8 fake-quantized copy of `model`, ranges calibrated on `calibration` (NNCF PTQ with
    its fast bias correction); the NNCF nodes in `ignored` stay float (quant/ladder.py);
    weight scales per output channel, or one per tensor (`per_channel=False`, for
    accelerators that take only that).

    Under torchrun rank 0 alone calibrates; the other ranks insert the same quantizers from its
    config and load its ranges and weights, so every rank starts QAT from one calibration."""

    def calibrate() -> nn.Module:
        inputs = [b.images.to(device) for b in batches(calibration, splits, batch_size)]
        return quantize_inputs(model, inputs, device, preset, ignored, per_channel)

    def share(quantized: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return config(quantized), {k: v.cpu() for k, v in quantized.state_dict().items()}

    def rebuild(payload: tuple[dict[str, Any], dict[str, torch.Tensor]]) -> nn.Module:
        quant_config, state = payload
        quantized = restore(copy.deepcopy(model).eval().cpu(), quant_config)
        quantized.load_state_dict(state)
        return quantized.to(device)

    return distributed.once(calibrate, share, rebuild)


def quantize_inputs(
    model: nn.Module,
    inputs: list[torch.Tensor],
    device: torch.device,
    preset: str = "performance",
    ignored: list[str] | None = None,
    per_channel: bool = True,
) -> nn.Module:
    """`quantize` on ready input batches (a part of a network fed other tensors than images)."""
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        QuantizationParameters,
    )

    weights = QuantizationParameters(per_channel=per_channel)
    return nncf.quantize(
        copy.deepcopy(model).eval().to(device),
        nncf.Dataset(inputs),
        preset=nncf.QuantizationPreset(preset),
        subset_size=len(inputs),  # NNCF counts dataset items, here batches
        fast_bias_correction=True,
        ignored_scope=nncf.IgnoredScope(names=list(ignored)) if ignored else None,
        advanced_parameters=AdvancedQuantizationParameters(weights_quantization_params=weights),
    )


def config(model: nn.Module) -> dict[str, Any]:
    """NNCF's description of the inserted quantizers as plain JSON data."""
    import nncf.torch

    return json.loads(json.dumps(nncf.torch.get_config(model), default=str))


def restore(model: nn.Module, quant_config: dict[str, Any]) -> nn.Module:
    """Re-insert the quantizers described by `quant_config` into a float model.

    NNCF instantiates only classes from its own `nncf.*` modules here (allowed_modules), so a
    tampered config cannot import arbitrary code.
    """
    import nncf.torch

    return nncf.torch.load_from_config(model, quant_config)


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The float weights of a quantized model, without its quantizer parameters."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(NNCF_KEY_PREFIX)}


def strip(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy with fake quantizers turned into Quantize/Dequantize pairs for ONNX export."""
    import nncf

    # nncf.strip needs torchao for this path (measured, see DESIGN.md).
    return nncf.strip(copy.deepcopy(model).eval(), example_input=example)


def is_quantized(model: nn.Module) -> bool:
    return any(k.startswith(NNCF_KEY_PREFIX) for k in model.state_dict())
