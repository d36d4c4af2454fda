"""`rkd`: Park et al. 2019, "Relational Knowledge Distillation"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from edgekd.distill.loss import LOSSES, RelationConfig, RelationLoss

if TYPE_CHECKING:
    import torch


class RKDConfig(RelationConfig):
    """Park et al. 2019, relational KD: distance-wise and angle-wise potentials (Huber)."""

    distance_weight: float = Field(25.0, ge=0, description="λ_D (paper: 25).")
    angle_weight: float = Field(50.0, ge=0, description="λ_A (paper: 50).")


@LOSSES.register("rkd")
class RKD(RelationLoss):
    Config = RKDConfig

    def relation(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from edgekd.distill.functional import rkd_angle_loss, rkd_distance_loss

        return self.cfg.distance_weight * rkd_distance_loss(
            s, t
        ) + self.cfg.angle_weight * rkd_angle_loss(s, t)
