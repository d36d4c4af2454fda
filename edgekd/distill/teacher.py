"""The frozen teacher: live forward passes, or logits cached once per training image and flip."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from edgekd.artifacts import atomic_path
from edgekd.data.datasets import Batch, ImageSet, Splits, model_to_device, normalize, to_device


class Teacher:
    """Gives the teacher's logits for a training batch; never trains the teacher."""

    def __init__(
        self, model: nn.Module, device: torch.device, cached: torch.Tensor | None = None
    ) -> None:
        self.model = model_to_device(model.eval(), device)
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.device = device
        self.cached = cached  # N×2×classes: logits of each image as is and mirrored

    def logits(self, batch: Batch) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[batch.index, batch.flipped.long()].to(self.device)
        with torch.no_grad():
            return self.model(to_device(batch.images, self.device))


def cache_logits(
    model: nn.Module,
    data: ImageSet,
    splits: Splits,
    device: torch.device,
    path: Path,
    batch_size: int = 256,
) -> torch.Tensor:
    """Logits of every image of `data` and of its mirror image, computed once and stored at
    `path` (safetensors; reused while the teacher and data are unchanged)."""
    if path.exists():
        return load_file(str(path))["logits"]
    model = model_to_device(model.eval(), device)
    out = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            images = data.images[start : start + batch_size]
            both = torch.cat([images, images.flip(3)])
            logits = model(to_device(normalize(both, splits), device)).cpu()
            out.append(torch.stack(logits.chunk(2), dim=1))
    logits = torch.cat(out)
    with atomic_path(path) as tmp:
        save_file({"logits": logits.contiguous()}, str(tmp))
    return logits
