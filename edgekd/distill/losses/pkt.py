"""`pkt`: Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge
Transfer"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgekd.distill.loss import LOSSES, RelationConfig, RelationLoss

if TYPE_CHECKING:
    import torch


class PKTConfig(RelationConfig):
    """Passalis & Tefas 2018, probabilistic knowledge transfer (cosine kernel, KL)."""


@LOSSES.register("pkt")
class PKT(RelationLoss):
    Config = PKTConfig

    def relation(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from edgekd.distill.functional import pkt_loss

        return pkt_loss(s, t)
