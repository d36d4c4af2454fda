"""Distillation losses as plain functions, so the math can be checked directly.

Each function takes the student's tensors first and the teacher's second; teacher tensors are
detached here, so gradients reach the student only. Batch reductions follow each paper's
reference code where the paper leaves them open (named in the docstring).
"""

from __future__ import annotations

import math

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


def logit_mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?": regress the teacher's logits.

    Mean over batch and classes of (s - t)² (the paper's 1/2T Σ‖s - t‖² up to a constant).
    """
    return F.mse_loss(student_logits, teacher_logits.detach())


def kd_mse_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """The blend of the two response losses: α · KD_T + (1 - α) · logit MSE.

    Tang et al. 2019 ("Distilling Task-Specific Knowledge from BERT into Simple Neural
    Networks") train on logit MSE mixed with a second term; this keeps both soft losses in one
    term so that α can be tuned without touching the cross-entropy weight.
    """
    kd = kd_loss(student_logits, teacher_logits, temperature)
    return alpha * kd + (1 - alpha) * logit_mse_loss(student_logits, teacher_logits)


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    """Zhao et al. 2022, "Decoupled Knowledge Distillation", eq. (7): α·TCKD + β·NCKD.

    TCKD is the KL between the binary (target, all others) probabilities; NCKD the KL between
    the distributions over the non-target classes alone. Both are at temperature T, summed over
    classes, averaged over the batch and multiplied by T² (the authors' mdistiller code).
    """
    t = temperature
    teacher_logits = teacher_logits.detach()
    target = F.one_hot(labels, student_logits.shape[1]).bool()
    p_s = F.softmax(student_logits / t, dim=1)
    p_t = F.softmax(teacher_logits / t, dim=1)

    def binary(p: torch.Tensor) -> torch.Tensor:
        gt = (p * target).sum(1, keepdim=True)
        return torch.cat([gt, (p * ~target).sum(1, keepdim=True)], dim=1)

    b_s, b_t = binary(p_s), binary(p_t)
    tckd = (b_t * (b_t.clamp_min(1e-12).log() - b_s.clamp_min(1e-12).log())).sum(1).mean()
    # Non-target distributions: the target logit is masked out before the softmax.
    masked_s = (student_logits / t).masked_fill(target, -math.inf)
    masked_t = (teacher_logits / t).masked_fill(target, -math.inf)
    log_q_s = F.log_softmax(masked_s, dim=1)
    q_t = F.softmax(masked_t, dim=1)
    log_q_t = F.log_softmax(masked_t, dim=1)
    nckd = (q_t * (log_q_t - log_q_s)).masked_fill(target, 0.0).sum(1).mean()
    return (alpha * tckd + beta * nckd) * (t * t)


def hint_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Romero et al. 2015, "FitNets", eq. (3): ‖u_h - r(v_g)‖², here the mean over elements.

    `student_feature` is already passed through the regressor r.
    """
    return F.mse_loss(student_feature, teacher_feature.detach())


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis 2017, section 3.1: F_sum^p = Σ_c |A_c|^p, flattened, L2-normalised.

    The channel mean is used instead of the sum (as in the authors' code); it changes nothing
    after normalisation.
    """
    return F.normalize(feature.abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(
    student_feature: torch.Tensor, teacher_feature: torch.Tensor, p: float = 2.0
) -> torch.Tensor:
    """Attention transfer, eq. (2) with the authors' reduction: mean of (Q_s/‖Q_s‖ - Q_t/‖Q_t‖)²
    over batch and positions. Spatial sizes must match."""
    diff = attention_map(student_feature, p) - attention_map(teacher_feature.detach(), p)
    return diff.pow(2).mean()


def ft_loss(student_factor: torch.Tensor, teacher_factor: torch.Tensor) -> torch.Tensor:
    """Kim et al. 2018, "Paraphrasing Complex Network: Network Compression via Factor Transfer",
    eq. (3) with p = 1: ‖F_s/‖F_s‖₂ - F_t/‖F_t‖₂‖₁, averaged over batch and elements."""
    f_s = F.normalize(student_factor.flatten(1), dim=1)
    f_t = F.normalize(teacher_factor.detach().flatten(1), dim=1)
    return (f_s - f_t).abs().mean()


def _pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    sq = x.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.t()).clamp_min(1e-12)
    d = d2.sqrt()
    return d * (1 - torch.eye(len(x), device=x.device, dtype=x.dtype))


def rkd_distance_loss(student_embed: torch.Tensor, teacher_embed: torch.Tensor) -> torch.Tensor:
    """Park et al. 2019, "Relational Knowledge Distillation", eq. (4)–(6): Huber loss between the
    pairwise distances of the two batches, each normalised by its mean off-diagonal distance.
    Averaged over all n² entries of the distance matrices (zero diagonals included), as in the
    authors' code (lenscloth/RKD), so that it is normalised like the angle term."""
    s = student_embed.flatten(1)
    t = teacher_embed.detach().flatten(1)
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    d_s = _pairwise_distances(s)
    d_t = _pairwise_distances(t)
    return F.smooth_l1_loss(d_s / d_s[off].mean(), d_t / d_t[off].mean())


def _angles(x: torch.Tensor) -> torch.Tensor:
    # e_ij = normalize(x_i - x_j); angle(i, j, k) = <e_ij, e_kj>, for every anchor j.
    e = F.normalize(x[None, :, :] - x[:, None, :], p=2, dim=2)  # e[j, i] = x_i - x_j
    return torch.bmm(e, e.transpose(1, 2)).flatten()


def rkd_angle_loss(student_embed: torch.Tensor, teacher_embed: torch.Tensor) -> torch.Tensor:
    """Park et al. 2019, eq. (7)–(9): Huber loss between the cosines of the angles formed by
    every triplet of examples in the two batches."""
    return F.smooth_l1_loss(
        _angles(student_embed.flatten(1)), _angles(teacher_embed.detach().flatten(1))
    )


def correlation_matrix(embed: torch.Tensor, gamma: float = 0.4, order: int = 2) -> torch.Tensor:
    """Peng et al. 2019, "Correlation Congruence for Knowledge Distillation", eq. (9)–(10):
    the Gaussian RBF kernel exp(-γ‖x - y‖²) of L2-normalised embeddings, by its order-P Taylor
    series: exp(-2γ) Σ_{p=0..P} (2γ x·y)^p / p!."""
    x = F.normalize(embed.flatten(1), dim=1)
    dot = x @ x.t()
    series = torch.zeros_like(dot)
    for p in range(order + 1):
        series = series + (2 * gamma * dot) ** p / math.factorial(p)
    return math.exp(-2 * gamma) * series


def cckd_loss(
    student_embed: torch.Tensor, teacher_embed: torch.Tensor, gamma: float = 0.4, order: int = 2
) -> torch.Tensor:
    """CCKD's correlation term, eq. (6): ‖C_t - C_s‖²_F / n² for a batch of n examples."""
    c_s = correlation_matrix(student_embed, gamma, order)
    c_t = correlation_matrix(teacher_embed.detach(), gamma, order)
    return (c_s - c_t).pow(2).sum() / len(c_s) ** 2


def sp_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation", eq. (2)–(4): the
    row-L2-normalised batch similarity matrices Q·Qᵀ, ‖G_s - G_t‖²_F / b²."""
    b = len(student_feature)
    q_s = student_feature.flatten(1)
    q_t = teacher_feature.detach().flatten(1)
    g_s = F.normalize(q_s @ q_s.t(), dim=1)
    g_t = F.normalize(q_t @ q_t.t(), dim=1)
    return (g_s - g_t).pow(2).sum() / (b * b)


def pkt_loss(
    student_embed: torch.Tensor, teacher_embed: torch.Tensor, eps: float = 1e-7
) -> torch.Tensor:
    """Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge
    Transfer", eq. (8)–(10): cosine-similarity kernels (K+1)/2 turned into conditional
    probabilities row by row, KL(teacher ‖ student), averaged over all pairs (authors' code)."""

    def conditional(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.flatten(1), dim=1)
        k = (x @ x.t() + 1) / 2
        return k / k.sum(1, keepdim=True)

    p_s = conditional(student_embed)
    p_t = conditional(teacher_embed.detach())
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def crd_nce_loss(probs: torch.Tensor, n_data: int, eps: float = 1e-7) -> torch.Tensor:
    """Tian et al. 2020, "Contrastive Representation Distillation", eq. (10), the NCE form used by
    the authors' code. `probs` is B×(1+K): column 0 the positive pair's unnormalised probability
    exp(s/τ)/Z, the others the K negatives'; noise is uniform, P_n = 1/n_data."""
    k = probs.shape[1] - 1
    noise = k / n_data
    log_pos = torch.log(probs[:, 0] / (probs[:, 0] + noise + eps))
    log_neg = torch.log(noise / (probs[:, 1:] + noise + eps))
    return -(log_pos.sum() + log_neg.sum()) / len(probs)


def tf_kd_reg_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    correct_prob: float = 0.99,
    temperature: float = 20.0,
    *,
    form: str = "authors",
) -> torch.Tensor:
    """Yuan et al. 2020, "Revisiting Knowledge Distillation via Label Smoothing Regularization",
    Tf-KD_reg: a KL term towards a hand-designed virtual teacher p^d that puts `correct_prob` on
    the label and (1 - correct_prob)/(K - 1) on each of the other K - 1 classes. The virtual
    teacher is softened as if it were logits, p^d_τ = softmax(p^d / τ), in both forms; the
    cross-entropy and the weights (the code's α and `multiplier`) are separate terms.

    form="authors" (the default) follows the authors' code, `loss_kd_regularization` in
    my_loss_function.py of github.com/yuanli2333/Teacher-free-Knowledge-Distillation:
    ``nn.KLDivLoss()(F.log_softmax(outputs, dim=1), F.softmax(teacher_soft / T, dim=1))``, i.e.
    KL(p^d_τ ‖ softmax(z)) with the student's logits z *not* divided by τ, reduced by
    KLDivLoss's default 'mean': the sum over all B×K elements divided by B×K (not by B). That
    code fixes correct_prob = 0.99, hence the default here.

    form="paper" is eq. (9) of the paper with both distributions softened,
    KL(p^d_τ ‖ softmax(z / τ)), summed over classes and averaged over the batch (batchmean),
    without KD's τ² factor. There the label probability is the hyper-parameter a, passed here as
    `correct_prob` (0.99 by default in both forms; pass it to use another a).

    Any other `form` raises ValueError.
    """
    if form not in ("authors", "paper"):
        raise ValueError(f"tf_kd_reg_loss: form must be 'authors' or 'paper', not {form!r}")
    k = student_logits.shape[1]
    virtual = torch.full_like(student_logits, (1 - correct_prob) / (k - 1))
    virtual.scatter_(1, labels[:, None], correct_prob)
    if form == "paper":
        # KD towards the virtual distribution as if it were logits, without KD's T² factor.
        return kd_loss(student_logits, virtual, temperature) / temperature**2
    # The authors' nn.KLDivLoss() ('mean'), written as sum / numel to avoid torch's warning.
    log_p_student = F.log_softmax(student_logits, dim=1)
    p_virtual = F.softmax(virtual / temperature, dim=1)
    return F.kl_div(log_p_student, p_virtual, reduction="sum") / log_p_student.numel()
