"""Frozen teachers: a PyTorch model (live, with hooked features, or with logits cached once per
training image and mirror image) or an ONNX file run through onnxruntime (logits only)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from edgekd.artifacts import atomic_path
from edgekd.data.datasets import Batch, ImageSet, Splits, model_to_device, normalize, to_device
from edgekd.distill.hooks import capture
from edgekd.distill.terms import Outputs

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


class Teacher:
    """Gives a teacher's outputs for a training batch; never trains the teacher.

    `model` is a PyTorch module, or None when `logits_fn` runs a foreign model (ONNX).
    `inputs` turns the student's normalised batch into the teacher's own normalisation (None:
    both are normalised alike)."""

    def __init__(
        self,
        model: nn.Module | None,
        device: torch.device,
        cached: torch.Tensor | None = None,
        logits_fn: LogitsFn | None = None,
        name: str = "teacher",
        inputs: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model = model_to_device(model.eval(), device) if model is not None else None
        if self.model is not None:
            for param in self.model.parameters():
                param.requires_grad_(False)
        self.device = device
        self.cached = cached  # N×2×classes: logits of each image as is and mirrored
        self.logits_fn = logits_fn
        self.name = name
        self.inputs = inputs

    def _images(self, batch: Batch) -> torch.Tensor:
        return batch.images if self.inputs is None else self.inputs(batch.images)

    def outputs(self, batch: Batch, keys: list[str] | None = None) -> Outputs:
        """Logits (and the features named by `keys`, which need the PyTorch model)."""
        if keys:
            assert self.model is not None, f"{self.name} gives logits only"
            with torch.no_grad(), capture(self.model, keys) as features:
                logits = self.model(to_device(self._images(batch), self.device))
            return Outputs(logits, dict(features))
        return Outputs(self.logits(batch))

    def logits(self, batch: Batch) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[batch.index, batch.flipped.long()].to(self.device)
        if self.logits_fn is not None:
            return self.logits_fn(self._images(batch)).to(self.device)
        assert self.model is not None
        with torch.no_grad():
            return self.model(to_device(self._images(batch), self.device))


def torch_logits(model: nn.Module, device: torch.device) -> LogitsFn:
    model = model_to_device(model.eval(), device)

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(to_device(images, device)).float().cpu()

    return run


def cache_logits(
    model: nn.Module | LogitsFn | None,
    data: ImageSet,
    splits: Splits,
    device: torch.device,
    path: Path,
    batch_size: int = 256,
) -> torch.Tensor:
    """Logits of every image of `data` and of its mirror image, computed once and stored at
    `path` (safetensors; reused while the teacher and data are unchanged). `model` is a
    PyTorch module or a function from normalised images to logits; `splits` carries the
    teacher's own normalisation."""
    if path.exists():
        return load_file(str(path))["logits"]
    assert model is not None, f"no cached logits at {path} and no teacher to compute them"
    run = torch_logits(model, device) if isinstance(model, nn.Module) else model
    out = []
    for start in range(0, len(data), batch_size):
        images = data.images[start : start + batch_size]
        both = torch.cat([images, images.flip(3)])
        logits = run(normalize(both, splits)).cpu()
        out.append(torch.stack(logits.chunk(2), dim=1))
    logits = torch.cat(out)
    with atomic_path(path) as tmp:
        save_file({"logits": logits.contiguous()}, str(tmp))
    return logits
