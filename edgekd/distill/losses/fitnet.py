"""`fitnet`: Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from edgekd.distill.loss import LOSSES, PairedConfig, PairedLoss

if TYPE_CHECKING:
    import torch


class FitNetConfig(PairedConfig):
    """Romero et al. 2015, FitNets: a trained regressor maps student features onto teacher
    hints; mean squared error."""

    stage1: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="FitNets' two-stage schedule: share of the stage's training spent on "
        "hint training alone (only this term) before the other terms join; 0 trains all "
        "terms together.",
    )


@LOSSES.register("fitnet")
class FitNet(PairedLoss):
    Config = FitNetConfig

    def alone_until(self) -> float:
        return float(self.cfg.stage1)

    def pair_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from edgekd.distill.functional import hint_loss

        return hint_loss(s, t)
