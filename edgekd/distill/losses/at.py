"""`at`: Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from edgekd.distill.loss import LOSSES, Loss, PairedConfig, need

if TYPE_CHECKING:
    import torch

    from edgekd.data.datasets import Batch
    from edgekd.distill.terms import Outputs


class ATConfig(PairedConfig):
    """Zagoruyko & Komodakis 2017, attention transfer on spatial attention maps Σ_c |A_c|^p.
    The authors weight it by β = 1000 (set `weight`)."""

    p: float = Field(2.0, gt=0, description="Exponent of the attention map.")


@LOSSES.register("at")
class AttentionTransfer(Loss):
    """Attention maps are channel-free: no connector, only spatial pooling when sizes differ."""

    Config = ATConfig
    reads = "feature"

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        from edgekd.distill.functional import at_loss
        from edgekd.distill.terms import match_spatial

        total = student.logits.new_zeros(())
        for s, t in self.features(student, need(teacher)):
            total = total + at_loss(*match_spatial(s, t), p=self.cfg.p)
        return total
