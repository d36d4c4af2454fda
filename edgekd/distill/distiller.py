"""The distiller: sums weighted, named loss terms and reports each one."""

from __future__ import annotations

import torch
from torch import nn

from edgekd.config.schema import Strict
from edgekd.data.datasets import Batch
from edgekd.distill.losses import LOSSES, Outputs


class Distiller(nn.Module):
    """Σ weight_i · loss_i(student, teacher, batch); also returns each term's value."""

    def __init__(self, terms: list[tuple[str, float, Strict]]) -> None:
        super().__init__()
        self.weights = {name: weight for name, weight, _ in terms}
        self.terms = nn.ModuleDict({name: LOSSES.get(name)(cfg) for name, _, cfg in terms})

    @property
    def needs_teacher(self) -> bool:
        return any(getattr(term, "needs_teacher", True) for term in self.terms.values())

    def forward(
        self, student: Outputs, teacher: Outputs | None, batch: Batch
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total = student.logits.new_zeros(())
        logged: dict[str, float] = {}
        for name, term in self.terms.items():
            value = term(student, teacher, batch)
            total = total + self.weights[name] * value
            logged[name] = float(value.detach())
        return total, logged
