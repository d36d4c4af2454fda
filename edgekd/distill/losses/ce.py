"""`ce`: cross-entropy against the ground-truth labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from edgekd.distill.loss import LOSSES, Loss, LossConfig, labels_of

if TYPE_CHECKING:
    import torch

    from edgekd.data.datasets import Batch
    from edgekd.distill.terms import Outputs


class CEConfig(LossConfig):
    """Cross-entropy against the ground-truth labels (unlabeled images are skipped)."""

    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing factor.")


@LOSSES.register("ce")
class CrossEntropy(Loss):
    Config = CEConfig
    reads = "labels"

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        import torch.nn.functional as F

        labels = labels_of(batch, student.logits)
        if not bool((labels >= 0).any()):  # a batch of unlabeled images only
            return student.logits.sum() * 0
        return F.cross_entropy(
            student.logits, labels, ignore_index=-1, label_smoothing=self.cfg.label_smoothing
        )
