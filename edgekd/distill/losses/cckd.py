"""`cckd`: Peng et al. 2019, "Correlation Congruence for Knowledge Distillation".

This follows the paper's form: a Gaussian-RBF correlation of L2-normalised embeddings by its
order-P Taylor series (eq. 9–10) and ‖C_t - C_s‖²_F / n² (eq. 6). RepDistiller's `CC` loss is
restructured code (a different kernel and no Taylor series), so edgekd's numbers will not
match that repository's table for CC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from edgekd.distill.loss import LOSSES, RelationConfig, RelationLoss

if TYPE_CHECKING:
    import torch


class CCKDConfig(RelationConfig):
    """Peng et al. 2019, correlation congruence with a Taylor-approximated Gaussian kernel
    (the paper's form, not RepDistiller's restructured code)."""

    gamma: float = Field(0.4, gt=0, description="Kernel width γ (paper: 0.4).")
    order: int = Field(2, ge=1, le=8, description="Taylor order P (paper: 2).")


@LOSSES.register("cckd")
class CCKD(RelationLoss):
    Config = CCKDConfig

    def relation(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from edgekd.distill.functional import cckd_loss

        return cckd_loss(s, t, self.cfg.gamma, self.cfg.order)
