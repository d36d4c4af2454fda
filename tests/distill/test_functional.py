"""The distillation losses of `edgekd.distill.functional` against independent references.

The expected values in tests/fixtures/kd_losses.json are computed in pure Python from each
paper's formula by tests/fixtures/make_kd_fixtures.py; the tests here run the torch code in
float64 on the same inputs. The property tests below need no fixture values beyond the inputs.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from edgekd.distill import functional
from tests.conftest import ROOT, TOL

FIXTURE = ROOT / "tests" / "fixtures" / "kd_losses.json"
CASES: dict[str, list[dict[str, Any]]] = json.loads(FIXTURE.read_text())["cases"]

# Every loss that takes a teacher tensor, and those that vanish when student == teacher.
TEACHER_LOSSES = [
    "kd_loss",
    "logit_mse_loss",
    "kd_mse_loss",
    "dkd_loss",
    "hint_loss",
    "at_loss",
    "ft_loss",
    "rkd_distance_loss",
    "rkd_angle_loss",
    "cckd_loss",
    "sp_loss",
    "pkt_loss",
]
ZERO_WHEN_EQUAL = TEACHER_LOSSES
RELATION_LOSSES = ["rkd_distance_loss", "rkd_angle_loss", "cckd_loss", "sp_loss", "pkt_loss"]
ALL_LOSSES = [*TEACHER_LOSSES, "crd_nce_loss", "tf_kd_reg_loss"]


def as_tensor(name: str, value: Any) -> torch.Tensor:
    if name == "labels":
        return torch.tensor(value, dtype=torch.long)
    return torch.tensor(value, dtype=torch.float64)


def inputs_of(case: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The case's positional inputs as float64 tensors (labels as int64), in call order."""
    return {name: as_tensor(name, value) for name, value in case["inputs"].items()}


def call(fn: str, case: dict[str, Any], **overrides: Any) -> torch.Tensor:
    return getattr(functional, fn)(*inputs_of(case).values(), **{**case["kwargs"], **overrides})


def first_case(fn: str, prefix: str = "") -> dict[str, Any]:
    return next(c for c in CASES[fn] if c["name"].startswith(prefix))


ALL_CASES = [
    pytest.param(fn, case, id=f"{fn}-{case['name']}")
    for fn, cases in CASES.items()
    for case in cases
]


def test_the_fixture_covers_every_loss() -> None:
    assert sorted(CASES) == sorted(ALL_LOSSES)


@pytest.mark.parametrize(("fn", "case"), ALL_CASES)
def test_matches_the_pure_python_reference(fn: str, case: dict[str, Any]) -> None:
    value = call(fn, case)
    assert value.dim() == 0 and value.dtype == torch.float64
    assert float(value) == pytest.approx(case["expected"], rel=TOL["fp32"]), case["formula"]


@pytest.mark.parametrize("fn", TEACHER_LOSSES)
def test_gradients_reach_the_student_only(fn: str) -> None:
    inputs = inputs_of(CASES[fn][0])
    inputs["student"].requires_grad_(True)
    inputs["teacher"].requires_grad_(True)
    getattr(functional, fn)(*inputs.values(), **CASES[fn][0]["kwargs"]).backward()
    assert inputs["teacher"].grad is None
    grad = inputs["student"].grad
    assert grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0


@pytest.mark.parametrize(("fn", "key"), [("crd_nce_loss", "probs"), ("tf_kd_reg_loss", "student")])
def test_gradients_reach_the_only_tensor_input(fn: str, key: str) -> None:
    inputs = inputs_of(CASES[fn][0])
    inputs[key].requires_grad_(True)
    getattr(functional, fn)(*inputs.values(), **CASES[fn][0]["kwargs"]).backward()
    grad = inputs[key].grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_tf_kd_reg_rejects_an_unknown_form() -> None:
    with pytest.raises(ValueError, match="form"):
        call("tf_kd_reg_loss", CASES["tf_kd_reg_loss"][0], form="Authors")


@pytest.mark.parametrize("fn", ZERO_WHEN_EQUAL)
def test_zero_when_the_student_is_the_teacher(fn: str) -> None:
    case = CASES[fn][0]
    inputs = inputs_of(case)
    inputs["teacher"] = inputs["student"].clone()
    value = getattr(functional, fn)(*inputs.values(), **case["kwargs"])
    assert float(value) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("case", CASES["kd_loss"], ids=lambda c: c["name"])
def test_kd_is_the_soft_kl_times_t_squared(case: dict[str, Any]) -> None:
    t = case["kwargs"]["temperature"]
    assert float(call("kd_loss", case)) / t**2 == pytest.approx(
        case["kl_without_t2"], rel=TOL["fp32"]
    )


def test_kd_at_high_temperature_is_half_the_centred_logit_mse() -> None:
    # Hinton et al. 2015, section 2.1: as T → ∞, T² · KL → 1/(2K) Σ_c (Δ_c - mean Δ)², Δ = t - s.
    # Without the T² factor the loss would be about 1e6 times smaller at T = 1000.
    case = CASES["kd_loss"][0]
    s, t = inputs_of(case).values()
    delta = t - s
    centred = delta - delta.mean(1, keepdim=True)
    limit = float(centred.pow(2).sum(1).mean() / (2 * s.shape[1]))
    assert float(call("kd_loss", case, temperature=1000.0)) == pytest.approx(limit, rel=1e-3)


@pytest.mark.parametrize("case", CASES["dkd_loss"], ids=lambda c: c["name"])
def test_dkd_is_its_two_terms_times_t_squared(case: dict[str, Any]) -> None:
    kw = case["kwargs"]
    t = kw["temperature"]
    expected = t**2 * (kw["alpha"] * case["tckd_without_t2"] + kw["beta"] * case["nckd_without_t2"])
    assert float(call("dkd_loss", case)) == pytest.approx(expected, rel=TOL["fp32"])


def test_dkd_at_two_temperatures_differs_by_the_t_squared_ratio() -> None:
    low, high = first_case("dkd_loss", "T1_alpha1_beta8"), first_case("dkd_loss", "T4_alpha1_beta8")
    unscaled = [c["tckd_without_t2"] + 8.0 * c["nckd_without_t2"] for c in (low, high)]
    ratio = float(call("dkd_loss", high)) / float(call("dkd_loss", low))
    assert ratio == pytest.approx(16.0 * unscaled[1] / unscaled[0], rel=TOL["fp32"])


def test_dkd_with_beta_zero_is_the_target_class_term_only() -> None:
    for temperature in (1.0, 4.0):
        case = first_case("dkd_loss", f"T{temperature:g}_alpha1_beta0")
        value = float(call("dkd_loss", case, alpha=1.0, beta=0.0))
        expected = temperature**2 * case["tckd_without_t2"]
        assert value == pytest.approx(expected, rel=TOL["fp32"])
    # TCKD sees only p_target and Σ_{j≠target} p_j: shuffling the student's non-target logits
    # among themselves leaves it unchanged, while the NCKD term (β > 0) notices.
    case = CASES["dkd_loss"][0]
    s, t, labels = inputs_of(case).values()
    shuffled = s.clone()
    for i, label in enumerate(labels.tolist()):
        others = [j for j in range(s.shape[1]) if j != label]
        shuffled[i, others] = s[i, others[1:] + others[:1]]
    kw = {"temperature": 4.0, "alpha": 1.0}
    tckd = [float(functional.dkd_loss(x, t, labels, beta=0.0, **kw)) for x in (s, shuffled)]
    assert tckd[1] == pytest.approx(tckd[0], rel=1e-12)
    full = [float(functional.dkd_loss(x, t, labels, beta=8.0, **kw)) for x in (s, shuffled)]
    assert full[1] != pytest.approx(full[0], rel=1e-3)


@pytest.mark.parametrize("fn", RELATION_LOSSES)
def test_relation_losses_take_embeddings_of_different_widths(fn: str) -> None:
    case = first_case(fn, "4x6_vs_4x9")
    s, t = inputs_of(case).values()
    assert s.shape == (4, 6) and t.shape == (4, 9)
    assert float(call(fn, case)) == pytest.approx(case["expected"], rel=TOL["fp32"])


@pytest.mark.parametrize("fn", RELATION_LOSSES)
def test_relation_losses_ignore_the_order_of_the_batch(fn: str) -> None:
    case = first_case(fn, "4x6_vs_4x9")
    s, t = inputs_of(case).values()
    loss = getattr(functional, fn)
    perm = torch.tensor([2, 0, 3, 1])
    base = float(loss(s, t, **case["kwargs"]))
    assert float(loss(s[perm], t[perm], **case["kwargs"])) == pytest.approx(base, rel=1e-12)
    # Permuting one side only breaks the pairing, and the loss sees it.
    assert float(loss(s[perm], t, **case["kwargs"])) != pytest.approx(base, rel=1e-3)
