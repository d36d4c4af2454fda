"""`kd_mse`: Hinton KD and logit MSE blended in one term (after Tang et al. 2019)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from edgekd.distill.loss import LOSSES, Loss, LossConfig, need

if TYPE_CHECKING:
    import torch

    from edgekd.data.datasets import Batch
    from edgekd.distill.terms import Outputs


class KDMSEConfig(LossConfig):
    """α · Hinton KD + (1 - α) · logit MSE in one term (after Tang et al. 2019)."""

    temperature: float = Field(4.0, gt=0, description="Softmax temperature of the KD part.")
    alpha: float = Field(0.5, ge=0, le=1, description="Share of the KD part.")


@LOSSES.register("kd_mse")
class KDMSE(Loss):
    Config = KDMSEConfig

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        from edgekd.distill.functional import kd_mse_loss

        return kd_mse_loss(
            student.logits, need(teacher).logits, self.cfg.temperature, self.cfg.alpha
        )
