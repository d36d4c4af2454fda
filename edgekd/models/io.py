"""Saving and loading model folders (safetensors + JSON, never pickle) and foreign weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from edgekd.artifacts import atomic_path, read_json
from edgekd.errors import WeightsError
from edgekd.models import zoo
from edgekd.models.specs import ModelSpec

WEIGHTS, META = "model.safetensors", "model.json"


def save_model(model: nn.Module, directory: Path, meta: dict[str, Any]) -> None:
    """Write `model` to `directory` as model.safetensors + model.json (atomically).

    `meta` must hold `spec` (the ModelSpec as a dict), `in_channels` and `num_classes`; it may
    hold `quantization` (NNCF's JSON config), `preprocessing`, `classes` and anything else.
    """
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        save_file(state, str(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str))


def load_model(directory: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved in `directory`: architecture, pruned shapes, quantizers, weights."""
    meta = read_json(directory / META)
    state = read_weights(directory / WEIGHTS)
    model = zoo.build(
        ModelSpec.model_validate(meta["spec"]), meta["in_channels"], meta["num_classes"]
    )
    resize_to_state_dict(model, state)
    if meta.get("quantization"):
        from edgekd.quant.nncf_qat import restore

        model = restore(model, meta["quantization"])
    load_state(model, state, str(directory / WEIGHTS))
    return model, meta


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, or a PyTorch state_dict with `weights_only=True` (no code runs)."""
    if not path.exists():
        raise WeightsError(f"weights file not found: {path.resolve()}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"{path}: refused. edgekd loads checkpoints with weights_only=True, so files that "
            f"need pickle to run code are not loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}). Save a state_dict or safetensors instead."
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state_dict (names → tensors)")
    return obj


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True), with an error that names what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        ):
            if names:
                parts.append(f"{len(names)} {label} (e.g. {', '.join(names[:3])})")
        raise WeightsError(
            f"{source} does not fit the architecture: {'; '.join(parts)}. "
            "Check `model.arch` and its settings in the pipeline."
        )
    model.load_state_dict(state, strict=True)


def resize_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give conv, norm and linear layers the channel counts found in `state` (after pruning)."""
    for name, module in model.named_modules():
        weight = state.get(f"{name}.weight" if name else "weight")
        if weight is None or not hasattr(module, "weight") or module.weight is None:
            continue
        if tuple(weight.shape) == tuple(module.weight.shape):
            continue
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels
            module.out_channels = weight.shape[0]
            if depthwise:
                module.groups = module.in_channels = weight.shape[0]
            else:
                module.in_channels = weight.shape[1] * module.groups
        elif isinstance(module, nn.BatchNorm2d):
            module.num_features = weight.shape[0]
            for buf in ("running_mean", "running_var"):
                setattr(module, buf, torch.zeros(weight.shape[0]))
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = weight.shape
        elif isinstance(module, nn.LayerNorm):  # ConvNeXt's, over the channels
            module.normalized_shape = tuple(weight.shape)
        else:
            continue
        module.weight = nn.Parameter(torch.empty_like(weight))
        if getattr(module, "bias", None) is not None:
            module.bias = nn.Parameter(torch.empty(weight.shape[0]))
    # Other tensors pruning resized (ConvNeXt's per-channel layer scale): the pruned shape.
    for name, param in list(model.named_parameters()):
        if name in state and tuple(state[name].shape) != tuple(param.shape):
            owner, _, attr = name.rpartition(".")
            setattr(
                model.get_submodule(owner) if owner else model,
                attr,
                nn.Parameter(torch.empty_like(state[name])),
            )


def file_bytes(path: Path) -> int:
    return (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )
