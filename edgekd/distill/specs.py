"""Configs of the registered losses (torch-free, so `edgekd validate` can check them).

Each class's docstring names the paper; `kind` says what the loss reads from the models:
`labels` (ground truth only), `response` (the teacher's logits), `feature` (hooked feature maps,
paired by dotted module path) or `relation` (hooked embeddings; batch relations, so student and
teacher widths may differ).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from edgekd.config.schema import Strict
from edgekd.registry import Registry

LOSS_CONFIGS: Registry[type[Strict]] = Registry("loss")

Kind = Literal["labels", "response", "feature", "relation"]

# The input of the model's last nn.Linear: the penultimate embedding, found automatically.
EMBEDDING = "@embedding"


class FeaturePair(Strict):
    """Where a feature is captured on each model: dotted paths as in `model.named_modules()`."""

    student: str = Field(description="Dotted module path in the student, or @embedding.")
    teacher: str = Field(description="Dotted module path in the teacher, or @embedding.")
    capture: Literal["output", "input"] = Field(
        "output", description="Capture the module's output, or its (first) input."
    )


def _embedding_pairs() -> list[FeaturePair]:
    return [FeaturePair(student=EMBEDDING, teacher=EMBEDDING)]


class LossConfig(Strict):
    kind: ClassVar[Kind] = "response"


class PairedLossConfig(LossConfig):
    pairs: list[FeaturePair] = Field(
        min_length=1, description="Student/teacher module pairs whose features are matched."
    )


class RelationLossConfig(LossConfig):
    kind: ClassVar[Kind] = "relation"
    pairs: list[FeaturePair] = Field(
        default_factory=_embedding_pairs,
        min_length=1,
        description="Features whose batch relations are matched; default: the embeddings "
        "feeding each model's last linear layer.",
    )


@LOSS_CONFIGS.register("ce")
class CEConfig(LossConfig):
    """Cross-entropy against the ground-truth labels (unlabeled images are skipped)."""

    kind: ClassVar[Kind] = "labels"
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing factor.")


@LOSS_CONFIGS.register("kd")
class KDConfig(LossConfig):
    """Hinton et al. 2015: KL between temperature-softened distributions, scaled by T²."""

    temperature: float = Field(4.0, gt=0, description="Softmax temperature T.")


@LOSS_CONFIGS.register("mse")
class LogitMSEConfig(LossConfig):
    """Ba & Caruana 2014: mean squared error between student and teacher logits."""


@LOSS_CONFIGS.register("kd_mse")
class KDMSEConfig(LossConfig):
    """α · Hinton KD + (1 - α) · logit MSE in one term (after Tang et al. 2019)."""

    temperature: float = Field(4.0, gt=0, description="Softmax temperature of the KD part.")
    alpha: float = Field(0.5, ge=0, le=1, description="Share of the KD part.")


@LOSS_CONFIGS.register("dkd")
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


@LOSS_CONFIGS.register("fitnet")
class FitNetConfig(PairedLossConfig):
    """Romero et al. 2015, FitNets: a trained regressor maps student features onto teacher
    hints; mean squared error."""

    kind: ClassVar[Kind] = "feature"
    stage1: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="FitNets' two-stage schedule: share of the stage's training spent on "
        "hint training alone (only this term) before the other terms join; 0 trains all "
        "terms together.",
    )


@LOSS_CONFIGS.register("at")
class ATConfig(PairedLossConfig):
    """Zagoruyko & Komodakis 2017, attention transfer on spatial attention maps Σ_c |A_c|^p.
    The authors weight it by β = 1000 (set `weight`)."""

    kind: ClassVar[Kind] = "feature"
    p: float = Field(2.0, gt=0, description="Exponent of the attention map.")


@LOSS_CONFIGS.register("ft")
class FTConfig(PairedLossConfig):
    """Kim et al. 2018, factor transfer: a paraphraser auto-encoder is first trained on the
    teacher's features; the student's translator matches its factors (L1 of normalised
    factors)."""

    kind: ClassVar[Kind] = "feature"
    rate: float = Field(0.5, gt=0, le=4, description="Paraphraser rate k: factor channels / C.")
    paraphraser_epochs: float = Field(
        1.0, gt=0, description="Passes over the training data to train the paraphraser."
    )
    paraphraser_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the paraphraser.")


@LOSS_CONFIGS.register("rkd")
class RKDConfig(RelationLossConfig):
    """Park et al. 2019, relational KD: distance-wise and angle-wise potentials (Huber)."""

    distance_weight: float = Field(25.0, ge=0, description="λ_D (paper: 25).")
    angle_weight: float = Field(50.0, ge=0, description="λ_A (paper: 50).")


@LOSS_CONFIGS.register("cckd")
class CCKDConfig(RelationLossConfig):
    """Peng et al. 2019, correlation congruence with a Taylor-approximated Gaussian kernel."""

    gamma: float = Field(0.4, gt=0, description="Kernel width γ (paper: 0.4).")
    order: int = Field(2, ge=1, le=8, description="Taylor order P (paper: 2).")


@LOSS_CONFIGS.register("sp")
class SPConfig(RelationLossConfig):
    """Tung & Mori 2019, similarity-preserving KD on batch similarity matrices. The authors
    weight it by γ = 3000 (set `weight`)."""


@LOSS_CONFIGS.register("pkt")
class PKTConfig(RelationLossConfig):
    """Passalis & Tefas 2018, probabilistic knowledge transfer (cosine kernel, KL)."""


@LOSS_CONFIGS.register("crd")
class CRDConfig(RelationLossConfig):
    """Tian et al. 2020, contrastive representation distillation with memory banks of
    negatives (NCE form)."""

    feat_dim: int = Field(128, gt=0, description="Dimension of the contrastive embedding.")
    negatives: int = Field(4096, gt=0, description="Negatives per positive (paper: 16384).")
    nce_temperature: float = Field(0.07, gt=0, description="Temperature τ of the critic.")
    momentum: float = Field(0.5, ge=0, lt=1, description="Memory-bank update momentum.")


@LOSS_CONFIGS.register("tf_kd")
class TFKDConfig(LossConfig):
    """Yuan et al. 2020, teacher-free KD (TF-KD_reg): a hand-designed virtual teacher."""

    kind: ClassVar[Kind] = "labels"
    correct_prob: float = Field(0.9, gt=0, lt=1, description="Virtual teacher's label prob a.")
    temperature: float = Field(20.0, gt=0, description="Softening temperature τ.")
