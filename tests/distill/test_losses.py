"""Losses against their papers' formulas on hand-made tensors."""

import pytest
import torch

from edgekd.data.datasets import Batch
from edgekd.distill.distiller import Distiller
from edgekd.distill.functional import kd_loss
from edgekd.distill.loss import LOSSES
from edgekd.distill.losses.ce import CEConfig
from edgekd.distill.losses.kd import KDConfig
from edgekd.distill.terms import Outputs

# Worked out independently with numpy from Hinton et al. eq. (2):
# T² · mean_i Σ_c p_t log(p_t / p_s), p = softmax(z / T), for these logits at T = 2.
STUDENT = [[1.0, 2.0, 3.0], [0.5, 0.0, -0.5]]
TEACHER = [[3.0, 2.0, 1.0], [0.5, 0.0, -0.5]]
KD_T2 = 0.6403133356596129


def test_kd_matches_the_worked_value():
    value = kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature=2.0)
    assert float(value) == pytest.approx(KD_T2, rel=1e-6)


def test_kd_is_zero_when_student_equals_teacher():
    logits = torch.randn(4, 10)
    assert float(kd_loss(logits, logits.clone(), 4.0)) == pytest.approx(0.0, abs=1e-6)


def test_kd_gradient_keeps_its_size_across_temperatures():
    # Hinton §2: the soft targets' gradients scale as 1/T², so KD multiplies by T² to keep them
    # the same size as T changes. Measured ratio here 1.03; without T² it is 0.064.
    torch.manual_seed(0)
    teacher = torch.randn(64, 10) * 3
    sizes = []
    for t in (2.0, 8.0):
        student = torch.zeros(64, 10, requires_grad=True)
        kd_loss(student, teacher, t).backward()
        sizes.append(float(student.grad.norm()))
    assert 0.5 < sizes[1] / sizes[0] < 2


def test_gradients_reach_the_student_only():
    student = torch.randn(3, 5, requires_grad=True)
    teacher = torch.randn(3, 5, requires_grad=True)
    kd_loss(student, teacher, 4.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_distiller_sums_weighted_terms_and_logs_each():
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    labels = torch.tensor([2, 0])
    batch = Batch(student, labels, torch.arange(2), torch.zeros(2, dtype=torch.bool))
    distiller = Distiller([("ce", 0.25, CEConfig()), ("kd", 0.75, KDConfig(temperature=2.0))])
    total, terms = distiller(Outputs(student), Outputs(teacher), batch)
    ce = float(torch.nn.functional.cross_entropy(student, labels))
    assert terms == pytest.approx({"ce": ce, "kd": KD_T2}, rel=1e-6)
    assert float(total) == pytest.approx(0.25 * ce + 0.75 * KD_T2, rel=1e-6)
    assert distiller.needs_teacher
    assert not Distiller([("ce", 1.0, CEConfig())]).needs_teacher


def test_every_loss_declares_its_config_and_what_it_reads():
    from edgekd.distill.loss import Loss, LossConfig

    assert len(LOSSES.names()) == 14
    for name in LOSSES.names():
        cls = LOSSES.get(name)
        assert issubclass(cls, Loss) and issubclass(cls.Config, LossConfig), name
        assert cls.reads in ("labels", "response", "feature", "relation"), name
        assert cls.Config.__doc__ and cls.Config.__doc__ != LossConfig.__doc__, name
        assert all(f.description for f in cls.Config.model_fields.values()), name
