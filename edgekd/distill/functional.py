"""Logit distillation losses as plain functions, so the math can be checked directly."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", eq. (2).

    KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch and multiplied by T² so that the
    soft term's gradients keep their size as T changes (the paper's section 2).
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    p_teacher = F.softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * (t * t)
