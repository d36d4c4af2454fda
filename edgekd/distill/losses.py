"""Registered loss modules: forward(student: Outputs, teacher: Outputs | None, batch) -> Tensor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.data.datasets import Batch
from edgekd.distill import functional, specs
from edgekd.registry import Registry


@dataclass
class Outputs:
    """A model's logits and the named features captured by hooks on dotted module paths."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class Loss(nn.Module):
    """Base of registered losses; `needs_teacher` False lets training skip the teacher."""

    needs_teacher: ClassVar[bool] = True

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        raise NotImplementedError


LOSSES: Registry[type[Loss]] = Registry("loss")


@LOSSES.register("ce")
class CrossEntropy(Loss):
    needs_teacher = False

    def __init__(self, cfg: specs.CEConfig) -> None:
        super().__init__()
        self.label_smoothing = cfg.label_smoothing

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(
            student.logits,
            batch.labels.to(student.logits.device),
            label_smoothing=self.label_smoothing,
        )


@LOSSES.register("kd")
class HintonKD(Loss):
    def __init__(self, cfg: specs.KDConfig) -> None:
        super().__init__()
        self.temperature = cfg.temperature

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None, "kd needs the teacher's outputs"
        return functional.kd_loss(student.logits, teacher.logits, self.temperature)
