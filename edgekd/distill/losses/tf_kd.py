"""`tf_kd`: Yuan et al. 2020, "Revisiting Knowledge Distillation via Label Smoothing
Regularization" (Tf-KD_reg), in the authors' published form by default."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from edgekd.distill.loss import LOSSES, Loss, LossConfig, labels_of

if TYPE_CHECKING:
    import torch

    from edgekd.data.datasets import Batch
    from edgekd.distill.terms import Outputs


class TFKDConfig(LossConfig):
    """Yuan et al. 2020, teacher-free KD (TF-KD_reg): a hand-designed virtual teacher.

    `form: authors` follows yuanli2333/Teacher-free-Knowledge-Distillation, my_loss_function.py,
    `loss_kd_regularization` (student logits not softened, KLDivLoss's element mean, label
    probability 0.99); `form: paper` is eq. (9) with both sides softened by τ."""

    form: Literal["authors", "paper"] = Field(
        "authors", description="The authors' published code (default) or the paper's eq. (9)."
    )
    correct_prob: float = Field(
        0.99, gt=0, lt=1, description="Virtual teacher's label probability a (authors: 0.99)."
    )
    temperature: float = Field(20.0, gt=0, description="Softening temperature τ.")


@LOSSES.register("tf_kd")
class TeacherFreeKD(Loss):
    Config = TFKDConfig
    reads = "labels"

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        from edgekd.distill.functional import tf_kd_reg_loss

        labels = labels_of(batch, student.logits)
        keep = labels >= 0
        if not bool(keep.any()):
            return student.logits.sum() * 0
        return tf_kd_reg_loss(
            student.logits[keep],
            labels[keep],
            self.cfg.correct_prob,
            self.cfg.temperature,
            form=self.cfg.form,
        )
