"""Feature capture by forward hooks on dotted module paths, without editing the user's model."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from edgekd.distill.loss import EMBEDDING


class FeaturePathError(Exception):
    """A dotted module path that names no module; `valid` lists the names that exist."""

    def __init__(self, path: str, valid: list[str]) -> None:
        close = difflib.get_close_matches(path, valid, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        shown = ", ".join(valid[:60]) + (", ..." if len(valid) > 60 else "")
        super().__init__(f"no module {path!r}{hint} Valid names: {EMBEDDING}, {shown}")
        self.path = path


def module_names(model: nn.Module) -> list[str]:
    """The dotted paths a user may hook (NNCF's own quantizer modules left out)."""
    return [name for name, _ in model.named_modules() if name and "__nncf" not in name]


def resolve(model: nn.Module, path: str) -> tuple[str, nn.Module]:
    """`path` → (resolved path, module); @embedding is the model's last nn.Linear."""
    if path == EMBEDDING:
        linears = [
            (name, m)
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and "__nncf" not in name
        ]
        if not linears:
            raise FeaturePathError(path, module_names(model))
        return linears[-1]
    try:
        return path, model.get_submodule(path)
    except AttributeError:
        raise FeaturePathError(path, module_names(model)) from None


def _split_key(key: str) -> tuple[str, bool]:
    if key.endswith(":input"):
        return key[: -len(":input")], True
    return key, key == EMBEDDING


@contextmanager
def capture(model: nn.Module, keys: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward of `model` stores the named features in the dict it
    yields. @embedding always reads the input of the last linear layer. The hooks are removed
    on exit, also after an exception."""
    features: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in keys:
            path, is_input = _split_key(name)
            _, module = resolve(model, path)
            if is_input:

                def pre_hook(
                    _m: nn.Module, args: tuple[torch.Tensor, ...], key: str = name
                ) -> None:
                    features[key] = args[0]

                handles.append(module.register_forward_pre_hook(pre_hook))
            else:

                def hook(
                    _m: nn.Module,
                    _args: tuple[torch.Tensor, ...],
                    out: torch.Tensor,
                    key: str = name,
                ) -> None:
                    features[key] = out

                handles.append(module.register_forward_hook(hook))
        yield features
    finally:
        for handle in handles:
            handle.remove()


def shapes(model: nn.Module, keys: list[str], example: torch.Tensor) -> dict[str, torch.Size]:
    """Feature shapes (batch dimension included) from one eval-mode forward of `example`."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture(model, keys) as features:
            model(example)
    finally:
        model.train(was_training)
    missing = [k for k in keys if k not in features]
    if missing:
        raise RuntimeError(f"modules {missing} did not run in the forward pass")
    return {k: v.shape for k, v in features.items()}
