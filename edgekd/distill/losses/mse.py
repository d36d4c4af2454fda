"""`mse`: Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgekd.distill.loss import LOSSES, Loss, LossConfig, need

if TYPE_CHECKING:
    import torch

    from edgekd.data.datasets import Batch
    from edgekd.distill.terms import Outputs


class LogitMSEConfig(LossConfig):
    """Ba & Caruana 2014: mean squared error between student and teacher logits."""


@LOSSES.register("mse")
class LogitMSE(Loss):
    Config = LogitMSEConfig

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        from edgekd.distill.functional import logit_mse_loss

        return logit_mse_loss(student.logits, need(teacher).logits)
