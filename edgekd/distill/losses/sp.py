"""`sp`: Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgekd.distill.loss import LOSSES, RelationConfig, RelationLoss

if TYPE_CHECKING:
    import torch


class SPConfig(RelationConfig):
    """Tung & Mori 2019, similarity-preserving KD on batch similarity matrices. The authors
    weight it by γ = 3000 (set `weight`)."""


@LOSSES.register("sp")
class SimilarityPreserving(RelationLoss):
    Config = SPConfig

    def relation(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from edgekd.distill.functional import sp_loss

        return sp_loss(s, t)
