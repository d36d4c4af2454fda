"""`dkd`: Zhao et al. 2022, "Decoupled Knowledge Distillation"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from edgekd.distill.loss import LOSSES, Loss, LossConfig, labels_of, need

if TYPE_CHECKING:
    import torch

    from edgekd.data.datasets import Batch
    from edgekd.distill.terms import Outputs


class DKDConfig(LossConfig):
    """Zhao et al. 2022, Decoupled KD: α · target-class KD + β · non-target-class KD."""

    alpha: float = Field(1.0, ge=0, description="Weight of the target-class term (TCKD).")
    beta: float = Field(8.0, ge=0, description="Weight of the non-target-class term (NCKD).")
    temperature: float = Field(4.0, gt=0, description="Softmax temperature T.")
    warmup: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of the stage's training over which the loss ramps up linearly "
        "from 0 (the authors use 20 of 240 epochs).",
    )


@LOSSES.register("dkd")
class DKD(Loss):
    Config = DKDConfig

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        import torch

        from edgekd.distill.functional import dkd_loss

        t = need(teacher).logits
        labels = labels_of(batch, student.logits)
        # Unlabeled images: the teacher's top class stands in as the target class.
        labels = torch.where(labels >= 0, labels, t.argmax(1))
        ramp = min(1.0, self.progress / self.cfg.warmup) if self.cfg.warmup else 1.0
        cfg = self.cfg
        return ramp * dkd_loss(student.logits, t, labels, cfg.alpha, cfg.beta, cfg.temperature)
