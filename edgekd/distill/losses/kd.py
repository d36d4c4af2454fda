"""`kd`: Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from edgekd.distill.loss import LOSSES, Loss, LossConfig, need

if TYPE_CHECKING:
    import torch

    from edgekd.data.datasets import Batch
    from edgekd.distill.terms import Outputs


class KDConfig(LossConfig):
    """Hinton et al. 2015: KL between temperature-softened distributions, scaled by T²."""

    temperature: float = Field(4.0, gt=0, description="Softmax temperature T.")


@LOSSES.register("kd")
class HintonKD(Loss):
    Config = KDConfig

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        from edgekd.distill.functional import kd_loss

        return kd_loss(student.logits, need(teacher).logits, self.cfg.temperature)
